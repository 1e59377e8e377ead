"""Hardware profiles: what a GPU, its link and its host CPU can do, every number with its provenance.

Why TOML with ``{ value, unit, kind, source, low, high }`` tables rather than
bare numbers: a profile mixes datasheet figures, measurements, derived values
and guesses, and a simulated latency is only as good as the least certain of
them. The kind and range next to each value let a reader (and
``--uncertainty``) see which is which, and the unit check catches the classic
GB/s-versus-B/s slip. What a particular runtime costs on the host (Python's
issue time per kernel, the planner) is not here: that is a runtime profile
(:mod:`pregate.simulator.runtime`), so one GPU can be priced for several
runtimes. Schema in simulator/README.md.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from pregate.simulator.errors import ProfileError, unknown_name
from pregate.simulator.provenance import Value, parse_value

SCHEMA = "pregate.profile/2"
LEGACY_SCHEMA = "pregate.profile/1"  # hardware and pregate's host costs in one file (calibrate before the split)
DEFAULT_PROFILE = "rtx3090"

# section -> key -> (unit, required). Every value is { value, unit, kind, source[, low, high] }.
# What the hardware can do; what a runtime costs on the host is a runtime profile (simulator/runtime.py).
FIELDS: dict[str, dict[str, tuple[str, bool]]] = {
    "gpu": {
        "memory": ("B", True),
        "hbm_bandwidth": ("B/s", True),
        "fp32_flops": ("FLOP/s", True),
        "bf16_flops": ("FLOP/s", True),
        "fp16_flops": ("FLOP/s", True),
        "kernel_launch": ("s", True),
    },
    "pcie": {
        "pinned_bandwidth": ("B/s", True),
        "pageable_bandwidth": ("B/s", True),
        "copy_latency": ("s", True),
        "copy_engines": ("count", True),
    },
    # the host CPU: a profile's own estimate, or a host kind's values (simulator/hosts.py, --host)
    "cpu": {
        "flops": ("FLOP/s", True),  # fp32 matmul rate, all threads
        "memory_bandwidth": ("B/s", True),  # streaming read
        "bf16_flops": ("FLOP/s", False),  # reduced-precision (bf16, int8, int4) expert matmul; default: flops
        "threads": ("count", False),  # compute threads the rates above are measured or estimated with
        "dispatch": ("s", False),  # host time to hand one expert to the thread pool; default: 0
    },
    # optional as a whole: without it --host-tier nvme is refused in one line
    "nvme": {
        "bandwidth": ("B/s", False),
        "latency": ("s", False),
    },
}
# Schema /1 had these too; they are read into the file's own runtime profile (simulator/runtime.py).
LEGACY_FIELDS: dict[str, dict[str, tuple[str, bool]]] = {
    "host": {
        "dispatch_per_kernel": ("s", True),
        "router_sync": ("s", True),
        "block_issue": ("s", False),
        "layer_step": ("s", False),
        "resident_layer_step": ("s", False),
        "copy_issue": ("s", False),
        "expert_issue": ("s", False),
        "resident_expert_issue": ("s", False),
    },
    "dequant": {
        "bandwidth": ("B/s", True),
    },
}
TOP_LEVEL = {"schema", "name", "description", "cuda_names", "expert_table", "dense_table", *FIELDS}
LEGACY_TOP_LEVEL = TOP_LEVEL | set(LEGACY_FIELDS)
TABLE_KEYS = {"d_model", "d_ff", "dtype", "tokens", "seconds", "source"}
DENSE_TABLE_KEYS = {"d_model", "block_params", "dtype", "context", "tokens", "seconds", "source"}
LEGACY_DENSE_TABLE_KEYS = DENSE_TABLE_KEYS | {"issue_seconds"}
OPTIONAL_TABLE_KEYS = {"issue_seconds"}


@dataclass(frozen=True)
class ExpertTable:
    """Measured expert FFN time (seconds) by token count, for one expert shape."""

    d_model: int
    d_ff: int
    dtype: str
    tokens: tuple[int, ...]
    seconds: tuple[float, ...]
    source: str = ""


@dataclass(frozen=True)
class DenseTable:
    """Measured GPU time (seconds) of one dense transformer block by token count, decoding.

    ``block_params`` is the block's weight count (attention and dense FFN);
    each token is one sequence's query attending to ``context`` earlier tokens.
    """

    d_model: int
    block_params: int
    dtype: str
    context: int
    tokens: tuple[int, ...]
    seconds: tuple[float, ...]
    source: str = ""
    issue_seconds: float = 0.0  # schema /1 only: the executor's host time per block (now in the runtime profile)


@dataclass(frozen=True)
class HardwareProfile:
    """One GPU with its link and host CPU: the numbers the cost model needs, in SI units."""

    name: str
    description: str
    values: dict[str, float]  # "section.key" -> value in the unit of FIELDS
    sources: dict[str, str]
    cuda_names: tuple[str, ...] = ()
    expert_tables: tuple[ExpertTable, ...] = ()
    path: str = ""
    dense_tables: tuple[DenseTable, ...] = ()
    entries: dict[str, Value] = field(default_factory=dict)  # "section.key" -> the value with kind and range
    legacy: dict[str, Value] = field(default_factory=dict)  # schema /1: its host and dequant values
    schema: str = SCHEMA
    host: str = ""  # the host kind whose [cpu] values replaced the profile's own ("" = the profile's own)

    @property
    def host_name(self) -> str:
        """What results name as the host: the host kind, or the profile's own [cpu] estimate."""
        return self.host or f"{self.name} [cpu]"

    def __getitem__(self, key: str) -> float:
        try:
            return self.values[key]
        except KeyError:
            raise ProfileError(f"profile {self.name}: no value for '{key}'") from None

    def get(self, key: str, default: float | None = None) -> float | None:
        return self.values.get(key, default)

    def replace(self, **updates: float) -> "HardwareProfile":
        """A copy with some values changed, e.g. ``replace(**{"pcie.pinned_bandwidth": 50e9})``."""
        values, entries = dict(self.values), dict(self.entries)
        for key, value in updates.items():
            if key not in values:
                raise ProfileError(f"profile {self.name}: unknown key '{key}'")
            values[key] = float(value)
            old = entries[key]
            entries[key] = Value(float(value), old.unit, old.kind, old.source, float(value), float(value))
        return dataclasses.replace(self, values=values, entries=entries)

    def uncertain(self) -> dict[str, Value]:
        """The values with a range (what ``--uncertainty`` varies)."""
        return {k: v for k, v in self.entries.items() if v.uncertain}

    def expert_table(self, d_model: int, d_ff: int) -> ExpertTable | None:
        for table in self.expert_tables:
            if table.d_model == d_model and table.d_ff == d_ff:
                return table
        return None

    def dense_table(self, d_model: int, block_params: float, dtype: str) -> list[DenseTable]:
        """Measured dense blocks of this width and dtype, size within 5% of ``block_params``, by context."""
        found = [t for t in self.dense_tables
                 if t.d_model == d_model and t.dtype == dtype
                 and abs(t.block_params - block_params) <= 0.05 * max(block_params, 1.0)]
        return sorted(found, key=lambda t: t.context)


