"""The settings of one simulation: a typed dataclass whose field help is the CLI help.

Why one dataclass: the command line, the Python API, the JSON summary and the
README all describe the same knobs. Each field's ``metadata["help"]`` is the
single source of its description; :mod:`pregate.simulator.cli` builds its
options from these fields.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields

from pregate.simulator.errors import SimulatorError


POLICY_FIELDS = ("speculation", "cache_policy", "buffering", "compression")  # a policy name each


def _opt(default, help: str, **extra):
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class Settings:
    """What to simulate: hardware, policies, cache size and serving scenario."""

    profile: str = _opt("rtx3090", "hardware profile: a built-in name (rtx3090, rtx4090, rtx3060-12gb, t4, "
                                   "a100-80gb-pcie, h100-pcie, h200), a TOML file, or auto (the visible CUDA device)")
    host: str = _opt("", "host kind: what the CPU side can do (memory bandwidth, FLOP/s, threads) for experts "
                         "computed on the CPU: ddr4-3200-2ch, ddr5-5600-2ch, server-ddr5-8ch, a host kind file, or "
                         "a calibrated profile file (its measured [cpu]); default: the profile's own [cpu] estimate")
    runtime: str = _opt("", "runtime profile: what the runtime costs on the host: pregate-eager (pregate's executor, "
                            "eager PyTorch), gpu-bound (no host cost: what CUDA graphs or fused kernels approach), "
                            "or a TOML file; default: a calibrated profile file's own host costs, else pregate-eager")
    speculation: str = _opt("none", "speculation policy: which experts to copy before their layer's router runs")
    cache_policy: str = _opt("lru", "caching policy: which GPU-resident expert to evict")
    cache: str = _opt("25%", "GPU expert cache size: a count (96), a fraction of all experts (25%) or bytes (2GB)")
    per_layer: bool = _opt(False, "split the cache evenly between MoE layers instead of one global cache")
    buffering: str = _opt("cache", "buffering scheme: cache, resident, double_buffer, cpu_compute (misses on the "
                                   "CPU, copied in behind), static-layers (llama.cpp --n-cpu-moe), static-hot "
                                   "(Fiddler) or cpu-or-fetch (each miss where it finishes first)")
    compression: str = _opt("none", "form of the host copies: none, int8, int4 or low-precision-on-miss")
    host_tier: str = _opt("pinned", "where host copies live: pinned, pageable or nvme", choices=("pinned", "pageable", "nvme"))
    batch_size: int = _opt(1, "sequences decoded together (one token of each per step); prompts run as prefill")
    dtype: str = _opt("", "expert dtype on the GPU (default: the trace's dtype)")
    price_as: str = _opt("", "keep the trace's routing but price it at another model's size: a known model "
                             "(switch-base-8, mixtral-8x7b, ...) or a model config file (.toml/.json) with the same "
                             "routing topology (MoE layers per stack, experts, top-k)")
    copy_engines: int = _opt(0, "host-to-device copy engines to use (default 0: the profile's count)")
    max_prefetch: int = _opt(0, "most prefetches issued per MoE layer (default 0: no limit beyond the cache)")
    prefetch_gate: str = _opt("cost", "cost: issue a prefetch only when its expected saving (confidence x the stall "
                                      "it avoids) beats its expected cost (link time taken from demand misses, the "
                                      "chance its victim is needed first); off: issue all the speculation names",
                              choices=("cost", "off"))
    reset_cache_per_sequence: bool = _opt(False, "empty the expert cache whenever a new batch of sequences starts "
                                                 "(default: the cache persists across sequences, as in a server)")
    seed: int = _opt(0, "seed for any randomised choice; same inputs and seed give identical output")
    predictor: str = _opt("", "trained predictor file for --speculation learned (from 'pregate predictor train'); "
                              "default: train one on this trace's training split and predict for the other sequences")
    uncertainty: str = _opt("", "price each point across the ranges of its profiles' estimated and derived values: "
                                "corners (the two joint corners: every value at its fast end, at its slow end) or "
                                "a number N of seeded samples; adds low-high bands of tokens/s and step latency")

    policy_args: tuple = _opt((), "a policy parameter, NAME=VALUE (repeatable): NAME is POLICY.PARAM "
                                  "(multi_layer.decay, lfu-decay.half_life) or a PARAM only one chosen policy has; "
                                  "the policies list shows each policy's parameters and defaults", repeat=True)

    def __post_init__(self):
        # Accepts {name: value}, ["NAME=VALUE", ...] or [(name, value), ...]; stores the resolved,
        # sorted ("policy.param", typed value) pairs, so every spelling of a setting is one point.
        raw = self.policy_args
        if not raw:
            if raw != ():
                object.__setattr__(self, "policy_args", ())
            return
        from pregate.simulator.policies.params import chosen_classes, resolve, split_assignment

        items = raw.items() if isinstance(raw, dict) else raw
        if isinstance(items, str):
            items = [items]
        pairs = [split_assignment(item) if isinstance(item, str) else tuple(item) for item in items]
        classes = chosen_classes(self.speculation, self.cache_policy, self.buffering, self.compression)
        object.__setattr__(self, "policy_args", resolve(pairs, classes))

    def to_dict(self) -> dict:
        """Every setting; ``policy_args`` only when given (as ``{"policy.param": value}``), so results
        without them keep the keys (and sweep point keys) they always had."""
        out = asdict(self)
        if self.policy_args:
            out["policy_args"] = dict(self.policy_args)
        else:
            del out["policy_args"]
        return out

    def replace(self, **changes) -> "Settings":
        """A copy with ``changes``; a policy swapped out takes its ``policy_args`` with it (they were its own)."""
        from dataclasses import replace

        if self.policy_args and "policy_args" not in changes and any(k in changes for k in POLICY_FIELDS):
            chosen = {changes.get(k, getattr(self, k)) for k in POLICY_FIELDS}
            changes["policy_args"] = tuple((q, v) for q, v in self.policy_args if q.rsplit(".", 1)[0] in chosen)
        return replace(self, **changes)

    @classmethod
    def help_texts(cls) -> dict[str, str]:
        return {f.name: f.metadata["help"] for f in fields(cls)}


def add_settings_arguments(parser, names: tuple[str, ...] | None = None) -> None:
    """One ``--flag`` per Settings field (or per field in ``names``), with the field's help and default."""
    for f in fields(Settings):
        if names is not None and f.name not in names:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata["help"].replace("%", "%%")  # argparse formats help with %
        if f.metadata.get("repeat"):
            from pregate.traces.cliargs import add_policy_args

            add_policy_args(parser, help_text, dest=f.name)  # --policy-arg, given once per parameter
        elif f.type in (bool, "bool"):
            parser.add_argument(flag, action="store_true", help=help_text)
        else:
            kind = int if f.type in (int, "int") else str
            extra = {"choices": f.metadata["choices"]} if "choices" in f.metadata else {}
            shown = f" (default: {f.default})".replace("%", "%%") if f.default not in ("", 0) else ""
            parser.add_argument(flag, type=kind, default=f.default, help=help_text + shown, **extra)


