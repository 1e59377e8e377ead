"""Runtime profiles: what a particular way of running the model costs on the host.

Why apart from the hardware profile: the same GPU runs eager PyTorch (pregate's
executor: Python issues every kernel, the planner runs between the router and
the experts) or a CUDA-graph / fused-kernel runtime (the host all but vanishes)
at very different speeds when the host, not the GPU, is the bound. Splitting
the numbers lets every answer be read for either runtime, and lets a runtime
measured on one machine be carried to another GPU.

A runtime profile (schema ``pregate.runtime/1``, TOML) holds, every value with
its kind and range (:mod:`pregate.simulator.provenance`):

* ``[host]``: seconds of host time: ``per_kernel`` (issuing one kernel),
  ``per_block`` and ``per_expert`` (the Python around a dense block's or an
  expert's kernels), ``per_resident_expert`` (the same with every expert
  resident: no slot events), ``router_sync`` (the router's kernels and the
  read-back of its choice), ``layer_step`` / ``resident_layer_step`` (the
  planner and bookkeeping per MoE layer step), ``copy_issue`` (per copy).
  Optional: ``block_issue`` and ``expert_issue`` / ``resident_expert_issue``,
  one measured total that replaces ``per_block + kernels x per_kernel``;
* ``[kernels]``: counts: ``dense_block`` (an attention block: norms,
  projections, attention, residual), ``dense_ffn`` (what a dense FFN adds),
  ``expert`` and ``gated_expert`` (gather to scatter-add); they price the
  host's issue and, where no measured table covers a shape, the GPU's launch
  gaps;
* ``[planner]`` (optional): ``<caching policy>_layer_step`` and
  ``<caching policy>_copy_issue``, the planner's cost for one policy family;
  a family without its own keys costs ``host.layer_step`` and
  ``host.copy_issue``;
* ``[[planner_cost]]`` (optional): the host time of the planner's own
  decisions for one pair of policies (``speculation``, ``caching``,
  ``layer_step`` seconds per MoE layer step, ``request`` seconds per
  requested expert, ``source``), measured by running the planner alone. A
  speculation policy's work (scoring candidates, the cost gate) differs more
  between policies than anything else the planner does: on the 2-core CPU
  machine, at batch 1, 6-9 us per layer step for none+lru and 55-86 us for
  multi_layer+least-stale. With rows, ``host.layer_step`` and
  ``host.copy_issue`` are the runtime's own time around the planner, and a
  pair costs theirs plus its row's; a pair without a row costs the dearest
  row of its caching policy, or of all rows (an upper estimate, named in the
  result);
* ``[dequant]``: ``int8`` and ``int4``: the rate at which the runtime writes
  dequantised weights, as a ``ratio`` of the GPU's HBM bandwidth (carried to
  another GPU) or in ``B/s`` (one GPU);
* ``[copies] issue``: ``"all-at-once"`` (every copy of a layer step is issued
  right after the router's read-back, before the experts) or ``"per-expert"``
  (a missed expert's copy is issued just before that expert);
* ``[[block_issue]]`` (optional): measured host time of one dense block of a
  given shape (``d_model``, ``block_params``, ``seconds``, ``source``);
* ``host_rule``: how the host numbers carry to another host CPU;
* ``host_is_device`` (optional, default false): true for the CPU device,
  where one thread does the host's and the device's work: a block or an
  expert costs its measured compute plus the loop's host time around it (not
  the larger of the two), and a copy blocks the host (it is issued
  synchronously) instead of running beside the compute.

A hardware profile written in the old single-file schema (``pregate.profile/1``)
holds the executor's host costs of the machine it measured; those load as a
runtime profile too (:func:`runtime_from_legacy`), so old calibrated files keep
working.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from pregate.simulator.errors import ProfileError, unknown_name
from pregate.simulator.profile import LEGACY_SCHEMA, HardwareProfile, parse_profile, read_sections, read_toml
from pregate.simulator.provenance import Value, parse_value

SCHEMA = "pregate.runtime/1"
DEFAULT_RUNTIME = "pregate-eager"
COPY_ISSUE = ("all-at-once", "per-expert")

# section -> key -> (units allowed, required)
FIELDS: dict[str, dict[str, tuple[tuple[str, ...], bool]]] = {
    "host": {
        "per_kernel": (("s",), True),
        "per_block": (("s",), True),
        "per_expert": (("s",), True),
        "per_resident_expert": (("s",), True),
        "router_sync": (("s",), True),
        "layer_step": (("s",), True),
        "resident_layer_step": (("s",), True),
        "copy_issue": (("s",), True),
        "block_issue": (("s",), False),
        "expert_issue": (("s",), False),
        "resident_expert_issue": (("s",), False),
    },
    "kernels": {
        "dense_block": (("count",), True),
        "dense_ffn": (("count",), True),
        "expert": (("count",), True),
        "gated_expert": (("count",), True),
    },
    "dequant": {
        "int8": (("ratio", "B/s"), True),
        "int4": (("ratio", "B/s"), True),
    },
}
TOP_LEVEL = {"schema", "name", "description", "host_rule", "host_is_device", "copies", "planner", "block_issue",
             "planner_cost", *FIELDS}
BLOCK_ISSUE_KEYS = {"d_model", "block_params", "seconds", "source"}
PLANNER_COST_KEYS = {"speculation", "caching", "layer_step", "request", "source"}


@dataclass(frozen=True)
class BlockIssue:
    """Measured host time to issue one dense block of one shape."""

    d_model: int
    block_params: int
    seconds: float
    source: str


@dataclass(frozen=True)
class PlannerCost:
    """Measured host time of the planner's own decisions for one speculation and caching policy pair."""

    speculation: str
    caching: str
    layer_step: float  # seconds per MoE layer step
    request: float  # seconds per requested expert (its lookup, the policy's update, the plan's lists)
    source: str


