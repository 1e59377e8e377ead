"""Recommendations: the best speculation, caching, cache size and compression for a model on a GPU.

The question is "what should I run on my RTX 3090, and why?". The answer is a
small sweep whose cache sizes are bounded by memory:

* **memory**: the GPU's memory (``--vram`` or the profile's), minus the dense
  (non-expert) weights, minus a working margin (CUDA context, activations, KV
  cache, fragmentation) bounds the expert cache, in whole experts;
* **routing**: a recorded trace when one is given (``--price-as`` prices its
  routing at another model's size); for a known model shape without one, a
  shipped sample trace of the same routing topology priced as that model
  (the Mixtral-topology sample for mixtral-8x7b), else a synthetic trace of
  that shape (Zipf-like expert popularity, some stickiness, a noisy
  pre-gating signal); the answer says which;
* **search**: every speculation x caching policy at the largest cache that
  fits, then the best few of those with every compression at that size and
  at half of it. The fastest point wins; within 0.5% the one using less
  memory does. Both references (all-resident, perfect prediction: oracle +
  Belady) and the proven lower bound come with it. The candidates are read
  from the policy registries, so a new policy is considered without edits here.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pregate.simulator.sweep import SweepError, SweepSpec

def practical_speculations(has_ahead: bool = True) -> list[str]:
    """Every registered speculation policy a user can run: none that reads the future, none that
    needs a trained predictor file, and those needing the trace's ``ahead`` only when it has it."""
    from pregate.simulator.policies import SPECULATION

    out = []
    for name in SPECULATION.names():
        cls = SPECULATION.get(name)
        if cls.needs_future or getattr(cls, "needs_predictor", False) or (cls.needs_ahead and not has_ahead):
            continue
        out.append(name)
    return out


def practical_cachings() -> list[str]:
    """Every registered caching policy that does not read the future (not ``belady``); FIFO is
    left out as LRU without its one advantage."""
    from pregate.simulator.policies import CACHING

    return [n for n in CACHING.names() if not CACHING.get(n).needs_future and n != "fifo"]


COMPRESSIONS = ["none", "int8", "int4", "low-precision-on-miss"]

from pregate.simulator.families import FAMILIES, GPU_CACHE, HYBRID, STATIC, placement_family, placements  # noqa: E402,F401
TOP_COMBOS = 3
TIE = 0.005


def default_margin(vram: float) -> float:
    """Bytes kept free for the CUDA context, activations, KV cache and fragmentation: 0.5 GB + 8%."""
    from pregate.simulator.memory_fit import working_margin

    return working_margin(vram)


@dataclass
class Source:
    trace: Path
    synthetic: bool
    model_id: str
    note: str = ""
    price_as: str = ""


def _write_meta(folder: Path, meta) -> None:
    """Replace the metadata of every part of a trace folder (the rows stay as they are)."""
    import os

    import pyarrow.parquet as pq

    from pregate.traces.schema import META_KEY

    for part in sorted(folder.glob("part-*.parquet")):
        table = pq.read_table(part)
        metadata = dict(table.schema.metadata or {})
        metadata[META_KEY.encode() if isinstance(META_KEY, str) else META_KEY] = meta.to_json().encode()
        tmp = part.with_name(f".{part.name}.tmp")
        pq.write_table(table.replace_schema_metadata(metadata), tmp)
        os.replace(tmp, part)


def _meta_from_shape(shape):
    from pregate.traces import StackMeta, TraceMeta
    from pregate.traces.importers.model_shapes import bytes_per_dtype, dense_bytes, expert_params

    params = expert_params(shape.d_model, shape.d_ff, shape.activation)
    stacks = {name: StackMeta(layers, shape.experts, shape.top_k, shape.block_indices.get(name, list(range(layers))))
              for name, layers in shape.stacks.items()}
    return TraceMeta(
        model_id=shape.model_id, family=shape.family or "unknown", stacks=stacks, d_model=shape.d_model,
        d_ff=shape.d_ff, activation=shape.activation or "relu", gating=shape.gating or "topk-softmax",
        expert_params=params, bytes_per_expert=bytes_per_dtype(params),
        dense_bytes_per_layer=dense_bytes(shape, shape.dtype or "bfloat16"), dtype=shape.dtype or "bfloat16",
        ahead_distance=3, seed=0, corpus="synthetic routing (pregate.simulator.synthetic)",
        extra={"synthetic": True},
    )


