"""The cost model: seconds for every kind of work, precomputed into tables.

Why tables: the timed run prices every layer step and every copy; computing a
roofline each time would dominate the simulation. Everything that depends
only on the trace and the profile is computed once here, vectorised, and the
engine's hot loop does list lookups.

Model (ARCHITECTURE.md "Simulator model"):

Inputs: a hardware profile (what the GPU, link and host CPU can do) and a
runtime profile (what the runtime costs on the host: issue time per kernel,
block and expert, kernels per block and expert, the planner, dequantisation).

* expert FFN on the GPU for n tokens: a measured table (tokens -> seconds) when
  the profile has one for this expert shape, else the roofline
  ``max(2 n params / peak_flops, expert_bytes / hbm_bandwidth)`` plus one GPU
  launch gap per kernel the runtime launches for an expert; the host issues it
  in ``host.expert_issue``, or ``host.per_expert + kernels x host.per_kernel``;
* dense work per MoE layer step (attention, projections, norms, the non-MoE
  blocks between MoE layers): a measured table (tokens -> seconds per block,
  at a known context per sequence) when the profile has one for this block
  (same width and dtype, size within 5%; between two measured contexts the
  cost per sequence's context is the line through them), else the roofline
  over the dense weights and the tokens, plus attention over the context
  (``ctx`` = sum of context lengths), plus one launch gap per kernel of the
  block (``kernels.dense_block``, plus ``kernels.dense_ffn`` with a dense FFN);
  the host issues a block in the runtime's measured time for that shape, or
  ``host.block_issue``, or ``host.per_block + kernels x host.per_kernel``;
  then the router's result is read by the host (``host.router_sync``);
* a copy: ``copy_latency + bytes / bandwidth`` by host tier (pinned, pageable,
  NVMe staged through pinned memory) and by the dtype of the host copy;
* dequantisation when the host copy is compressed: output bytes / the
  runtime's rate for the form (a ratio of HBM bandwidth, or B/s);
* CPU expert compute (Fiddler): roofline on the host plus moving activations;
* planning and bookkeeping per MoE layer step (``host.layer_step``, or
  ``host.resident_layer_step`` with every expert resident, or the runtime's
  ``[planner]`` cost of the caching policy's family) and issuing one copy
  (``host.copy_issue``). The GPU is idle while the host plans (it has just
  waited for the router's result), so planning and copy issue add to the
  step; dense work and an expert cost the larger of their GPU time and their
  issue time.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from pregate.simulator.errors import SimulatorError
from pregate.simulator.profile import HardwareProfile
from pregate.simulator.runtime import RuntimeProfile
from pregate.simulator.stream import RequestStream

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
PEAK_KEY = {"float32": "gpu.fp32_flops", "bfloat16": "gpu.bf16_flops", "float16": "gpu.fp16_flops"}
QUANT_FORMS = ("int8", "int4")


def dense_ffn_params(d_model: int, block_params: float) -> float:
    """Weights of a dense block beyond its attention (4 d^2): a dense FFN when positive."""
    return block_params - 4.0 * d_model * d_model


def dense_block_kernels(runtime: RuntimeProfile, d_model: int, block_params: float) -> int:
    """Kernels one dense block launches in ``runtime``: attention, plus a dense FFN if the block has one."""
    ffn = dense_ffn_params(d_model, block_params) >= 2.0 * d_model  # at least one FFN column
    return int(runtime["kernels.dense_block"] + (runtime["kernels.dense_ffn"] if ffn else 0))


def dequant_rate(runtime: RuntimeProfile, profile: HardwareProfile, form: str) -> float:
    """Bytes of dequantised weights written per second: a ratio of HBM bandwidth, or a rate in B/s."""
    key = f"dequant.{form}"
    value = runtime[key]
    return value * profile["gpu.hbm_bandwidth"] if runtime.unit(key) == "ratio" else value


def interpolate(x, xs, ys) -> np.ndarray:
    """Piecewise-linear through the measured points, extended linearly past the last two.

    A measured table rarely reaches the largest token counts of a prefill; the
    straight line through its last two points prices those instead of clamping.
    """
    x = np.asarray(x, dtype=np.float64)
    xs, ys = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    out = np.interp(x, xs, ys)
    if len(xs) >= 2:
        slope = max((ys[-1] - ys[-2]) / (xs[-1] - xs[-2]), 0.0)
        past = x > xs[-1]
        out[past] = ys[-1] + slope * (x[past] - xs[-1])
    return out


@dataclass
class CostTables:
    """Everything the engine needs, in seconds; index by layer step, token count or dtype."""

    gpu_dtype: str
    expert_bytes: dict[str, int]  # bytes of one expert per dtype
    expert_gpu: list[float]  # [n tokens] -> GPU seconds for one expert
    expert_host: float  # host dispatch seconds for one expert's kernels
    expert_host_resident: float  # the same with every expert resident (no slot events)
    expert_cpu: list[float]  # [n tokens] -> CPU seconds for one expert, with activation copies
    dense_gpu: np.ndarray  # [layer step] -> GPU seconds of dense work and router (an array: one per trace row)
    dense_host: np.ndarray  # [layer step] -> host seconds to dispatch it
    router_sync: float
    copy: dict[str, float]  # dtype of the host copy -> seconds for one expert copy
    dequant: dict[str, float]  # dtype of the host copy -> GPU seconds to dequantise
    dense_bytes: int  # GPU bytes of all dense weights
    layer_step: float = 0.0  # host planning and bookkeeping per MoE layer step
    resident_layer_step: float = 0.0  # the same with every expert resident (no planner)
    copy_issue: float = 0.0  # host time to issue one copy
    used_table: str = ""  # source of the measured expert table, if used
    used_dense_table: str = ""  # source of the measured dense-block table, if used
    planner: dict = field(default_factory=dict)  # caching policy -> (layer_step, copy_issue) where it has its own
    runtime: str = ""  # name of the runtime profile
    sync_copy: float = 0.0  # host seconds per copy when copies block the host (the CPU device)

    def for_policy(self, cache_policy: str) -> "CostTables":
        """These tables with the planner's cost of ``cache_policy``'s family (the runtime's, if it has one)."""
        if cache_policy not in self.planner:
            return self
        layer_step, copy_issue = self.planner[cache_policy]
        return dataclasses.replace(self, layer_step=layer_step, copy_issue=copy_issue + self.sync_copy,
                                   resident_layer_step=min(self.resident_layer_step, layer_step))


def _host_total(runtime: RuntimeProfile, total_key: str, fixed_key: str, kernels: int) -> float:
    """A measured total when the runtime has one, else its fixed part plus its kernels' issue."""
    total = runtime.get(total_key)
    if total is not None:
        return total
    return runtime[fixed_key] + kernels * runtime["host.per_kernel"]


def build_costs(stream: RequestStream, profile: HardwareProfile, runtime: RuntimeProfile, gpu_dtype: str = "",
                host_tier: str = "pinned") -> CostTables:
    meta = stream.meta
    gpu_dtype = gpu_dtype or meta.dtype
    if gpu_dtype not in DTYPE_BYTES:
        raise SimulatorError(f"GPU dtype '{gpu_dtype}' is not one of {', '.join(DTYPE_BYTES)}")
    bytes_of = {d: int(b) for d, b in meta.bytes_per_expert.items()}
    bytes_of.setdefault(gpu_dtype, meta.expert_params * DTYPE_BYTES[gpu_dtype])
    e_bytes = bytes_of[gpu_dtype]
    peak = profile[PEAK_KEY[gpu_dtype]]
    hbm = profile["gpu.hbm_bandwidth"]
    launch = profile["gpu.kernel_launch"]
    gated = "gated" in (meta.activation or "") or "glu" in (meta.activation or "").lower()
    kernels = int(runtime["kernels.gated_expert" if gated else "kernels.expert"])
    # the host's issue of one expert (with its slot events) and of one resident expert
    expert_host = _host_total(runtime, "host.expert_issue", "host.per_expert", kernels)
    if "host.resident_expert_issue" in runtime.entries or "host.expert_issue" not in runtime.entries:
        expert_host_resident = _host_total(runtime, "host.resident_expert_issue", "host.per_resident_expert", kernels)
    else:
        expert_host_resident = expert_host
    max_tokens = int(stream.req_tokens.max()) if stream.n_requests else 1
    n = np.arange(max_tokens + 1, dtype=np.float64)
    table = profile.expert_table(meta.d_model, meta.d_ff)
    used = ""
    if table is not None:
        # calibrate times the table on the GPU alone; the host's issue is the runtime's
        expert_gpu = interpolate(n, table.tokens, table.seconds)
        used = table.source
    else:
        act_bytes = 2.0 * n * meta.d_model * DTYPE_BYTES[gpu_dtype]
        expert_gpu = np.maximum(2.0 * n * meta.expert_params / peak, (e_bytes + act_bytes) / hbm) + kernels * launch
    # Resident experts skip the slot events and the planner: never dearer than offloaded ones
    # (two noisy fits could say otherwise, and the all-resident bound must stay a bound).
    expert_host_resident = min(expert_host_resident, expert_host)
    expert_gpu[0] = 0.0
    # CPU compute in the trace's own dtype (host copies), activations both ways.
    host_bytes = bytes_of.get(meta.dtype, e_bytes)
    act_copy = 2 * (profile["pcie.copy_latency"] + n * meta.d_model * 4 / profile["pcie.pinned_bandwidth"])
    expert_cpu = np.maximum(2.0 * n * meta.expert_params / profile["cpu.flops"],
                            host_bytes / profile["cpu.memory_bandwidth"]) + act_copy
    # dense work per layer step
    total_moe = stream.layout.n_layers
    blocks = int(meta.extra.get("blocks", 0) or 0) if isinstance(meta.extra, dict) else 0
    if meta.stacks and all(s.block_indices for s in meta.stacks.values()):
        # blocks spanned by MoE layers: the last block index + 1 per stack
        blocks = sum(max(s.block_indices) + 1 for s in meta.stacks.values())
    blocks_per_layer = max(1.0, blocks / total_moe) if blocks else 1.0
    trace_bytes = DTYPE_BYTES.get(meta.dtype, 4)
    dense_params = meta.dense_bytes_per_layer / trace_bytes
    dense_bytes_gpu = dense_params * DTYPE_BYTES[gpu_dtype]
    tokens = stream.ls_tokens.astype(np.float64)
    ctx = stream.ls_ctx.astype(np.float64)
    weights = np.maximum(2.0 * tokens * dense_params / peak, dense_bytes_gpu / hbm)

    def attention(context):
        return np.maximum(4.0 * context * meta.d_model / peak, 2.0 * context * meta.d_model * DTYPE_BYTES[gpu_dtype] / hbm)

    block_kernels = dense_block_kernels(runtime, meta.d_model, dense_params)
    measured_issue = runtime.block_issue(meta.d_model, dense_params)
    if measured_issue is not None:
        block_host = measured_issue.seconds
    else:
        block_host = _host_total(runtime, "host.block_issue", "host.per_block", block_kernels)
    dense_host = np.full(len(tokens), blocks_per_layer * block_host)
    dense_tables = profile.dense_table(meta.d_model, dense_params, gpu_dtype)
    used_dense = ""
    if dense_tables:
        # A measured time includes the host's dispatch. With tables at two contexts the
        # cost per sequence's context is the line through them; with one, context
        # beyond it costs the roofline's extra attention.
        short = dense_tables[0]
        measured = interpolate(tokens, short.tokens, short.seconds)
        per_seq_ctx = ctx / np.maximum(tokens, 1.0)
        if len(dense_tables) >= 2 and dense_tables[-1].context > short.context:
            long = dense_tables[-1]
            slope = (interpolate(tokens, long.tokens, long.seconds) - measured) / (long.context - short.context)
            dense_one = np.maximum(measured + slope * (per_seq_ctx - short.context), 0.5 * measured)
        else:
            dense_one = measured + np.maximum(attention(ctx) - attention(tokens * short.context), 0.0)
        dense_gpu = blocks_per_layer * dense_one
        used_dense = "; ".join(dict.fromkeys(t.source for t in dense_tables))
    else:
        # the roofline plus one launch gap per kernel the runtime launches for the block
        dense_gpu = blocks_per_layer * (weights + attention(ctx) + block_kernels * launch)
    # copies by dtype of the host copy
    latency = profile["pcie.copy_latency"]
    copy = {}
    for dtype, size in bytes_of.items():
        if host_tier == "pinned":
            seconds = latency + size / profile["pcie.pinned_bandwidth"]
        elif host_tier == "pageable":
            seconds = latency + size / profile["pcie.pageable_bandwidth"]
        elif host_tier == "nvme":
            if profile.get("nvme.bandwidth") is None or profile.get("nvme.latency") is None:
                raise SimulatorError(f"profile {profile.name} has no [nvme] section; it cannot simulate --host-tier nvme")
            seconds = (profile["nvme.latency"] + size / profile["nvme.bandwidth"]
                       + latency + size / profile["pcie.pinned_bandwidth"])
        else:
            raise SimulatorError(f"unknown host tier '{host_tier}' (valid: pinned, pageable, nvme)")
        copy[dtype] = seconds
    # dequantising (or casting) a host copy into the GPU dtype; a cast runs at the int8 rate
    rates = {form: dequant_rate(runtime, profile, form) for form in QUANT_FORMS}
    dequant = {d: (0.0 if d == gpu_dtype else e_bytes / rates.get(d, rates["int8"]) + launch) for d in bytes_of}
    planner = {}
    for key in runtime.entries:
        if key.startswith("planner."):
            policy = key[len("planner."):].rsplit("_", 2)[0]
            planner[policy] = runtime.planner(policy)
    n_blocks_total = blocks if blocks else total_moe
    sync_copy = 0.0
    if runtime.host_is_device:
        # One thread does both: a block costs the loop's measured time for its shape if there is one
        # (compute included), else its compute plus the host's time around it; an expert its
        # compute plus the loop's time around it; a copy blocks the host for its whole length.
        if measured_issue is not None:
            dense_gpu = np.maximum(dense_gpu, dense_host)
        else:
            dense_gpu = dense_gpu + dense_host
        dense_host = np.zeros(len(tokens))
        expert_gpu = expert_gpu + expert_host
        expert_gpu[0] = 0.0
        expert_host = expert_host_resident = 0.0
        sync_copy = copy[gpu_dtype]
        copy = {d: 0.0 for d in copy}
    return CostTables(
        gpu_dtype=gpu_dtype,
        expert_bytes=bytes_of,
        expert_gpu=expert_gpu.tolist(),
        expert_host=float(expert_host),
        expert_host_resident=float(expert_host_resident),
        layer_step=runtime["host.layer_step"],
        resident_layer_step=min(runtime["host.resident_layer_step"], runtime["host.layer_step"]),
        copy_issue=runtime["host.copy_issue"] + sync_copy,
        sync_copy=sync_copy,
        expert_cpu=expert_cpu.tolist(),
        dense_gpu=np.asarray(dense_gpu, dtype=np.float64),
        dense_host=np.asarray(dense_host, dtype=np.float64),
        router_sync=runtime["host.router_sync"],
        copy=copy,
        dequant=dequant,
        dense_bytes=int(dense_bytes_gpu * n_blocks_total),
        used_table=used,
        used_dense_table=used_dense,
        planner=planner,
        runtime=runtime.name,
    )