@dataclass(frozen=True)
class RuntimeProfile:
    """The host side of one runtime: issue costs, kernel counts, planner, dequantisation, copy issue."""

    name: str
    description: str
    entries: dict[str, Value]  # "section.key" -> value
    copy_issue_mode: str = "all-at-once"
    host_rule: str = ""
    block_issue_tables: tuple[BlockIssue, ...] = ()
    path: str = ""
    host_is_device: bool = False  # the CPU device: the host does the device's work, so their times add
    planner_costs: tuple[PlannerCost, ...] = ()  # the planner alone, per policy pair (see the module docstring)

    def __getitem__(self, key: str) -> float:
        try:
            return self.entries[key].value
        except KeyError:
            raise ProfileError(f"runtime {self.name}: no value for '{key}'") from None

    def get(self, key: str, default: float | None = None) -> float | None:
        entry = self.entries.get(key)
        return default if entry is None else entry.value

    def unit(self, key: str) -> str:
        return self.entries[key].unit

    def planner(self, cache_policy: str) -> tuple[float, float]:
        """Host seconds per layer step and per copy for one caching policy family."""
        return (self.get(f"planner.{cache_policy}_layer_step", self["host.layer_step"]),
                self.get(f"planner.{cache_policy}_copy_issue", self["host.copy_issue"]))

    def block_issue(self, d_model: int, block_params: float) -> BlockIssue | None:
        """A measured issue time for a dense block of this width, size within 5%."""
        for t in self.block_issue_tables:
            if t.d_model == d_model and abs(t.block_params - block_params) <= 0.05 * max(block_params, 1.0):
                return t
        return None

    def replace(self, **updates: float) -> "RuntimeProfile":
        """A copy with some values changed, e.g. ``replace(**{"host.per_kernel": 5e-6})``."""
        entries = dict(self.entries)
        for key, value in updates.items():
            if key not in entries:
                raise ProfileError(f"runtime {self.name}: unknown key '{key}'")
            old = entries[key]
            entries[key] = Value(float(value), old.unit, old.kind, old.source, float(value), float(value))
        return dataclasses.replace(self, entries=entries)

    def uncertain(self) -> dict[str, Value]:
        return {k: v for k, v in self.entries.items() if v.uncertain}