def settings_from_args(args, names: tuple[str, ...] | None = None, **others) -> Settings:
    """Settings from the options :func:`add_settings_arguments` added, plus ``others``."""
    values = {f.name: getattr(args, f.name) for f in fields(Settings) if names is None or f.name in names}
    if values.get("policy_args") is None:
        values.pop("policy_args", None)
    return Settings(**values, **others)


_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z%]*)\s*$")
_BYTE_UNITS = {"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_cache_size(text: str | int, total_experts: int, expert_bytes: int) -> int:
    """Cache capacity in experts from a count, a percentage of all experts, or bytes.

    Fractions round down (a cache holds whole experts); bytes divide by the
    size of one expert in the GPU dtype. A count above all experts is refused
    (it asks for something that does not exist, likely a typo); bytes beyond
    all experts mean "room for everything" and give all of them.
    """
    if isinstance(text, int):
        count = text
    else:
        match = _SIZE.match(str(text))
        if not match:
            raise SimulatorError(f"cache size '{text}' is not a count (96), a percentage (25%) or bytes (2GB)")
        number, unit = float(match.group(1)), match.group(2).lower()
        if unit == "":
            if number != int(number):
                raise SimulatorError(f"cache size '{text}': a count of experts must be a whole number")
            count = int(number)
            if count > total_experts:
                raise SimulatorError(f"cache size '{text}' is more than the {total_experts} experts of this "
                                     f"trace; give at most {total_experts} (or 100%)")
        elif unit == "%":
            if number > 100:
                raise SimulatorError(f"cache size '{text}': a percentage must be at most 100%")
            count = int(total_experts * number / 100.0 + 1e-9)
        elif unit in _BYTE_UNITS:
            count = int(number * _BYTE_UNITS[unit] // expert_bytes)
        else:
            raise SimulatorError(f"cache size '{text}': unknown unit '{match.group(2)}' (use %, B, KB, MB, GB, GiB)")
    if isinstance(text, int) and count > total_experts:
        raise SimulatorError(f"cache size {text} is more than the {total_experts} experts of this trace; "
                             f"give at most {total_experts}")
    if count < 0:
        raise SimulatorError(f"cache size '{text}' is negative")
    return min(count, total_experts)


def check_per_layer(capacity: int, n_layers: int, per_layer: bool, requested: str | int) -> None:
    """Refuse a per-layer split that leaves a MoE layer with no slot at all.

    Split evenly, a cache smaller than the number of MoE layers gives some
    layers zero slots: each of their experts would then bypass the cache, a
    result nobody asked for. Zero (no cache) stays allowed.
    """
    if per_layer and 0 < capacity < n_layers:
        raise SimulatorError(
            f"--per-layer splits the cache between {n_layers} MoE layers: cache {requested} ({capacity} experts) "
            f"leaves {n_layers - capacity} layers without a slot; give at least {n_layers} experts or drop --per-layer")
