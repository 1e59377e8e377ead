"""Host kinds: what the CPU side of a machine can do, as a named, swappable part of a profile.

Why a separate file per host rather than more keys in each GPU profile: the
same RTX 3090 sits in a dual-channel DDR4 desktop or in an eight-channel
server, and whether computing a missed expert on the CPU beats copying it
depends on exactly that. A host kind (``--host ddr4-3200-2ch``) replaces the
``[cpu]`` section of whatever GPU profile it is combined with; without one a
profile keeps its own ``[cpu]`` estimate. Every value carries its kind,
source and low-high range (:mod:`pregate.simulator.provenance`), so
``--uncertainty`` varies the host like the GPU.

``--host`` also takes a file: a host kind file (schema ``pregate.host/1``) or
a hardware profile, such as one ``pregate calibrate`` wrote on the present
machine, whose measured ``[cpu]`` section is then used.
"""

from __future__ import annotations

import dataclasses
from importlib import resources

from pregate.simulator.errors import ProfileError
from pregate.simulator.profile import FIELDS, HardwareProfile, parse_profile, read_sections, read_toml
from pregate.simulator.provenance import parse_value

SCHEMA = "pregate.host/1"
HOST_FIELDS = {"cpu": {key: (unit, key in ("flops", "memory_bandwidth", "threads")) for key, (unit, _) in
                       FIELDS["cpu"].items()}}
TOP_LEVEL = {"schema", "name", "description", "cpu"}


@dataclasses.dataclass(frozen=True)
class HostKind:
    """A named host: its ``cpu.*`` values with provenance."""

    name: str
    description: str
    entries: dict  # "cpu.key" -> Value
    path: str = ""


def builtin_hosts() -> list[str]:
    """Names of the host kinds shipped in simulator/hosts/."""
    folder = resources.files("pregate.simulator") / "hosts"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def load_host(name_or_path: str) -> HostKind:
    """A built-in host kind by name, a host kind file, or a hardware profile file (its ``[cpu]`` section)."""
    where, data = read_toml(str(name_or_path), "host kind", "hosts", builtin_hosts())
    if data.get("schema") != SCHEMA:
        if str(data.get("schema", "")).startswith("pregate.profile/"):
            profile = parse_profile(data, where)  # a calibrated profile: its own [cpu] is the host
            cpu = {k: v for k, v in profile.entries.items() if k.startswith("cpu.")}
            return HostKind(f"{profile.name} [cpu]", profile.description, cpu, where)
        raise ProfileError(f"{where}: 'schema' must be \"{SCHEMA}\" (a host kind) or a hardware profile's, "
                           f"got {data.get('schema')!r}")
    unknown = sorted(set(data) - TOP_LEVEL)
    if unknown:
        raise ProfileError(f"{where}: unknown key '{unknown[0]}' (known: {', '.join(sorted(TOP_LEVEL))})")
    if not isinstance(data.get("name"), str) or not data["name"]:
        raise ProfileError(f"{where}: 'name' must be a non-empty string")

    def parse(section, key, raw, unit):
        return parse_value(where, f"{section}.{key}", raw, unit)

    entries = read_sections(where, data, HOST_FIELDS, parse)
    threads = entries["cpu.threads"].value
    if threads != int(threads) or entries["cpu.threads"].uncertain:
        raise ProfileError(f"{where}: 'cpu.threads' must be a whole number with no range")
    return HostKind(data["name"], str(data.get("description", "")), entries, where)


def with_host(profile: HardwareProfile, host: str | HostKind | None) -> HardwareProfile:
    """``profile`` with its ``[cpu]`` section replaced by the host kind's (unchanged when ``host`` is empty).

    Applying the same host twice gives the same profile, so a caller may pass
    a profile that already has it.
    """
    if not host:
        return profile
    kind = host if isinstance(host, HostKind) else load_host(host)
    values = {k: v for k, v in profile.values.items() if not k.startswith("cpu.")}
    entries = {k: v for k, v in profile.entries.items() if not k.startswith("cpu.")}
    sources = {k: v for k, v in profile.sources.items() if not k.startswith("cpu.")}
    for key, value in kind.entries.items():
        values[key], entries[key], sources[key] = value.value, value, value.source
    return dataclasses.replace(profile, values=values, entries=entries, sources=sources, host=kind.name)