def planner_row(rows, speculation: str, caching: str) -> tuple[PlannerCost, bool] | None:
    """(the planner cost row for this pair, whether the pair itself was measured), or None without rows.

    A pair without its own row gets the dearest row of its caching policy, or
    of all rows if that policy has none: an upper estimate, since a policy
    nobody measured is not assumed to be cheaper than the ones measured.
    """
    if not rows:
        return None
    for r in rows:
        if r.speculation == speculation and r.caching == caching:
            return r, True
    same = [r for r in rows if r.caching == caching] or list(rows)
    return max(same, key=lambda r: (r.layer_step, r.request, r.speculation, r.caching)), False


def builtin_runtimes() -> list[str]:
    folder = resources.files("pregate.simulator") / "runtimes"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def _units(where, key, raw, units: tuple[str, ...], allow_zero: bool) -> Value:
    unit = raw.get("unit") if isinstance(raw, dict) and raw.get("unit") in units else units[0]
    return parse_value(where, key, raw, unit, allow_zero=allow_zero)


def _array_of_tables(where: str, data: dict, name: str, keys: set):
    """(index, table) of ``[[name]]``, each checked to hold exactly ``keys``; the first problem in one line."""
    tables = data.get(name, [])
    if not isinstance(tables, list):
        raise ProfileError(f"{where}: '{name}' must be an array of tables ([[{name}]])")
    for i, t in enumerate(tables):
        if not isinstance(t, dict) or set(t) != keys:
            raise ProfileError(f"{where}: '{name}[{i}]' needs exactly {', '.join(sorted(keys))}")
        yield i, t


def parse_runtime(data: dict, where: str) -> RuntimeProfile:
    """Check a parsed runtime TOML; the first problem is raised in one line naming the key."""
    if data.get("schema") == LEGACY_SCHEMA:
        return runtime_from_legacy(parse_profile(data, where))
    if data.get("schema") != SCHEMA:
        raise ProfileError(f"{where}: 'schema' must be \"{SCHEMA}\" (a runtime profile), got {data.get('schema')!r}")
    unknown = sorted(set(data) - TOP_LEVEL)
    if unknown:
        raise ProfileError(f"{where}: unknown key '{unknown[0]}' (known: {', '.join(sorted(TOP_LEVEL))})")
    if not isinstance(data.get("name"), str) or not data["name"]:
        raise ProfileError(f"{where}: 'name' must be a non-empty string")
    # host time and kernel counts may be zero (a runtime without host cost); rates may not
    entries = read_sections(where, data, FIELDS, lambda section, key, raw, units: _units(
        where, f"{section}.{key}", raw, units, section in ("host", "kernels")))
    for key in FIELDS["kernels"]:
        v = entries[f"kernels.{key}"].value
        if v != int(v):
            raise ProfileError(f"{where}: 'kernels.{key}' must be a whole number")
    planner = data.get("planner", {})
    if not isinstance(planner, dict):
        raise ProfileError(f"{where}: '[planner]' must be a table")
    for key, raw in planner.items():
        if not (key.endswith("_layer_step") or key.endswith("_copy_issue")):
            raise ProfileError(f"{where}: unknown key 'planner.{key}' (use <caching policy>_layer_step or "
                               "<caching policy>_copy_issue)")
        entries[f"planner.{key}"] = parse_value(where, f"planner.{key}", raw, "s", allow_zero=True)
    copies = data.get("copies", {})
    if not isinstance(copies, dict) or set(copies) - {"issue"}:
        raise ProfileError(f"{where}: '[copies]' must be a table with one key, issue")
    mode = copies.get("issue")
    if mode not in COPY_ISSUE:
        raise ProfileError(f"{where}: missing or unknown 'copies.issue' {mode!r} (valid: {', '.join(COPY_ISSUE)})")
    issue = []
    for i, t in _array_of_tables(where, data, "block_issue", BLOCK_ISSUE_KEYS):
        if not isinstance(t["seconds"], (int, float)) or isinstance(t["seconds"], bool) or t["seconds"] <= 0:
            raise ProfileError(f"{where}: 'block_issue[{i}].seconds' must be a positive number")
        issue.append(BlockIssue(int(t["d_model"]), int(t["block_params"]), float(t["seconds"]), str(t["source"])))
    costs = []
    for i, t in _array_of_tables(where, data, "planner_cost", PLANNER_COST_KEYS):
        for key in ("layer_step", "request"):
            v = t[key]
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
                raise ProfileError(f"{where}: 'planner_cost[{i}].{key}' must be a number of seconds >= 0")
        if not all(isinstance(t[k], str) and t[k] for k in ("speculation", "caching", "source")):
            raise ProfileError(f"{where}: 'planner_cost[{i}]': speculation, caching and source must be non-empty "
                               "strings")
        costs.append(PlannerCost(t["speculation"], t["caching"], float(t["layer_step"]), float(t["request"]),
                                 t["source"]))
    pairs = [(c.speculation, c.caching) for c in costs]
    if len(set(pairs)) != len(pairs):
        dup = next(p for p in pairs if pairs.count(p) > 1)
        raise ProfileError(f"{where}: 'planner_cost' has two rows for {dup[0]}+{dup[1]}; keep one")
    rule = data.get("host_rule", "")
    if not isinstance(rule, str) or not rule.strip():
        raise ProfileError(f"{where}: 'host_rule' must say how the host numbers carry to another host CPU")
    serial = data.get("host_is_device", False)
    if not isinstance(serial, bool):
        raise ProfileError(f"{where}: 'host_is_device' must be true or false")
    return RuntimeProfile(data["name"], str(data.get("description", "")), entries, mode, rule, tuple(issue), where,
                          serial, tuple(costs))