def matching_sample(model: str) -> tuple[Path, str] | None:
    """A shipped sample trace whose routing topology is exactly ``model``'s (every stack), and its label."""
    from pregate.simulator.pricing import PricingError, check_topology, resolve_target
    from pregate.simulator.sweep import sample_trace_path
    from pregate.traces import open_trace

    try:
        target = resolve_target(model)
    except PricingError:
        return None
    root = sample_trace_path().parent
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and any(p.glob("*.parquet"))) if root.is_dir() else []:
        meta = open_trace(folder).meta
        try:
            if not check_topology(meta, target):
                return folder, target.name
        except PricingError:
            continue
    return None


def model_source(model: str, batch_size: int, workdir: Path, price_as: str = "") -> Source:
    """The trace to use: ``model`` itself if it is a trace (priced as ``price_as``), else a shipped sample
    of the same topology priced as the model, else a synthetic trace of that model's shape."""
    from pregate.simulator.pricing import check_trace, label
    from pregate.simulator.synthetic import make_trace
    from pregate.traces import open_trace
    from pregate.traces.errors import TraceError
    from pregate.traces.importers.model_shapes import known_model

    path = Path(model)
    if path.exists():
        trace = open_trace(path)
        check_trace(trace.meta, price_as)
        if price_as:
            from pregate.simulator.pricing import resolve_target

            name = resolve_target(price_as).name
            return Source(path, False, f"{trace.meta.model_id} priced as {name}",
                          f"{label(trace.meta.model_id, name)}: routing recorded in {path}", price_as)
        return Source(path, False, trace.meta.model_id, f"routing recorded in {path}")
    if price_as:
        raise SweepError("--price-as prices a recorded trace: give --model TRACE with it")
    sample = matching_sample(model)
    if sample is not None:
        folder, name = sample
        meta = open_trace(folder).meta
        return Source(folder, False, name, f"{label(meta.model_id, name)}: routing recorded in the shipped sample "
                      f"{folder.name} (same routing topology), sizes of {name}", model)
    try:
        meta = _meta_from_shape(known_model(model))
    except TraceError:
        # Tiny test variants are not in the published-shape table; building one would pull the tracer
        # (and torch) into the simulator, so they are traced first instead (ARCHITECTURE.md).
        raise SweepError(f"'{model}' is neither a trace folder nor a published model shape (see 'pregate models'); "
                         f"for another model, trace it first ('pregate trace --model {model} --random-init "
                         "--out runs/x') and recommend on that trace") from None
    dec = meta.stacks.get("decoder")
    enc = meta.stacks.get("encoder")
    first = dec or enc
    folder = workdir / "synthetic-trace"
    make_trace(folder, seqs=max(8, 2 * batch_size), prompt_len=16, new_tokens=32,
               layers=dec.moe_layers if dec else enc.moe_layers, experts=first.experts, top_k=first.top_k, ahead=3,
               encoder_layers=enc.moe_layers if (enc and dec) else 0, seed=0)
    _write_meta(folder, meta)
    return Source(folder, True, meta.model_id,
                  "routing is SYNTHETIC (no trace given): skewed, sticky expert choices with an 80%-accurate "
                  "pre-gating signal; record a trace with 'pregate trace' for a real answer")


@dataclass
class Memory:
    vram: float
    dense: float
    margin: float
    expert_bytes: float
    total_experts: int
    cache_experts: int  # experts the budget holds (at most all)

    @property
    def budget(self) -> float:
        return self.vram - self.dense - self.margin


