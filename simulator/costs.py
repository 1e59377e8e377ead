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
from pregate.simulator.runtime import RuntimeProfile, planner_row
from pregate.simulator.stream import RequestStream

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# Weights kept quantised on the GPU too (llama.cpp's way: kernels dequantise inside the matmul):
# bytes per weight of the group-quantised forms, one fp16 scale per 64 weights (traces/schema.py).
QUANT_WEIGHT_BYTES = {"int8": 1 + 2 / 64, "int4": 0.5 + 2 / 64}
GPU_DTYPES = (*DTYPE_BYTES, *QUANT_WEIGHT_BYTES)
PEAK_KEY = {"float32": "gpu.fp32_flops", "bfloat16": "gpu.bf16_flops", "float16": "gpu.fp16_flops",
            "int8": "gpu.bf16_flops", "int4": "gpu.bf16_flops"}
QUANT_FORMS = ("int8", "int4")


def weight_bytes(dtype: str) -> float:
    """Bytes per weight on the GPU in ``dtype`` (scales included for the quantised forms)."""
    return float(DTYPE_BYTES.get(dtype) or QUANT_WEIGHT_BYTES[dtype])


def activation_bytes(dtype: str) -> int:
    """Bytes per activation value: fp32 with fp32 weights, else 16-bit (quantised weights compute in fp16)."""
    return 4 if dtype == "float32" else 2


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
    expert_cpu: list[float]  # [n tokens] -> CPU seconds for one expert, with activation copies (host copy dtype)
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
    expert_cpu_by_dtype: dict = field(default_factory=dict)  # dtype of the host copy -> expert_cpu for it
    host: str = ""  # the host kind the CPU terms were priced with
    planner_rows: tuple = ()  # the runtime's [[planner_cost]] rows (the planner alone, per policy pair)
    host_is_device: bool = False  # one thread does the host's and the device's work (the CPU device)
    requests_per_ls: np.ndarray | None = None  # [layer step] -> experts requested (prices the planner per request)
    planner_used: str = ""  # which planner cost row priced the policy pair, if any

    def for_host_copy(self, dtype: str) -> "CostTables":
        """These tables with the CPU expert cost of host copies in ``dtype`` (what the CPU reads)."""
        # expert_cpu is the GPU dtype's (a host copy without compression), as set or replaced by the caller
        table = self.expert_cpu_by_dtype.get(dtype)
        if dtype == self.gpu_dtype or table is None:
            return self
        return dataclasses.replace(self, expert_cpu=table)

    def for_policy(self, cache_policy: str, speculation: str = "", all_resident: bool = False) -> "CostTables":
        """These tables with the planner's cost of this policy pair (the runtime's, if it has one).

        A runtime with ``[[planner_cost]]`` rows prices the planner's own
        decisions per pair: per layer step plus per requested expert, on top of
        the runtime's time around the planner. Where one thread does
        everything (the CPU device) the pair's cost joins each layer step's
        serial time exactly; on a GPU runtime the per-request part joins each
        expert's host issue. With every expert resident no planner runs.
        """
        row, used = self._planner_choice(cache_policy, speculation, all_resident)
        if used:
            if row is None:  # every expert resident
                return dataclasses.replace(self, planner_used=used)
            if self.host_is_device:
                per_ls = row.layer_step + row.request * self.requests_per_ls
                return dataclasses.replace(self, dense_gpu=self.dense_gpu + per_ls, planner_used=used)
            return dataclasses.replace(self, layer_step=self.layer_step + row.layer_step,
                                       expert_host=self.expert_host + row.request, planner_used=used)
        if cache_policy not in self.planner:
            return self
        layer_step, copy_issue = self.planner[cache_policy]
        return dataclasses.replace(self, layer_step=layer_step, copy_issue=copy_issue + self.sync_copy,
                                   resident_layer_step=min(self.resident_layer_step, layer_step))

    def planner_note(self, cache_policy: str, speculation: str = "", all_resident: bool = False) -> str:
        """Which planner cost row prices this pair ("" when the runtime has none): ``for_policy``'s
        ``planner_used``, without building the tables."""
        return self._planner_choice(cache_policy, speculation, all_resident)[1]

    def _planner_choice(self, cache_policy: str, speculation: str, all_resident: bool):
        """(the runtime's planner cost row for the pair or None, the note saying which; "" without rows)."""
        found = planner_row(self.planner_rows, speculation, cache_policy) if speculation else None
        if found is None:
            return None, ""
        if all_resident:
            return None, "every expert resident: no planner"
        row, own = found
        pair = f"{row.speculation}+{row.caching}"
        return row, (f"{pair}: {row.source}" if own else
                     f"{speculation}+{cache_policy} not measured: priced as {pair}, the dearest measured pair "
                     f"(an upper estimate; {row.source})")