def _legacy_value(src: Value | None, fallback: float, why: str, unit: str = "s") -> Value:
    if src is not None:
        return src
    return Value(fallback, unit, "derived", why, fallback, fallback)


# what the cost model assumed before kernel counts were a runtime's (the constants of schema /1)
LEGACY_KERNELS = {"dense_block": 20, "dense_ffn": 0, "expert": 5, "gated_expert": 7}


def runtime_from_legacy(profile: HardwareProfile, kernels: dict[str, tuple[int, str]] | None = None,
                        name: str = "") -> RuntimeProfile:
    """The runtime profile a schema /1 hardware profile implied (pregate's executor on that machine).

    Every value keeps the source it had; what the old cost model took when a
    key was absent is written as a derived value that says so, so the same file
    prices the same as before the split. With ``kernels`` (counted kernels per
    dense block, FFN and expert: what calibrate passes) the counts are those,
    and the measured block issue of calibrate's attention-only block becomes
    ``host.per_block`` (its time less its kernels' issue), so a block with a
    dense FFN costs its extra kernels.
    """
    if profile.schema != LEGACY_SCHEMA:
        raise ProfileError(f"{profile.path}: not a schema /1 profile; pass its runtime with --runtime")
    old = profile.legacy
    dispatch = old["host.dispatch_per_kernel"]
    e: dict[str, Value] = {"host.per_kernel": dispatch, "host.router_sync": old["host.router_sync"]}
    legacy = "schema /1 default (the cost model before the split)"
    zero = lambda what: Value(0.0, "s", "derived", f"{legacy}: {what}, taken as 0", 0.0, 0.0)  # noqa: E731
    e["host.per_block"] = zero("no host time per block beyond its kernels")
    e["host.per_expert"] = zero("no host time per expert beyond its kernels")
    e["host.per_resident_expert"] = zero("no host time per resident expert beyond its kernels")
    for key in ("layer_step", "resident_layer_step", "copy_issue"):
        e[f"host.{key}"] = old.get(f"host.{key}") or zero(f"host.{key} absent from the file")
    if "host.block_issue" in old:
        e["host.block_issue"] = old["host.block_issue"]
    if "host.expert_issue" in old:
        e["host.expert_issue"] = old["host.expert_issue"]
    elif profile.expert_tables:
        e["host.expert_issue"] = zero("host.expert_issue absent; the file's expert tables were timed back to back, host "
                                     "included")
    if "host.resident_expert_issue" in old:
        e["host.resident_expert_issue"] = old["host.resident_expert_issue"]
    if "host.block_issue" not in old and profile.dense_tables:
        e["host.block_issue"] = zero("host.block_issue absent; the file's dense tables were timed back to back, "
                                     "host included")
    for key, count in LEGACY_KERNELS.items():
        if kernels:
            n, what = kernels[key]
            e[f"kernels.{key}"] = Value(float(n), "count", "measured", f"measured: torch operations the executor's "
                                        f"code dispatches, counted (views excluded): {what}", n, n)
        else:
            e[f"kernels.{key}"] = Value(float(count), "count", "derived", f"{legacy}: {count} kernels", count, count)
    if kernels and "host.block_issue" in old and old["host.block_issue"].value > 0:
        total, n = old["host.block_issue"], kernels["dense_block"][0]
        rest = max(total.value - n * dispatch.value, 0.0)
        e["host.per_block"] = Value(rest, "s", "derived", f"derived: host.block_issue ({total.value:.4g} s, "
                                    f"an attention-only block: {total.source}) - {n} kernels x host.per_kernel",
                                    0.0, total.value)
        del e["host.block_issue"]
    rate = old["dequant.bandwidth"]
    for form in ("int8", "int4"):
        e[f"dequant.{form}"] = rate
    tables = tuple(BlockIssue(t.d_model, t.block_params, t.issue_seconds, t.source)
                   for t in profile.dense_tables if t.issue_seconds > 0)
    rule = ("measured on the host of the profile's own machine: valid there; on another host CPU scale host "
            "times by the ratio of single-thread speeds")
    return RuntimeProfile(name or f"{profile.name} (runtime from the profile file)",
                          f"pregate's executor as measured in {profile.path} (schema /1)", e, "all-at-once", rule,
                          tables, profile.path)