def memory_plan(trace: Path, profile: str, batch_size: int, vram_gb: float | None, margin_gb: float | None,
                price_as: str = "") -> Memory:
    from pregate.simulator.api import Simulation
    from pregate.simulator.settings import Settings

    sim = Simulation(trace, Settings(profile=profile, batch_size=batch_size, price_as=price_as))
    vram = vram_gb * 1e9 if vram_gb else float(sim.profile["gpu.memory"])
    margin = margin_gb * 1e9 if margin_gb is not None else default_margin(vram)
    dense, eb, total = float(sim.costs.dense_bytes), float(sim.expert_bytes), sim.stream.layout.n_objects
    budget = vram - dense - margin
    # one slot stays free for a bypass copy (a staging buffer) when every slot is protected
    n = int(max(0.0, budget) // eb)
    fits = total if n >= total else max(0, n - 1)
    return Memory(vram, dense, margin, eb, total, fits)


@dataclass
class Recommendation:
    model: str
    gpu: str
    batch_size: int
    synthetic: bool
    source_note: str
    memory: dict
    best: dict | None
    best_uncompressed: dict | None
    runner_up: list[dict] = field(default_factory=list)
    points: int = 0
    all_resident: bool = False
    pricing: str = ""  # "routing of X, priced as Y"
    runtime: str = ""  # the runtime profile the answer is priced for (empty: the default)
    uncertainty: dict | None = None  # with --uncertainty: the winner's band and whether it stays the winner
    ties: int = 0  # other settings within TIE of the best's tokens/s; the least memory among them was chosen
    host: str = ""  # the host kind the CPU side is priced with
    families: list[dict] = field(default_factory=list)  # the best of each placement family, vs the winner
    execute: str = ""  # the pregate execute command line of the winner
    llamacpp: dict | None = None  # llama.cpp flags placing the experts as the best static-layers point does

    def to_dict(self) -> dict:
        return asdict(self)


def _pick(frame):
    """Fastest; within TIE of it, the least memory, then the key (a stable choice)."""
    import polars as pl

    frame = frame.filter(pl.col("tokens_per_s").is_not_null())
    if frame.is_empty():
        return None
    top = frame["tokens_per_s"].max()
    near = frame.filter(pl.col("tokens_per_s") >= top * (1 - TIE))
    return near.sort(["peak_gpu_bytes", "tokens_per_s", "key"], descending=[False, True, False]).row(0, named=True)


def _ties(frame) -> int:
    """How many other settings are as fast as the best (within TIE): the answer says it chose among them."""
    import polars as pl

    frame = frame.filter(pl.col("tokens_per_s").is_not_null())
    if frame.is_empty():
        return 0
    return frame.filter(pl.col("tokens_per_s") >= frame["tokens_per_s"].max() * (1 - TIE)).height - 1


_KEEP = ("speculation", "cache_policy", "cache", "cache_capacity_experts", "compression", "buffering", "tokens_per_s",
         "mean_step_latency_s", "stall_share", "hit_rate", "bytes_moved", "peak_gpu_bytes", "ratio_to_resident",
         "ratio_to_oracle", "ratio_to_lower_bound", "bound_resident_tokens_per_s", "bound_oracle_tokens_per_s", "key",
         "decode_hit_rate", "decode_late_hit_rate", "decode_stall_share")


def _slim(row: dict | None) -> dict | None:
    return None if row is None else {k: row.get(k) for k in _KEEP}


def recommend(model: str, gpu: str = "rtx3090", *, vram_gb: float | None = None, batch_size: int = 1,
              margin_gb: float | None = None, workers: int | None = None, results: str | Path | None = None,
              progress: bool = False, runtime: str = "", uncertainty: str = "",
              price_as: str = "", policy_args=(), host: str = "") -> Recommendation:
    import polars as pl

    from pregate.simulator.profile import detect_profile, load_profile
    from pregate.simulator.sweep import plan_sweep, read_results, run_sweep

    if batch_size < 1:
        raise SweepError("--batch-size must be at least 1")
    if vram_gb is not None and vram_gb <= 0:
        raise SweepError("--vram must be positive (GB)")
    gpu = detect_profile() if gpu == "auto" else gpu
    from pregate.simulator.runtime import load_runtime

    runtime_name = load_runtime(runtime, load_profile(gpu)).name  # an unknown GPU or runtime fails before any work
    from pregate.simulator.hosts import with_host

    host_name = with_host(load_profile(gpu), host).host_name  # an unknown host kind too
    with tempfile.TemporaryDirectory(prefix="pregate-recommend-") as tmp:
        tmp = Path(tmp)
        source = model_source(model, batch_size, tmp, price_as)
        mem = memory_plan(source.trace, gpu, batch_size, vram_gb, margin_gb, source.price_as)
        pricing = _pricing_label(source)
        if mem.cache_experts < 1:
            raise SweepError(
                f"{source.model_id} does not fit a {mem.vram / 1e9:.1f} GB GPU: dense weights "
                f"{mem.dense / 1e9:.2f} GB + working margin {mem.margin / 1e9:.2f} GB leave no room for an expert of "
                f"{mem.expert_bytes / 1e9:.3f} GB")
        out = Path(results) if results else tmp / "results"
        trace = str(source.trace)
        from pregate.traces import open_trace

        has_ahead = open_trace(source.trace).meta.ahead_distance > 0
        specs = practical_speculations(has_ahead)
        from pregate.simulator.uncertainty import parse_mode

        base = {"profile": [gpu], "host": [host], "runtime": [runtime], "batch_size": [batch_size],
                "uncertainty": [parse_mode(uncertainty)], "price_as": [source.price_as]}
        memory = {"vram_bytes": mem.vram, "dense_bytes": mem.dense, "margin_bytes": mem.margin,
                  "expert_bytes": mem.expert_bytes, "total_experts": mem.total_experts,
                  "cache_experts": mem.cache_experts}
        if mem.cache_experts >= mem.total_experts:
            plan = plan_sweep(SweepSpec([trace], {**base, "buffering": ["resident"]}, source="recommend"))
            run_sweep(plan, out, workers=workers, progress=progress)
            frame = read_results(out).filter(pl.col("key").is_in([p.key for p in plan.points]))
            best = _slim(_pick(frame))
            return Recommendation(source.model_id, gpu, batch_size, source.synthetic, source.note, memory, best, best,
                                  points=frame.height, all_resident=True, runtime=runtime_name, pricing=pricing,
                                  host=host_name, execute=execute_command(model, source, best, batch_size))
        cap = mem.cache_experts
        from pregate.simulator.policies.params import split_assignment

        # policy parameters (--policy-arg): resolved against every candidate, then each point gets its policies' own
        given = {name: [value] for name, value in (split_assignment(a) for a in policy_args)}
        spec1 = SweepSpec([trace], {**base, "speculation": specs, "cache_policy": practical_cachings(),
                                    "cache": [str(cap)]}, source="recommend", policy_grid=given)
        params = spec1.policy_axes()
        stage1 = plan_sweep(spec1)
        run_sweep(stage1, out, workers=workers, progress=progress)
        first = read_results(out).filter(pl.col("key").is_in([p.key for p in stage1.points]))
        combos = (first.sort(["tokens_per_s", "key"], descending=[True, False]).select("speculation", "cache_policy")
                  .unique(maintain_order=True).head(TOP_COMBOS).rows())
        sizes = sorted({cap, max(1, cap // 2)}, reverse=True)
        keys = {p.key for p in stage1.points}
        for spec, caching in combos:
            stage2 = plan_sweep(SweepSpec([trace], {**base, "speculation": [spec], "cache_policy": [caching],
                                                    "cache": [str(s) for s in sizes], "compression": COMPRESSIONS},
                                          source="recommend", policy_grid={
                                              q: v for q, v in params.items() if q.rsplit(".", 1)[0] in (spec, caching)}))
            run_sweep(stage2, out, workers=workers, progress=progress)
            keys |= {p.key for p in stage2.points}
        # the placements that run experts on the CPU, at the same sizes, without compression: static ones
        # manage no slot (speculation and caching do not matter), hybrids under the best pairs found
        spec, caching = combos[0]
        kinds = placements()
        for names, pairs in ((kinds[STATIC], [("none", "lru")]), (kinds[HYBRID], combos[:1])):
            if not names:
                continue
            stage3 = plan_sweep(SweepSpec([trace], {**base, "buffering": names, "speculation": [p[0] for p in pairs],
                                                    "cache_policy": [p[1] for p in pairs],
                                                    "cache": [str(s) for s in sizes]}, source="recommend"))
            run_sweep(stage3, out, workers=workers, progress=progress)
            keys |= {p.key for p in stage3.points}
        frame = read_results(out).filter(pl.col("key").is_in(list(keys)))
        best = _pick(frame)
        plain = _pick(frame.filter(pl.col("compression") == "none"))
        others = (frame.filter((pl.col("key") != best["key"]) & (pl.col("cache") == best["cache"])
                               & (pl.col("compression") == best["compression"]))
                  .sort(["tokens_per_s", "key"], descending=[True, False])
                  .unique(["speculation", "cache_policy"], maintain_order=True).head(3))
        verdict = (_verdict(frame, best, source.trace, gpu, runtime, batch_size, uncertainty, source.price_as,
                            progress) if uncertainty else None)
        from pregate.simulator.llamacpp import llamacpp_placement
        from pregate.traces import open_trace as _open

        layers = frame.filter(pl.col("buffering") == "static-layers")
        best_layers = _pick(layers) if layers.height else None
        flags = llamacpp_placement(_open(source.trace).meta, int(best_layers["cache_capacity_experts"])) \
            if best_layers else None
        return Recommendation(source.model_id, gpu, batch_size, source.synthetic, source.note, memory, _slim(best),
                              _slim(plain), [_slim(r) for r in others.iter_rows(named=True)], points=frame.height,
                              runtime=runtime_name, uncertainty=verdict, ties=_ties(frame), pricing=pricing,
                              host=host_name, families=family_answers(frame, best),
                              execute=execute_command(model, source, best, batch_size),
                              llamacpp=None if flags is None else {**flags.to_dict(), "tokens_per_s":
                                                                   best_layers["tokens_per_s"]})


def family_answers(frame, best: dict) -> list[dict]:
    """The best point of each placement family, how much slower than the winner, and how sure.

    How sure: with ``--uncertainty``, every point was priced in the same
    scenarios (corners or seeded samples), so the comparison is paired: the
    winner "holds" against a family when it is at least as fast in every one.
    """
    import json

    import polars as pl

    rows = []
    mine = json.loads(best["uncertainty_tokens_per_s"]) if best.get("uncertainty_tokens_per_s") else None
    fam = frame.with_columns(pl.col("buffering").map_elements(lambda b: placement_family(b) or "",
                                                              return_dtype=pl.String).alias("family"))
    for family in FAMILIES:
        top = _pick(fam.filter(pl.col("family") == family))
        if top is None:
            continue
        row = {"family": family, "buffering": top["buffering"], "speculation": top["speculation"],
               "cache_policy": top["cache_policy"], "cache_capacity_experts": top["cache_capacity_experts"],
               "compression": top["compression"], "tokens_per_s": top["tokens_per_s"],
               "winner_speedup": best["tokens_per_s"] / top["tokens_per_s"] if top["tokens_per_s"] else None,
               "tokens_per_s_low": top.get("tokens_per_s_low"), "tokens_per_s_high": top.get("tokens_per_s_high"),
               "winner_holds": None}
        if mine is not None and top.get("uncertainty_tokens_per_s") and top["key"] != best["key"]:
            theirs = json.loads(top["uncertainty_tokens_per_s"])
            row["winner_holds"] = sum(m >= t for m, t in zip(mine, theirs))
            row["scenarios"] = len(mine)
        rows.append(row)
    return rows


def execute_command(model: str, source: Source, best: dict, batch_size: int) -> str:
    """The ``pregate execute`` line that runs the winner: on the trace's synthetic model for a trace, else
    on the model itself (a Hugging Face id or a local checkpoint of it)."""
    where = f"--trace {source.trace}" if Path(model).exists() else f"--model {source.model_id}"
    parts = [f"pregate execute {where} --device cuda"]
    if best.get("buffering") and best["buffering"] != "cache":
        parts.append(f"--buffering {best['buffering']}")
    family = placement_family(best.get("buffering") or "cache")
    if family == STATIC:  # pins its experts: speculation and caching have nothing to do
        parts.append(f"--cache {best['cache_capacity_experts']}")
    elif family is not None:
        parts.append(f"--speculation {best['speculation']} --cache-policy {best['cache_policy']} "
                     f"--cache {best['cache_capacity_experts']}")
        if best.get("compression") and best["compression"] != "none":
            parts.append(f"--compression {best['compression']}")
    if batch_size != 1:
        parts.append(f"--batch-size {batch_size}")
    if best.get("buffering") == "static-hot" and not Path(model).exists():
        parts.append("   # static-hot counts expert use on a trace: give --trace, or use static-layers with --model")
    return " ".join(parts)


def _settings_of(row: dict, base):
    chosen = base.replace(**{k: row[k] for k in ("speculation", "cache_policy", "cache", "compression", "buffering")})
    return chosen.replace(policy_args=json.loads(row["policy_args"])) if row.get("policy_args") else chosen


def _verdict(frame, best: dict, trace, gpu: str, runtime: str, batch_size: int, mode: str,
             price_as: str = "", progress: bool = False) -> dict:
    """Whether the winner stays the winner in every pricing of the band, and if not, which value decides it.

    Each point of the frame was priced in the same scenarios (the same corners
    or the same seeded samples), so the comparison is paired: the winner holds
    if no other point is faster than it in any scenario.
    """
    import json

    from pregate.simulator.api import Simulation
    from pregate.simulator.settings import Settings
    from pregate.simulator.uncertainty import deciding_value

    mine = json.loads(best["uncertainty_tokens_per_s"])
    worst, challenger = 0.0, None
    for row in frame.iter_rows(named=True):
        if row["key"] == best["key"] or row.get("uncertainty_tokens_per_s") is None:
            continue
        theirs = json.loads(row["uncertainty_tokens_per_s"])
        lead = max(t - m for t, m in zip(theirs, mine))
        if lead > worst:
            worst, challenger = lead, row
    out = {"mode": mode, "tokens_per_s_low": best["tokens_per_s_low"], "tokens_per_s_high": best["tokens_per_s_high"],
           "mean_step_latency_s_low": best["mean_step_latency_s_low"],
           "mean_step_latency_s_high": best["mean_step_latency_s_high"], "values": best["uncertainty_values"],
           "winner_holds": challenger is None, "challenger": None, "decided_by": None}
    if challenger is not None:
        base = Settings(profile=gpu, runtime=runtime, batch_size=batch_size, price_as=price_as)
        sim = Simulation(trace, base)
        out["challenger"] = {k: challenger.get(k) for k in ("speculation", "cache_policy", "cache", "compression",
                                                             "buffering", "tokens_per_s", "tokens_per_s_low",
                                                             "tokens_per_s_high")}
        out["decided_by"] = deciding_value(sim, _settings_of(best, base), _settings_of(challenger, base), progress)
    return out


def _pricing_label(source: Source) -> str:
    from pregate.simulator.pricing import label, resolve_target
    from pregate.traces import open_trace

    meta = open_trace(source.trace).meta
    if source.synthetic:
        return f"SYNTHETIC routing of {meta.model_id}'s shape, priced as {meta.model_id}"
    return label(meta.model_id, resolve_target(source.price_as).name if source.price_as else None)


def _gb(x: float) -> str:
    return f"{x / 1e9:.2f} GB" if x < 10e9 else f"{x / 1e9:.1f} GB"


def format_recommendation(r: Recommendation) -> str:
    m = r.memory
    lines = [f"{r.model} on {r.gpu} ({_gb(m['vram_bytes'])}), host {r.host or r.gpu + ' [cpu]'}, batch {r.batch_size}"
             + (f", runtime {r.runtime}" if r.runtime else "")]
    if r.synthetic:
        lines.append(f"  {r.pricing}")
        lines.append(f"  note: {r.source_note}")
    else:
        lines.append(f"  {r.source_note if r.pricing in r.source_note else r.pricing + ': ' + r.source_note}")
    lines.append(f"  memory: {_gb(m['vram_bytes'])} - dense weights {_gb(m['dense_bytes'])} - working margin "
                 f"{_gb(m['margin_bytes'])} leaves {_gb(max(0.0, m['vram_bytes'] - m['dense_bytes'] - m['margin_bytes']))}"
                 f" for experts of {m['expert_bytes'] / 1e6:.1f} MB: {m['cache_experts']} of {m['total_experts']} "
                 f"({m['cache_experts'] / m['total_experts']:.0%})")
    b = r.best
    if r.all_resident:
        lines.append(f"  run: every expert resident on the GPU (no offloading needed): {b['tokens_per_s']:.1f} tokens/s")
        if r.execute:
            lines.append(f"  command: {r.execute}")
        return "\n".join(lines)

    def describe(x: dict) -> str:
        comp = "" if x["compression"] == "none" else f", compression {x['compression']}"
        size = f"{x['cache_capacity_experts']} experts ({_gb(x['cache_capacity_experts'] * m['expert_bytes'])})"
        family = placement_family(x.get("buffering") or "cache")
        if family == STATIC:
            return f"{x['buffering']} placement: {size} pinned on the GPU, the rest computed on the CPU{comp}"
        how = f"{x['buffering']} (misses may run on the CPU), " if family == HYBRID else ""
        return f"{how}speculation {x['speculation']}, caching {x['cache_policy']}, cache {size}{comp}"

    if r.families:
        winner = placement_family(b.get("buffering") or "cache")
        lines.append(f"  answer: a {winner} is best here")
        for f in r.families:
            if f["family"] == winner:
                continue
            sure = ""
            if f.get("winner_holds") is not None:
                sure = (f"; holds in all {f['scenarios']} pricings of the band" if f["winner_holds"] == f["scenarios"]
                        else f"; NOT certain: holds in {f['winner_holds']} of {f['scenarios']} pricings of the band")
            lines.append(f"    {f['winner_speedup']:.2f}x faster than the best {f['family']} "
                         f"({f['buffering']}, {f['tokens_per_s']:.1f} tokens/s){sure}")
    lines.append(f"  run: {describe(b)}")
    if r.execute:
        lines.append(f"  command: {r.execute}")
    if r.ties:
        lines.append(f"  tie: {r.ties} other setting(s) within {TIE:.1%} of these tokens/s; the one using the least "
                     "GPU memory is shown")
    lines.append(f"  expect: {b['tokens_per_s']:.1f} tokens/s ({b['mean_step_latency_s'] * 1e3:.1f} ms per step), "
                 + (f"decode hits {b['decode_hit_rate']:.0%} on time + {b['decode_late_hit_rate']:.0%} late, "
                    f"{b['decode_stall_share']:.0%} of decode time waiting for copies or CPU-run experts"
                    if b.get("decode_hit_rate") is not None else
                    f"hit rate {b['hit_rate']:.0%} (late hits included), {b['stall_share']:.0%} of the time "
                    "waiting for copies or CPU-run experts"))
    lines.append(f"  references: all experts resident {b['bound_resident_tokens_per_s']:.1f} tokens/s "
                 f"(this is {b['ratio_to_resident']:.2f}x slower; needs "
                 f"{_gb(m['dense_bytes'] + m['total_experts'] * m['expert_bytes'])}); perfect prediction "
                 f"(oracle + Belady) {b['bound_oracle_tokens_per_s']:.1f} tokens/s ({b['ratio_to_oracle']:.2f}x)")
    if b.get("ratio_to_lower_bound"):
        lines.append(f"  headroom: {b['ratio_to_lower_bound']:.2f}x the proven lower bound on step time "
                     "(no policy can go below it)")
    if b["compression"] != "none":
        lines.append(f"  caution: {b['compression']} copies cost accuracy, which the simulator does not model; "
                     f"without compression: {describe(r.best_uncompressed)} at "
                     f"{r.best_uncompressed['tokens_per_s']:.1f} tokens/s")
    u = r.uncertainty
    if u:
        lines.append(f"  band ({u['mode']}, {u['values']} values with a range): {u['tokens_per_s_low']:.1f} to "
                     f"{u['tokens_per_s_high']:.1f} tokens/s, {u['mean_step_latency_s_low'] * 1e3:.1f} to "
                     f"{u['mean_step_latency_s_high'] * 1e3:.1f} ms per step")
        if u["winner_holds"]:
            lines.append("  ranking: the winner stays the winner in every pricing of the band")
        else:
            c, d = u["challenger"], u["decided_by"] or {}
            how = (f"it flips when {d['key']} is at its {d['flips_at']} end ({d['low']:.3g} to {d['high']:.3g})"
                   if d.get("flips_at") else f"{d.get('key')} moves the gap most ({d.get('low', 0):.3g} to "
                                             f"{d.get('high', 0):.3g})")
            # the buffering too: the challenger may be the winner's policies under another scheme
            scheme = f"buffering {c['buffering']}, " if c.get("buffering") else ""
            lines.append(f"  ranking: NOT certain: {c['speculation']} + {c['cache_policy']} ({scheme}cache {c['cache']}, "
                         f"compression {c['compression']}) is faster somewhere in the band; {how}")
    if r.llamacpp:
        f = r.llamacpp
        flags = f["n_cpu_moe"] + " (or " + f["override"] + ")" if f["n_cpu_moe"] else f["override"]
        lines.append(f"  llama.cpp: the best static-layers placement ({f['cpu_layers']} MoE layers' experts on the CPU, "
                     f"{f['gpu_layers']} on the GPU; {f['tokens_per_s']:.1f} tokens/s in pregate) is {flags}")
        lines.append(f"    {f['note']}")
    if r.runner_up:
        alt = "; ".join(f"{x['speculation']} + {x['cache_policy']} {x['tokens_per_s']:.1f}" for x in r.runner_up)
        lines.append(f"  next best (tokens/s): {alt}")
    lines.append(f"  ({r.points} settings simulated)")
    return "\n".join(lines)