def _host_total(runtime: RuntimeProfile, total_key: str, fixed_key: str, kernels: int) -> float:
    """A measured total when the runtime has one, else its fixed part plus its kernels' issue."""
    total = runtime.get(total_key)
    if total is not None:
        return total
    return runtime[fixed_key] + kernels * runtime["host.per_kernel"]


# ---------------------------------------------------------------------------- one function per cost term

def expert_bytes_by_dtype(meta, gpu_dtype: str) -> dict[str, int]:
    """Bytes of one expert per storage dtype: the trace's figures, plus the GPU dtype from the parameter count."""
    bytes_of = {d: int(b) for d, b in meta.bytes_per_expert.items()}
    bytes_of.setdefault(gpu_dtype, int(meta.expert_params * weight_bytes(gpu_dtype)))
    return bytes_of


def expert_kernels(runtime: RuntimeProfile, activation: str) -> int:
    """Kernels one expert launches: a gated (GLU) expert has one more matmul than a plain one."""
    gated = "gated" in (activation or "") or "glu" in (activation or "").lower()
    return int(runtime["kernels.gated_expert" if gated else "kernels.expert"])


def expert_issue_seconds(runtime: RuntimeProfile, kernels: int) -> tuple[float, float]:
    """(host seconds to issue one offloaded expert, the same for a resident one).

    Resident experts skip the slot events and the planner: never dearer than
    offloaded ones (two noisy fits could say otherwise, and the all-resident
    bound must stay a bound).
    """
    expert_host = _host_total(runtime, "host.expert_issue", "host.per_expert", kernels)
    if "host.resident_expert_issue" in runtime.entries or "host.expert_issue" not in runtime.entries:
        resident = _host_total(runtime, "host.resident_expert_issue", "host.per_resident_expert", kernels)
    else:
        resident = expert_host
    return expert_host, min(resident, expert_host)


def expert_gpu_seconds(n: np.ndarray, profile: HardwareProfile, params: int, d_model: int, d_ff: int,
                       e_bytes: int, gpu_dtype: str, kernels: int) -> tuple[np.ndarray, str]:
    """(GPU seconds of one expert by token count, the measured table's source or "").

    A measured table for the shape wins (calibrate times it on the GPU alone);
    else the roofline ``max(2 n params / peak, (weights + activations in and
    out) / HBM)`` plus one launch gap per kernel. No tokens cost nothing.
    """
    table = profile.expert_table(d_model, d_ff)
    if table is not None:
        out, used = interpolate(n, table.tokens, table.seconds), table.source
    else:
        act = 2.0 * n * d_model * activation_bytes(gpu_dtype)
        peak, hbm = profile[PEAK_KEY[gpu_dtype]], profile["gpu.hbm_bandwidth"]
        out = np.maximum(2.0 * n * params / peak, (e_bytes + act) / hbm) + kernels * profile["gpu.kernel_launch"]
        used = ""
    out[0] = 0.0
    return out, used