def builtin_profiles() -> list[str]:
    """Names of the profiles shipped in simulator/profiles/."""
    folder = resources.files("pregate.simulator") / "profiles"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def _check_table(where: str, index: int, raw, kind: str = "expert_table", keys: set = TABLE_KEYS):
    name = f"{kind}[{index}]"
    if not isinstance(raw, dict):
        raise ProfileError(f"{where}: '{name}' must be a table")
    extra = set(raw) - keys
    if extra:
        raise ProfileError(f"{where}: '{name}' has unknown key(s) {', '.join(sorted(extra))}")
    missing = sorted(keys - OPTIONAL_TABLE_KEYS - set(raw))
    if missing:
        raise ProfileError(f"{where}: '{name}' lacks {', '.join(missing)}")
    tokens, seconds = raw["tokens"], raw["seconds"]
    if not (isinstance(tokens, list) and isinstance(seconds, list)) or len(tokens) != len(seconds) or not tokens:
        raise ProfileError(f"{where}: '{name}.tokens' and '.seconds' must be lists of the same non-zero length")
    if any(not isinstance(t, int) or t <= 0 for t in tokens) or list(tokens) != sorted(set(tokens)):
        raise ProfileError(f"{where}: '{name}.tokens' must be increasing positive integers")
    if any(isinstance(s, bool) or not isinstance(s, (int, float)) or s <= 0 for s in seconds):
        raise ProfileError(f"{where}: '{name}.seconds' must be positive numbers")
    if kind == "dense_table":
        for key in ("d_model", "block_params", "context"):
            if isinstance(raw[key], bool) or not isinstance(raw[key], int) or raw[key] < 0:
                raise ProfileError(f"{where}: '{name}.{key}' must be a non-negative integer")
        issue = raw.get("issue_seconds", 0.0)
        if isinstance(issue, bool) or not isinstance(issue, (int, float)) or issue < 0:
            raise ProfileError(f"{where}: '{name}.issue_seconds' must be a non-negative number")
        return DenseTable(raw["d_model"], raw["block_params"], str(raw["dtype"]), raw["context"], tuple(tokens),
                          tuple(float(s) for s in seconds), str(raw["source"]), float(issue))
    return ExpertTable(int(raw["d_model"]), int(raw["d_ff"]), str(raw["dtype"]), tuple(tokens),
                       tuple(float(s) for s in seconds), str(raw["source"]))


