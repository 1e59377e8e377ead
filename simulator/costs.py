"""The cost model: seconds for every kind of work, precomputed into tables.

Why tables: the timed run prices every layer step and every copy; computing a
roofline each time would dominate the simulation. Everything that depends
only on the trace and the profile is computed once here, vectorised, and the
engine's hot loop does list lookups.

Model (DESIGN.md "Simulator model"):

* expert FFN on the GPU for n tokens: a measured table (tokens -> seconds) when
  the profile has one for this expert shape, else the roofline
  ``max(2 n params / peak_flops, expert_bytes / hbm_bandwidth)`` plus one GPU
  launch gap per kernel; the host spends ``dispatch_per_kernel`` per kernel to
  issue it (at batch 1 on a fast GPU that, not the GPU, is the bound);
* dense work per MoE layer step (attention, projections, norms, the non-MoE
  blocks between MoE layers): a measured table (tokens -> seconds per block,
  at a known context per sequence) when the profile has one for this block,
  with attention beyond that context priced by the roofline; else the
  roofline over the dense weights and the tokens, plus attention over the
  context (``ctx`` = sum of context lengths), plus a fixed number of kernels;
  then the router's result is read by the host;
* a copy: ``copy_latency + bytes / bandwidth`` by host tier (pinned, pageable,
  NVMe staged through pinned memory) and by the dtype of the host copy;
* dequantisation when the host copy is compressed: output bytes / rate;
* CPU expert compute (Fiddler): roofline on the host plus moving activations;
* the executor's own host time (optional profile keys, measured by calibrate
  inside the executor's run loop): issuing a dense block (``host.block_issue``),
  planning and bookkeeping per MoE layer step (``host.layer_step``, or
  ``host.resident_layer_step`` with every expert resident), issuing one copy
  (``host.copy_issue``), and issuing one expert's kernels with its slot's
  events (``host.expert_issue``, ``host.resident_expert_issue``). The GPU is
  idle while the host plans (it has just waited for the router's result), so
  planning and copy issue add to the step; dense work and an expert cost the
  larger of their GPU time and their issue time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pregate.simulator.errors import SimulatorError
from pregate.simulator.profile import HardwareProfile
from pregate.simulator.stream import RequestStream

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
PEAK_KEY = {"float32": "gpu.fp32_flops", "bfloat16": "gpu.bf16_flops", "float16": "gpu.fp16_flops"}
# Kernels eager PyTorch launches (estimates, to be replaced by calibration):
# an expert is gather, up-projection, activation, down-projection, scatter-add;
# a gated expert adds the gate projection and the product.
EXPERT_KERNELS = {False: 5, True: 7}
# Per transformer block outside the experts: norms, attention projections,
# attention, residual adds, the router's matmul, softmax and top-k.
DENSE_KERNELS_PER_BLOCK = 20


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


def build_costs(stream: RequestStream, profile: HardwareProfile, gpu_dtype: str = "",
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
    dispatch = profile["host.dispatch_per_kernel"]
    gated = "gated" in (meta.activation or "") or "glu" in (meta.activation or "").lower()
    kernels = EXPERT_KERNELS[gated]
    max_tokens = int(stream.req_tokens.max()) if stream.n_requests else 1
    n = np.arange(max_tokens + 1, dtype=np.float64)
    table = profile.expert_table(meta.d_model, meta.d_ff)
    used = ""
    if table is not None:
        expert_gpu = interpolate(n, table.tokens, table.seconds)
        # calibrate times the table on the GPU alone; the host's issue of the expert, with
        # the runtime's slot events, is host.expert_issue (absent in older profiles, whose
        # tables were timed back to back and so hold the host's part when it was the bound)
        expert_host = profile.get("host.expert_issue", 0.0)
        expert_host_resident = profile.get("host.resident_expert_issue", expert_host)
        used = table.source
    else:
        act_bytes = 2.0 * n * meta.d_model * DTYPE_BYTES[gpu_dtype]
        expert_gpu = np.maximum(2.0 * n * meta.expert_params / peak, (e_bytes + act_bytes) / hbm) + kernels * launch
        expert_host = profile.get("host.expert_issue", 0.0) or kernels * dispatch
        expert_host_resident = profile.get("host.resident_expert_issue", 0.0) or expert_host
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
        # the table is the GPU's time; the host's issue of this block inside the run loop is
        # its issue_seconds, or host.block_issue (a tiny attention-only block) without one
        issue = max(t.issue_seconds for t in dense_tables) or profile.get("host.block_issue", 0.0)
        dense_host = np.full(len(tokens), blocks_per_layer * issue)
        used_dense = "; ".join(dict.fromkeys(t.source for t in dense_tables))
    else:
        dense_gpu = blocks_per_layer * (weights + attention(ctx) + DENSE_KERNELS_PER_BLOCK * launch)
        block_host = profile.get("host.block_issue", 0.0) or DENSE_KERNELS_PER_BLOCK * dispatch
        dense_host = np.full(len(tokens), blocks_per_layer * block_host)
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
    dequant = {d: (0.0 if d == gpu_dtype else e_bytes / profile["dequant.bandwidth"] + launch) for d in bytes_of}
    n_blocks_total = blocks if blocks else total_moe
    return CostTables(
        gpu_dtype=gpu_dtype,
        expert_bytes=bytes_of,
        expert_gpu=expert_gpu.tolist(),
        expert_host=float(expert_host),
        expert_host_resident=float(expert_host_resident),
        layer_step=profile.get("host.layer_step", 0.0),
        resident_layer_step=min(profile.get("host.resident_layer_step", 0.0), profile.get("host.layer_step", 0.0)),
        copy_issue=profile.get("host.copy_issue", 0.0),
        expert_cpu=expert_cpu.tolist(),
        dense_gpu=np.asarray(dense_gpu, dtype=np.float64),
        dense_host=np.asarray(dense_host, dtype=np.float64),
        router_sync=profile["host.router_sync"],
        copy=copy,
        dequant=dequant,
        dense_bytes=int(dense_bytes_gpu * n_blocks_total),
        used_table=used,
        used_dense_table=used_dense,
    )