def cpu_flops(profile: HardwareProfile, host_dtype: str) -> float:
    """The host's matmul rate for weights in ``host_dtype``: fp32, or the reduced-precision rate if known."""
    if host_dtype == "float32":
        return profile["cpu.flops"]
    return profile.get("cpu.bf16_flops") or profile["cpu.flops"]


def activation_copy_seconds(n: np.ndarray, profile: HardwareProfile, d_model: int) -> np.ndarray:
    """Moving n tokens' fp32 activations to the host and the expert's output back: two pinned copies."""
    return 2 * (profile["pcie.copy_latency"] + n * d_model * 4 / profile["pcie.pinned_bandwidth"])


def expert_cpu_seconds(n: np.ndarray, profile: HardwareProfile, params: int, d_model: int, host_bytes: int,
                       host_dtype: str) -> np.ndarray:
    """CPU seconds of one expert by token count, where its weights live (Fiddler, llama.cpp's CPU experts).

    ``max(host_bytes / memory bandwidth, 2 n params / FLOP rate)``: the weights
    are streamed from memory once per layer step whatever the token count, and
    the matmul runs on every thread of the pool (the rates are the host's with
    ``cpu.threads`` threads, so the pool is one server that runs one expert at
    a time); plus the activations both ways over PCIe and the host's dispatch
    to the pool (``cpu.dispatch``). No tokens cost nothing.
    """
    roofline = np.maximum(host_bytes / profile["cpu.memory_bandwidth"], 2.0 * n * params / cpu_flops(profile, host_dtype))
    out = roofline + activation_copy_seconds(n, profile, d_model) + (profile.get("cpu.dispatch") or 0.0)
    return out


def expert_cpu_by_dtype(n: np.ndarray, profile: HardwareProfile, meta, bytes_of: dict[str, int]) -> dict:
    """:func:`expert_cpu_seconds` for a host copy in each dtype the trace has bytes for."""
    return {d: expert_cpu_seconds(n, profile, meta.expert_params, meta.d_model, size, d).tolist()
            for d, size in bytes_of.items()}


def blocks_per_moe_layer(meta, n_moe_layers: int) -> tuple[float, int]:
    """(dense blocks per MoE layer step, dense blocks in all): every block is priced at an MoE layer step."""
    blocks = int(meta.extra.get("blocks", 0) or 0) if isinstance(meta.extra, dict) else 0
    if meta.stacks and all(s.block_indices for s in meta.stacks.values()):
        # blocks spanned by MoE layers: the last block index + 1 per stack
        blocks = sum(max(s.block_indices) + 1 for s in meta.stacks.values())
    per_layer = max(1.0, blocks / n_moe_layers) if blocks else 1.0
    return per_layer, (blocks if blocks else n_moe_layers)


def attention_seconds(context: np.ndarray, profile: HardwareProfile, d_model: int, gpu_dtype: str) -> np.ndarray:
    """Attention over ``context`` earlier tokens: the roofline of reading K and V and the dot products."""
    peak, hbm = profile[PEAK_KEY[gpu_dtype]], profile["gpu.hbm_bandwidth"]
    return np.maximum(4.0 * context * d_model / peak, 2.0 * context * d_model * activation_bytes(gpu_dtype) / hbm)


def dense_issue_seconds(runtime: RuntimeProfile, d_model: int, dense_params: float):
    """(host seconds to issue one dense block, the runtime's measured issue for this shape or None)."""
    measured = runtime.block_issue(d_model, dense_params)
    if measured is not None:
        return measured.seconds, measured
    kernels = dense_block_kernels(runtime, d_model, dense_params)
    return _host_total(runtime, "host.block_issue", "host.per_block", kernels), None