def read_sections(where: str, data: dict, fields: dict, parse) -> dict[str, Value]:
    """Every ``[section]`` of ``fields`` (section -> key -> (unit, required)) read by ``parse(section, key, raw,
    unit)``: unknown and missing keys are refused in one line naming them. Hardware and runtime profiles share it."""
    out: dict[str, Value] = {}
    for section, keys in fields.items():
        body = data.get(section, {})
        if not isinstance(body, dict):
            raise ProfileError(f"{where}: '[{section}]' must be a table")
        for key in body:
            if key not in keys:
                raise ProfileError(f"{where}: unknown key '{section}.{key}' (known: {', '.join(keys)})")
        for key, (unit, required) in keys.items():
            if key not in body:
                if required:
                    shown = unit if isinstance(unit, str) else " or ".join(unit)
                    raise ProfileError(f"{where}: missing key '{section}.{key}' (unit {shown})")
                continue
            out[f"{section}.{key}"] = parse(section, key, body[key], unit)
    return out


def parse_profile(data: dict, where: str) -> HardwareProfile:
    """Check a parsed TOML document against the schema; the first problem is raised in one line.

    A schema /1 file (written by ``pregate calibrate`` before hardware and
    runtime were split) still loads: its hardware values become this profile,
    its host and dequantisation values its ``legacy`` part, which
    :func:`pregate.simulator.runtime.runtime_from_legacy` turns into a runtime
    profile. ``pregate calibrate --convert OLD.toml -o NEW.toml`` writes both
    files in the new schemas.
    """
    schema = data.get("schema")
    if schema not in (SCHEMA, LEGACY_SCHEMA):
        raise ProfileError(f"{where}: 'schema' must be \"{SCHEMA}\", got {schema!r}")
    legacy = schema == LEGACY_SCHEMA
    unknown = sorted(set(data) - (LEGACY_TOP_LEVEL if legacy else TOP_LEVEL))
    if unknown:
        hint = (" (host costs and dequantisation belong to a runtime profile: see simulator/runtimes/)"
                if unknown[0] in LEGACY_FIELDS else "")
        raise ProfileError(f"{where}: unknown key '{unknown[0]}' (known: {', '.join(sorted(TOP_LEVEL))}){hint}")
    if not isinstance(data.get("name"), str) or not data["name"]:
        raise ProfileError(f"{where}: 'name' must be a non-empty string")
    def parse(section, key, raw, unit):
        return parse_value(where, f"{section}.{key}", raw, unit, legacy=legacy)

    entries = read_sections(where, data, FIELDS, parse)
    old = read_sections(where, data, LEGACY_FIELDS, parse) if legacy else {}
    if entries["pcie.copy_engines"].value != int(entries["pcie.copy_engines"].value):
        raise ProfileError(f"{where}: 'pcie.copy_engines' must be a whole number")
    if ("nvme.bandwidth" in entries) != ("nvme.latency" in entries):
        raise ProfileError(f"{where}: '[nvme]' needs both bandwidth and latency (or neither)")
    tables = data.get("expert_table", [])
    if not isinstance(tables, list):
        raise ProfileError(f"{where}: 'expert_table' must be an array of tables ([[expert_table]])")
    dense = data.get("dense_table", [])
    if not isinstance(dense, list):
        raise ProfileError(f"{where}: 'dense_table' must be an array of tables ([[dense_table]])")
    cuda_names = data.get("cuda_names", [])
    if not isinstance(cuda_names, list) or not all(isinstance(n, str) for n in cuda_names):
        raise ProfileError(f"{where}: 'cuda_names' must be a list of strings")
    dense_keys = LEGACY_DENSE_TABLE_KEYS if legacy else DENSE_TABLE_KEYS
    return HardwareProfile(
        name=data["name"],
        description=str(data.get("description", "")),
        values={k: v.value for k, v in entries.items()},
        sources={k: v.source for k, v in entries.items()},
        cuda_names=tuple(cuda_names),
        expert_tables=tuple(_check_table(where, i, t) for i, t in enumerate(tables)),
        path=where,
        dense_tables=tuple(_check_table(where, i, t, "dense_table", dense_keys) for i, t in enumerate(dense)),
        entries=entries,
        legacy=old,
        schema=schema,
    )


