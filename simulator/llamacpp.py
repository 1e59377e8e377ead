"""llama.cpp's flags for a static layer placement: the same experts in the same place, in its words.

Why: most people with one consumer GPU run llama.cpp with some layers' experts
kept on the CPU (``--n-cpu-moe N``, or ``-ot`` with a regex naming the
layers' expert tensors). When pregate finds a ``static-layers`` placement
best, these flags put the same experts on the CPU in llama.cpp. They are an
equivalence of placement only: pregate prices its own cost model, not
llama.cpp's kernels, so its tokens/s is not a prediction of llama.cpp's.

llama.cpp stores all experts of a layer in one tensor per projection
(``blk.N.ffn_gate_exps`` and its ``up``/``down`` siblings), so it can place
whole layers' experts only; ``static-hot`` (single experts) has no flag.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

NOTE = ("an equivalence of placement (the same experts on the CPU), not a prediction of llama.cpp's speed: "
        "pregate models its own kernels, not llama.cpp's")


@dataclass(frozen=True)
class LlamaCppPlacement:
    cpu_layers: int  # MoE layers whose experts stay on the CPU (the first ones)
    gpu_layers: int
    blocks: tuple[int, ...]  # llama.cpp block numbers (blk.N) of the CPU layers
    n_cpu_moe: str  # the flags with --n-cpu-moe
    override: str  # the same with -ot and a regex naming the blocks
    note: str = NOTE

    def to_dict(self) -> dict:
        return asdict(self)


def override_regex(blocks: list[int] | tuple[int, ...]) -> str:
    """The ``-ot`` value that keeps the expert tensors of ``blocks`` on the CPU."""
    return "blk\\.(" + "|".join(str(b) for b in blocks) + ")\\.ffn_.*_exps\\.=CPU"


def llamacpp_placement(meta, capacity: int) -> LlamaCppPlacement | None:
    """The flags for ``static-layers`` at ``capacity`` experts on a decoder-only trace (None otherwise:
    llama.cpp runs decoder-only models, and an encoder stack has no llama.cpp equivalent)."""
    from pregate.simulator.policies.placement import static_layer_split

    if set(meta.stacks) != {"decoder"}:
        return None
    stack = meta.stacks["decoder"]
    cpu, gpu = static_layer_split(stack.moe_layers, stack.experts, capacity)
    blocks = list(stack.block_indices) if stack.block_indices else list(range(stack.moe_layers))
    cpu_blocks = tuple(blocks[i] for i in cpu)
    base = "-ngl 99"  # every layer on the GPU, then the named experts back on the CPU
    if not cpu:
        return LlamaCppPlacement(0, len(gpu), (), base, base)
    # --n-cpu-moe N keeps the experts of the first N blocks on the CPU: the same as these layers only
    # when they are blocks 0..N-1 (every block is an MoE block, as in Mixtral)
    same = list(cpu_blocks) == list(range(len(cpu)))
    n_flag = f"{base} --n-cpu-moe {len(cpu)}" if same else ""
    return LlamaCppPlacement(len(cpu), len(gpu), cpu_blocks, n_flag, f"{base} -ot '{override_regex(cpu_blocks)}'")
