"""Hardware profiles: TOML files whose every number carries a unit and a source.

Why TOML with ``{ value, unit, source }`` tables rather than bare numbers: a
profile mixes datasheet figures, measurements and guesses, and a simulated
latency is only as good as the least certain of them. Keeping the source next
to each value lets a reader see which is which, and the unit check catches the
classic GB/s-versus-B/s slip. Calibrated profiles written by the executor use
the same schema (documented in simulator/README.md).
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from pregate.simulator.errors import ProfileError, unknown_name

SCHEMA = "pregate.profile/1"
DEFAULT_PROFILE = "rtx3090"

# section -> key -> (unit, required). Every value is { value, unit, source }.
FIELDS: dict[str, dict[str, tuple[str, bool]]] = {
    "gpu": {
        "memory": ("B", True),
        "hbm_bandwidth": ("B/s", True),
        "fp32_flops": ("FLOP/s", True),
        "bf16_flops": ("FLOP/s", True),
        "fp16_flops": ("FLOP/s", True),
        "kernel_launch": ("s", True),
    },
    "host": {
        "dispatch_per_kernel": ("s", True),
        "router_sync": ("s", True),
        # The executor's own host time around the kernels (optional: 0 when absent).
        # Measured by calibrate; they matter where the host, not the GPU, is the bound.
        "block_issue": ("s", False),
        "layer_step": ("s", False),
        "resident_layer_step": ("s", False),
        "copy_issue": ("s", False),
        "expert_issue": ("s", False),
        "resident_expert_issue": ("s", False),
    },
    "pcie": {
        "pinned_bandwidth": ("B/s", True),
        "pageable_bandwidth": ("B/s", True),
        "copy_latency": ("s", True),
        "copy_engines": ("count", True),
    },
    "cpu": {
        "flops": ("FLOP/s", True),
        "memory_bandwidth": ("B/s", True),
    },
    "dequant": {
        "bandwidth": ("B/s", True),
    },
    "nvme": {
        "bandwidth": ("B/s", False),
        "latency": ("s", False),
    },
}
TOP_LEVEL = {"schema", "name", "description", "cuda_names", "expert_table", "dense_table", *FIELDS}
TABLE_KEYS = {"d_model", "d_ff", "dtype", "tokens", "seconds", "source"}
DENSE_TABLE_KEYS = {"d_model", "block_params", "dtype", "context", "tokens", "seconds", "source", "issue_seconds"}
OPTIONAL_TABLE_KEYS = {"issue_seconds"}
VALUE_KEYS = {"value", "unit", "source"}


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
    """Measured time (seconds) of one dense transformer block by token count, decoding.

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
    issue_seconds: float = 0.0  # host time to issue one block inside the executor's loop (0: unknown)


@dataclass(frozen=True)
class HardwareProfile:
    """One GPU with its host: the numbers the cost model needs, in SI units."""

    name: str
    description: str
    values: dict[str, float]  # "section.key" -> value in the unit of FIELDS
    sources: dict[str, str]
    cuda_names: tuple[str, ...] = ()
    expert_tables: tuple[ExpertTable, ...] = ()
    path: str = ""
    dense_tables: tuple[DenseTable, ...] = ()

    def __getitem__(self, key: str) -> float:
        return self.values[key]

    def get(self, key: str, default: float | None = None) -> float | None:
        return self.values.get(key, default)

    def replace(self, **updates: float) -> "HardwareProfile":
        """A copy with some values changed, e.g. ``replace(**{"pcie.pinned_bandwidth": 50e9})``."""
        values = dict(self.values)
        for key, value in updates.items():
            if key not in values:
                raise ProfileError(f"profile {self.name}: unknown key '{key}'")
            values[key] = float(value)
        return HardwareProfile(self.name, self.description, values, self.sources, self.cuda_names,
                               self.expert_tables, self.path, self.dense_tables)

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