def read_toml(text: str, kind: str, folder: str, names: list[str]) -> tuple[str, dict]:
    """(where, parsed TOML) of a built-in ``kind`` by name (one of ``names``, in ``folder``) or a file by path.

    Hardware and runtime profiles are found and read the same way; each then checks its own schema.
    """
    path = Path(text)
    if path.suffix == ".toml" or path.exists() or "/" in text:
        if not path.is_file():
            raise ProfileError(f"{kind} file not found: {path}")
        where, raw = str(path), path.read_bytes()
    else:
        if text not in names:
            raise unknown_name(kind, text, names)
        where = f"{kind} {text}"
        raw = (resources.files("pregate.simulator") / folder / f"{text}.toml").read_bytes()
    try:
        return where, tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{where}: not valid TOML ({exc})") from None


def load_profile(name_or_path: str | Path = DEFAULT_PROFILE) -> HardwareProfile:
    """A built-in profile by name (``rtx3090``) or a TOML file by path (``my-gpu.toml``)."""
    where, data = read_toml(str(name_or_path), "profile", "profiles", builtin_profiles())
    return parse_profile(data, where)


def profile_for_device(device_name: str) -> str:
    """The built-in profile for a CUDA device name (``torch.cuda.get_device_name()``).

    Exact matches on a profile's ``cuda_names`` win; otherwise the longest name
    contained in the device string (so "NVIDIA GeForce RTX 3090 Ti" is not taken
    for the 3090 when both are listed). Raises if nothing matches.
    """
    wanted = device_name.strip().lower()
    best: tuple[int, str] | None = None
    for profile_name in builtin_profiles():
        for cuda_name in load_profile(profile_name).cuda_names:
            candidate = cuda_name.lower()
            if candidate == wanted:
                return profile_name
            if candidate in wanted and (best is None or len(candidate) > best[0]):
                best = (len(candidate), profile_name)
    if best is None:
        raise ProfileError(
            f"no built-in profile for CUDA device '{device_name}'; pass --profile FILE "
            f"(built-in: {', '.join(builtin_profiles())})"
        )
    return best[1]


def detect_profile() -> str:
    """The profile of the first visible CUDA device, or the default without one."""
    try:
        import torch

        if torch.cuda.is_available():
            return profile_for_device(torch.cuda.get_device_name(0))
    except ImportError:  # pragma: no cover
        pass
    return DEFAULT_PROFILE



def _table_lines(kind: str, table, keys: tuple[str, ...]) -> list[str]:
    import json

    from pregate.simulator.provenance import num

    lines = ["", f"[[{kind}]]"]
    for key in keys:
        value = getattr(table, key)
        if isinstance(value, tuple):
            lines.append(f"{key} = [{', '.join(num(v) if isinstance(v, float) else str(v) for v in value)}]")
        elif isinstance(value, str):
            lines.append(f"{key} = {json.dumps(value)}")
        else:
            lines.append(f"{key} = {value}")
    return lines


def render_profile(profile: HardwareProfile, header: str = "") -> str:
    """The profile as a schema /2 TOML file (what ``calibrate --convert`` writes)."""
    import json

    from pregate.simulator.provenance import render_value

    lines = [f"# Hardware profile, schema {SCHEMA} (see simulator/README.md)."]
    lines += [f"# {line}" if line else "#" for line in header.splitlines()]
    lines += [f'schema = "{SCHEMA}"', f"name = {json.dumps(profile.name)}",
              f"description = {json.dumps(profile.description)}"]
    if profile.cuda_names:
        lines.append(f"cuda_names = [{', '.join(json.dumps(n) for n in profile.cuda_names)}]")
    for section, keys in FIELDS.items():
        present = [k for k in keys if f"{section}.{k}" in profile.entries]
        if not present:
            continue
        lines += ["", f"[{section}]"]
        lines += [f"{k} = {render_value(profile.entries[f'{section}.{k}'])}" for k in present]
    for t in profile.dense_tables:
        lines += _table_lines("dense_table", t, ("d_model", "block_params", "dtype", "context", "tokens", "seconds",
                                                "source"))
    for t in profile.expert_tables:
        lines += _table_lines("expert_table", t, ("d_model", "d_ff", "dtype", "tokens", "seconds", "source"))
    return "\n".join(lines) + "\n"