def dense_gpu_seconds(stream: RequestStream, profile: HardwareProfile, runtime: RuntimeProfile, dense_params: float,
                      gpu_dtype: str, blocks_per_layer: float) -> tuple[np.ndarray, str]:
    """(GPU seconds of the dense work of each layer step, the measured tables' sources or "").

    Measured tables of this block (same width and dtype, size within 5%) win;
    a measured time includes the host's dispatch. With tables at two contexts
    the cost per sequence's context is the line through them; with one,
    context beyond it costs the roofline's extra attention. Else the roofline
    over the dense weights and the tokens, plus attention over the context,
    plus one launch gap per kernel of the block.
    """
    n = len(stream.ls_tokens)
    out = np.empty(n, np.float64)
    used = ""
    # in blocks of layer steps: the terms are elementwise, so the result is the same, while the
    # temporaries (a handful of float64 arrays) follow the block, not the trace
    for lo in range(0, max(n, 1), DENSE_BLOCK):  # once at least: the sources name the tables even then
        hi = min(lo + DENSE_BLOCK, n)
        out[lo:hi], used = _dense_gpu_block(stream.meta, stream.ls_tokens[lo:hi].astype(np.float64),
                                            stream.ls_ctx[lo:hi].astype(np.float64), profile, runtime,
                                            dense_params, gpu_dtype, blocks_per_layer)
    return out, used


DENSE_BLOCK = 1 << 16  # layer steps priced at a time


def _dense_gpu_block(meta, tokens: np.ndarray, ctx: np.ndarray, profile: HardwareProfile, runtime: RuntimeProfile,
                     dense_params: float, gpu_dtype: str, blocks_per_layer: float) -> tuple[np.ndarray, str]:
    """:func:`dense_gpu_seconds` for the layer steps with these token counts and context sums."""
    dense_tables = profile.dense_table(meta.d_model, dense_params, gpu_dtype)
    if dense_tables:
        short = dense_tables[0]
        measured = interpolate(tokens, short.tokens, short.seconds)
        per_seq_ctx = ctx / np.maximum(tokens, 1.0)
        if len(dense_tables) >= 2 and dense_tables[-1].context > short.context:
            long = dense_tables[-1]
            slope = (interpolate(tokens, long.tokens, long.seconds) - measured) / (long.context - short.context)
            dense_one = np.maximum(measured + slope * (per_seq_ctx - short.context), 0.5 * measured)
        else:
            dense_one = measured + np.maximum(attention_seconds(ctx, profile, meta.d_model, gpu_dtype)
                                              - attention_seconds(tokens * short.context, profile, meta.d_model,
                                                                  gpu_dtype), 0.0)
        return blocks_per_layer * dense_one, "; ".join(dict.fromkeys(t.source for t in dense_tables))
    peak, hbm = profile[PEAK_KEY[gpu_dtype]], profile["gpu.hbm_bandwidth"]
    weights = np.maximum(2.0 * tokens * dense_params / peak, dense_params * weight_bytes(gpu_dtype) / hbm)
    kernels = dense_block_kernels(runtime, meta.d_model, dense_params)
    launch = profile["gpu.kernel_launch"]
    return blocks_per_layer * (weights + attention_seconds(ctx, profile, meta.d_model, gpu_dtype) + kernels * launch), ""


def copy_seconds(bytes_of: dict[str, int], profile: HardwareProfile, host_tier: str) -> dict[str, float]:
    """Seconds for one expert copy by dtype of the host copy: ``latency + bytes / bandwidth`` of the tier
    (NVMe is staged through pinned memory: both legs)."""
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
    return copy


def dequant_seconds(bytes_of: dict[str, int], runtime: RuntimeProfile, profile: HardwareProfile, gpu_dtype: str,
                    e_bytes: int) -> dict[str, float]:
    """GPU seconds to dequantise (or cast) a host copy of each dtype into the GPU dtype: output bytes / the
    runtime's rate for the form, plus one launch; a cast runs at the int8 rate; the GPU dtype itself costs 0."""
    rates = {form: dequant_rate(runtime, profile, form) for form in QUANT_FORMS}
    launch = profile["gpu.kernel_launch"]
    return {d: (0.0 if d == gpu_dtype else e_bytes / rates.get(d, rates["int8"]) + launch) for d in bytes_of}