def load_runtime(name_or_path: str | Path = "", profile: HardwareProfile | None = None) -> RuntimeProfile:
    """A built-in runtime by name (``pregate-eager``), a TOML file, or (empty) the profile's own.

    Empty means: a schema /1 profile's own host costs when ``profile`` is one,
    else :data:`DEFAULT_RUNTIME`. A schema /1 profile file given as the runtime
    loads as its host costs.
    """
    text = str(name_or_path)
    if not text:
        if profile is not None and profile.schema == LEGACY_SCHEMA:
            return runtime_from_legacy(profile)
        text = DEFAULT_RUNTIME
    where, data = read_toml(text, "runtime", "runtimes", builtin_runtimes())
    return parse_runtime(data, where)


def runtime_identity(name: str) -> bytes:
    """The bytes that identify a runtime (its TOML), for the sweep's point keys."""
    if not name:
        return b""
    path = Path(name)
    if path.is_file():
        return path.read_bytes()
    if name in builtin_runtimes():
        return (resources.files("pregate.simulator") / "runtimes" / f"{name}.toml").read_bytes()
    return name.encode()


def render_runtime(runtime: RuntimeProfile, header: str = "") -> str:
    """The runtime profile as a ``pregate.runtime/1`` TOML file."""
    import json

    from pregate.simulator.provenance import num, render_value

    lines = [f"# Runtime profile, schema {SCHEMA} (see simulator/README.md)."]
    lines += [f"# {line}" if line else "#" for line in header.splitlines()]
    lines += [f'schema = "{SCHEMA}"', f"name = {json.dumps(runtime.name)}",
              f"description = {json.dumps(runtime.description)}", f"host_rule = {json.dumps(runtime.host_rule)}",
              *(["host_is_device = true"] if runtime.host_is_device else []),
              "", "[copies]", f"issue = {json.dumps(runtime.copy_issue_mode)}"]
    sections = list(FIELDS) + ["planner"]
    for section in sections:
        keys = [k for k in runtime.entries if k.split(".", 1)[0] == section]
        if keys:
            lines += ["", f"[{section}]"]
            lines += [f"{k.split('.', 1)[1]} = {render_value(runtime.entries[k])}" for k in keys]
    for t in runtime.block_issue_tables:
        lines += ["", "[[block_issue]]", f"d_model = {t.d_model}", f"block_params = {t.block_params}",
                  f"seconds = {num(t.seconds)}", f"source = {json.dumps(t.source)}"]
    for c in runtime.planner_costs:
        lines += ["", "[[planner_cost]]", f"speculation = {json.dumps(c.speculation)}",
                  f"caching = {json.dumps(c.caching)}", f"layer_step = {num(c.layer_step)}",
                  f"request = {num(c.request)}", f"source = {json.dumps(c.source)}"]
    return "\n".join(lines) + "\n"