def _check_value(where: str, key: str, raw, unit: str) -> float:
    if not isinstance(raw, dict):
        raise ProfileError(f"{where}: '{key}' must be a table {{ value = ..., unit = \"{unit}\", source = \"...\" }}")
    extra = set(raw) - VALUE_KEYS
    if extra:
        raise ProfileError(f"{where}: '{key}' has unknown field(s) {', '.join(sorted(extra))} (allowed: value, unit, source)")
    if "value" not in raw:
        raise ProfileError(f"{where}: '{key}' has no value")
    if raw.get("unit") != unit:
        raise ProfileError(f"{where}: '{key}' must have unit \"{unit}\", got {raw.get('unit')!r}")
    if not isinstance(raw.get("source"), str) or not raw["source"].strip():
        raise ProfileError(f"{where}: '{key}' needs a source (datasheet, paper or measurement)")
    value = raw["value"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ProfileError(f"{where}: '{key}' must be a positive number, got {value!r}")
    return float(value)


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


def parse_profile(data: dict, where: str) -> HardwareProfile:
    """Check a parsed TOML document against the schema; the first problem is raised in one line."""
    unknown = sorted(set(data) - TOP_LEVEL)
    if unknown:
        raise ProfileError(f"{where}: unknown key '{unknown[0]}' (known: {', '.join(sorted(TOP_LEVEL))})")
    if data.get("schema") != SCHEMA:
        raise ProfileError(f"{where}: 'schema' must be \"{SCHEMA}\", got {data.get('schema')!r}")
    if not isinstance(data.get("name"), str) or not data["name"]:
        raise ProfileError(f"{where}: 'name' must be a non-empty string")
    values: dict[str, float] = {}
    sources: dict[str, str] = {}
    for section, keys in FIELDS.items():
        body = data.get(section, {})
        if not isinstance(body, dict):
            raise ProfileError(f"{where}: '[{section}]' must be a table")
        for key in body:
            if key not in keys:
                raise ProfileError(f"{where}: unknown key '{section}.{key}' (known: {', '.join(keys)})")
        for key, (unit, required) in keys.items():
            if key not in body:
                if required:
                    raise ProfileError(f"{where}: missing key '{section}.{key}' (unit {unit})")
                continue
            values[f"{section}.{key}"] = _check_value(where, f"{section}.{key}", body[key], unit)
            sources[f"{section}.{key}"] = body[key]["source"]
    if values["pcie.copy_engines"] != int(values["pcie.copy_engines"]):
        raise ProfileError(f"{where}: 'pcie.copy_engines' must be a whole number")
    tables = data.get("expert_table", [])
    if not isinstance(tables, list):
        raise ProfileError(f"{where}: 'expert_table' must be an array of tables ([[expert_table]])")
    dense = data.get("dense_table", [])
    if not isinstance(dense, list):
        raise ProfileError(f"{where}: 'dense_table' must be an array of tables ([[dense_table]])")
    cuda_names = data.get("cuda_names", [])
    if not isinstance(cuda_names, list) or not all(isinstance(n, str) for n in cuda_names):
        raise ProfileError(f"{where}: 'cuda_names' must be a list of strings")
    return HardwareProfile(
        name=data["name"],
        description=str(data.get("description", "")),
        values=values,
        sources=sources,
        cuda_names=tuple(cuda_names),
        expert_tables=tuple(_check_table(where, i, t) for i, t in enumerate(tables)),
        path=where,
        dense_tables=tuple(_check_table(where, i, t, "dense_table", DENSE_TABLE_KEYS) for i, t in enumerate(dense)),
    )


def load_profile(name_or_path: str | Path = DEFAULT_PROFILE) -> HardwareProfile:
    """A built-in profile by name (``rtx3090``) or a TOML file by path (``my-gpu.toml``)."""
    text = str(name_or_path)
    path = Path(text)
    if path.suffix == ".toml" or path.exists() or "/" in text:
        if not path.is_file():
            raise ProfileError(f"profile file not found: {path}")
        where = str(path)
        raw = path.read_bytes()
    else:
        names = builtin_profiles()
        if text not in names:
            raise unknown_name("profile", text, names)
        where = f"profile {text}"
        raw = (resources.files("pregate.simulator") / "profiles" / f"{text}.toml").read_bytes()
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{where}: not valid TOML ({exc})") from None
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