def planner_seconds(runtime: RuntimeProfile) -> dict:
    """Caching policy -> (layer_step, copy_issue) where the runtime measured its own planner cost."""
    planner = {}
    for key in runtime.entries:
        if key.startswith("planner."):
            policy = key[len("planner."):].rsplit("_", 2)[0]
            planner[policy] = runtime.planner(policy)
    return planner


def build_costs(stream: RequestStream, profile: HardwareProfile, runtime: RuntimeProfile, gpu_dtype: str = "",
                host_tier: str = "pinned") -> CostTables:
    """Every cost term for this stream, profile and runtime, as lookup tables (see the module docstring)."""
    meta = stream.meta
    gpu_dtype = gpu_dtype or meta.dtype
    if gpu_dtype not in GPU_DTYPES:
        raise SimulatorError(f"GPU dtype '{gpu_dtype}' is not one of {', '.join(GPU_DTYPES)}")
    bytes_of = expert_bytes_by_dtype(meta, gpu_dtype)
    e_bytes = bytes_of[gpu_dtype]
    kernels = expert_kernels(runtime, meta.activation)
    expert_host, expert_host_resident = expert_issue_seconds(runtime, kernels)
    max_tokens = int(stream.req_tokens.max()) if stream.n_requests else 1
    n = np.arange(max_tokens + 1, dtype=np.float64)
    expert_gpu, used = expert_gpu_seconds(n, profile, meta.expert_params, meta.d_model, meta.d_ff, e_bytes,
                                          gpu_dtype, kernels)
    # CPU compute reads the host copy: in the GPU dtype unless a compression form names another
    cpu_by_dtype = expert_cpu_by_dtype(n, profile, meta, bytes_of)
    # dense work per layer step
    blocks_per_layer, n_blocks_total = blocks_per_moe_layer(meta, stream.layout.n_layers)
    dense_params = meta.dense_bytes_per_layer / DTYPE_BYTES.get(meta.dtype, 4)
    block_host, measured_issue = dense_issue_seconds(runtime, meta.d_model, dense_params)
    dense_host = np.full(len(stream.ls_tokens), blocks_per_layer * block_host)
    dense_gpu, used_dense = dense_gpu_seconds(stream, profile, runtime, dense_params, gpu_dtype, blocks_per_layer)
    copy = copy_seconds(bytes_of, profile, host_tier)
    dequant = dequant_seconds(bytes_of, runtime, profile, gpu_dtype, e_bytes)
    sync_copy = 0.0
    if runtime.host_is_device:
        # One thread does both: a block costs the loop's measured time for its shape if there is one
        # (compute included), else its compute plus the host's time around it; an expert its
        # compute plus the loop's time around it; a copy blocks the host for its whole length.
        if measured_issue is not None:
            dense_gpu = np.maximum(dense_gpu, dense_host)
        else:
            dense_gpu = dense_gpu + dense_host
        dense_host = np.zeros(len(stream.ls_tokens))
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
        expert_cpu=cpu_by_dtype[gpu_dtype],
        expert_cpu_by_dtype=cpu_by_dtype,
        dense_gpu=np.asarray(dense_gpu, dtype=np.float64),
        dense_host=np.asarray(dense_host, dtype=np.float64),
        router_sync=runtime["host.router_sync"],
        copy=copy,
        dequant=dequant,
        dense_bytes=int(dense_params * weight_bytes(gpu_dtype) * n_blocks_total),
        used_table=used,
        used_dense_table=used_dense,
        planner=planner_seconds(runtime),
        planner_rows=runtime.planner_costs,
        host_is_device=runtime.host_is_device,
        requests_per_ls=np.diff(stream.ls_req_start).astype(np.float64),
        runtime=runtime.name,
        host=profile.host_name,
    )
