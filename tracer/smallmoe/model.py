"""pregate's own small MoE language model: decoder-only, Switch-style expert layers.

Why our own model: no pre-trained MoE weights can be downloaded on the machines
pregate is built and tested on, and random weights route without the structure
speculation exploits (skewed expert use, agreement between neighbouring
layers' routers). A model trained here in minutes has that structure.

The router follows the convention of Hugging Face's top-k routers
(``forward(hidden) -> (logits, weights, ids)``) and each MoE block exposes
``gate`` and ``experts``, so the tracer reads it with the same adapter code as
Mixtral or OLMoE. ``generate`` implements the subset of Hugging Face's greedy
``generate`` that the tracer uses: left-padded batches, a KV cache, one forward
per new token, pad after EOS.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

MODEL_TYPE = "pregate_moe"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class SmallMoEConfig:
    """Shape and training-time options of the small MoE model."""

    vocab_size: int = 2048
    d_model: int = 128
    n_layers: int = 6
    n_heads: int = 4
    d_ff: int = 256  # hidden width of one expert
    num_experts: int = 8
    top_k: int = 1
    moe_every: int = 1  # every n-th block is an MoE block (1: all of them)
    dense_d_ff: int = 512  # FFN width of the non-MoE blocks
    max_seq_len: int = 256
    capacity_factor: float | None = None  # None: no expert capacity (no dropped tokens)
    aux_loss_coef: float = 0.01  # Switch load-balancing loss weight
    pad_token_id: int = 0
    bos_token_id: int = 1
    eos_token_id: int = 2
    model_type: str = MODEL_TYPE
    extra: dict = field(default_factory=dict)

    # Names the shared top-k adapter reads (the Hugging Face spellings).
    @property
    def hidden_size(self) -> int:
        return self.d_model

    @property
    def num_experts_per_tok(self) -> int:
        return self.top_k

    @property
    def intermediate_size(self) -> int:
        return self.d_ff

    @property
    def hidden_act(self) -> str:
        return "gelu"

    @property
    def norm_topk_prob(self) -> bool:
        return self.top_k > 1

    def is_moe(self, block: int) -> bool:
        return block % self.moe_every == self.moe_every - 1

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


PRESETS: dict[str, SmallMoEConfig] = {
    # For tests: a model that trains in seconds on one CPU core and still has every part the
    # others have (MoE blocks with a router, a dense block, top-1 routing); not for results.
    "micro": SmallMoEConfig(
        vocab_size=384, d_model=32, n_layers=4, n_heads=2, d_ff=32, num_experts=4, top_k=1, moe_every=2,
        dense_d_ff=64, max_seq_len=64,
    ),
    # Trains on two CPU cores in minutes to clearly non-random routing.
    "tiny": SmallMoEConfig(),
    # Mixtral-8x7B's routing topology (32 MoE layers x 8 experts, top-2) at a width that
    # trains on two shared CPU cores in under 20 minutes: the routing is the artefact.
    "mixtral-topo": SmallMoEConfig(
        d_model=64, n_layers=32, n_heads=4, d_ff=128, num_experts=8, top_k=2, moe_every=1,
    ),
    # switch-base-64's decoder topology (6 MoE layers x 64 experts, top-1) at the tiny width.
    "tiny-64": SmallMoEConfig(num_experts=64),
    # About 140M parameters (six MoE layers of 8 experts): for a GPU.
    "small-140m": SmallMoEConfig(
        vocab_size=32000, d_model=512, n_layers=12, n_heads=8, d_ff=2048, num_experts=8,
        moe_every=2, dense_d_ff=2048, max_seq_len=512,
    ),
}


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


class Attention(nn.Module):
    def __init__(self, cfg: SmallMoEConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x, key_mask, cache):
        B, S, D = x.shape
        q, k, v = self.qkv(x).view(B, S, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)
        if cache is not None:
            k = torch.cat([cache[0], k], dim=2)
            v = torch.cat([cache[1], v], dim=2)
        T = k.shape[2]
        # Query i (absolute index T - S + i) sees keys j <= its index that are not padding;
        # it always sees itself, so a padding query never has an empty row.
        qi = torch.arange(T - S, T, device=x.device)[:, None]
        kj = torch.arange(T, device=x.device)[None, :]
        allowed = (kj <= qi)[None, None] & key_mask[:, None, None, :].bool()
        allowed = allowed | (kj == qi)[None, None]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return self.out(y.transpose(1, 2).reshape(B, S, D)), (k, v)


class Router(nn.Module):
    """Softmax top-k router; returns (logits, gate weights, expert ids) like HF's top-k routers."""

    def __init__(self, cfg: SmallMoEConfig):
        super().__init__()
        self.top_k = cfg.top_k
        self.renormalise = cfg.top_k > 1
        self.weight = nn.Parameter(torch.empty(cfg.num_experts, cfg.d_model))
        nn.init.normal_(self.weight, std=cfg.d_model**-0.5)

    def forward(self, hidden: torch.Tensor):
        hidden = hidden.reshape(-1, hidden.shape[-1])
        logits = F.linear(hidden, self.weight)
        probs = torch.softmax(logits.float(), dim=-1)
        weights, ids = torch.topk(probs, self.top_k, dim=-1)
        if self.renormalise:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return logits, weights.to(hidden.dtype), ids


class Experts(nn.Module):
    """All experts of one layer as two stacked weight tensors (one matmul pair per used expert)."""

    def __init__(self, cfg: SmallMoEConfig):
        super().__init__()
        self.num_experts = cfg.num_experts
        self.w_in = nn.Parameter(torch.randn(cfg.num_experts, cfg.d_model, cfg.d_ff) * cfg.d_model**-0.5)
        self.w_out = nn.Parameter(torch.randn(cfg.num_experts, cfg.d_ff, cfg.d_model) * cfg.d_ff**-0.5)

    def forward(self, hidden, ids, weights, keep=None):
        out = torch.zeros_like(hidden)
        for expert in torch.unique(ids).tolist():
            token, slot = torch.where(ids == expert)
            if keep is not None:
                mask = keep[token, slot]
                token, slot = token[mask], slot[mask]
            h = F.gelu(hidden[token] @ self.w_in[expert]) @ self.w_out[expert]
            out.index_add_(0, token, h * weights[token, slot, None])
        return out


class MoEBlockFFN(nn.Module):
    def __init__(self, cfg: SmallMoEConfig):
        super().__init__()
        self.cfg = cfg
        self.gate = Router(cfg)
        self.experts = Experts(cfg)
        self.last_aux_loss = torch.zeros(())

    def forward(self, x):
        B, S, D = x.shape
        flat = x.reshape(-1, D)
        logits, weights, ids = self.gate(flat)
        keep = None
        if self.cfg.capacity_factor is not None:
            capacity = math.ceil(self.cfg.capacity_factor * flat.shape[0] * self.cfg.top_k / self.cfg.num_experts)
            onehot = F.one_hot(ids, self.cfg.num_experts)  # (N, k, E)
            order = onehot.reshape(-1, self.cfg.num_experts).cumsum(0).reshape(onehot.shape)
            keep = ((order * onehot).sum(-1) <= capacity)
        if self.training:
            # Switch load balancing: E * sum_e (share of routed slots to e) * (mean router prob of e);
            # with top-k every one of a token's k choices counts (as in Mixtral's loss).
            probs = torch.softmax(logits.float(), dim=-1)
            share = F.one_hot(ids, self.cfg.num_experts).float().mean((0, 1))
            self.last_aux_loss = self.cfg.num_experts * (share * probs.mean(0)).sum()
        return self.experts(flat, ids, weights, keep).reshape(B, S, D)


class DenseFFN(nn.Module):
    def __init__(self, cfg: SmallMoEConfig):
        super().__init__()
        self.w_in = nn.Linear(cfg.d_model, cfg.dense_d_ff, bias=False)
        self.w_out = nn.Linear(cfg.dense_d_ff, cfg.d_model, bias=False)

    def forward(self, x):
        return self.w_out(F.gelu(self.w_in(x)))


class Block(nn.Module):
    def __init__(self, cfg: SmallMoEConfig, index: int):
        super().__init__()
        self.norm1 = RMSNorm(cfg.d_model)
        self.attn = Attention(cfg)
        self.norm2 = RMSNorm(cfg.d_model)
        self.mlp = MoEBlockFFN(cfg) if cfg.is_moe(index) else DenseFFN(cfg)

    def forward(self, x, key_mask, cache):
        a, cache = self.attn(self.norm1(x), key_mask, cache)
        x = x + a
        return x + self.mlp(self.norm2(x)), cache


class SmallMoEModel(nn.Module):
    """Token and position embeddings, blocks, a tied output head."""

    def __init__(self, cfg: SmallMoEConfig):
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = nn.Embedding(cfg.max_seq_len, cfg.d_model)
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model)

    def forward(self, input_ids, key_mask=None, positions=None, cache=None):
        B, S = input_ids.shape
        if key_mask is None:
            key_mask = torch.ones(B, S if cache is None else cache[0][0].shape[2] + S, dtype=torch.long,
                                  device=input_ids.device)
        if positions is None:
            start = 0 if cache is None else cache[0][0].shape[2]
            positions = torch.arange(start, start + S, device=input_ids.device).expand(B, S)
        x = self.embed(input_ids) + self.pos(positions.clamp(max=self.config.max_seq_len - 1))
        new_cache = []
        for i, block in enumerate(self.layers):
            x, kv = block(x, key_mask, None if cache is None else cache[i])
            new_cache.append(kv)
        logits = self.norm(x) @ self.embed.weight.T
        return logits, new_cache

    def aux_loss(self) -> torch.Tensor:
        losses = [b.mlp.last_aux_loss for b in self.layers if isinstance(b.mlp, MoEBlockFFN)]
        return torch.stack(losses).mean()

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, max_new_tokens=32, eos_token_id=None, pad_token_id=None,
                 **_ignored):
        """Greedy decoding of a left-padded batch with a KV cache (see the module docstring)."""
        eos = self.config.eos_token_id if eos_token_id is None else eos_token_id
        pad = self.config.pad_token_id if pad_token_id is None else pad_token_id
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits, cache = self(input_ids, mask, positions)
        next_pos = positions[:, -1] + 1
        token = logits[:, -1].argmax(-1)
        finished = token == eos
        out = [token]
        for _ in range(max_new_tokens - 1):
            if bool(finished.all()):
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            logits, cache = self(token[:, None], mask, next_pos[:, None], cache)
            next_pos = next_pos + 1
            token = torch.where(finished, torch.full_like(token, pad), logits[:, -1].argmax(-1))
            finished = finished | (token == eos)
            out.append(token)
        return torch.cat([input_ids, torch.stack(out, dim=1)], dim=1)

    # ---- files --------------------------------------------------------------------
    def save(self, folder: str | Path, tokenizer=None) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
        (folder / CONFIG_FILE).write_text(self.config.to_json() + "\n")
        if tokenizer is not None:
            tokenizer.save_pretrained(str(folder))


def is_small_moe_folder(path: str | Path) -> bool:
    config = Path(path) / CONFIG_FILE
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("model_type") == MODEL_TYPE
    except ValueError:
        return False


def load_small_moe(folder: str | Path) -> tuple[SmallMoEModel, object | None]:
    """Model (and tokenizer, if saved) from a folder written by :meth:`SmallMoEModel.save`."""
    from safetensors.torch import load_file

    folder = Path(folder)
    data = json.loads((folder / CONFIG_FILE).read_text())
    cfg = SmallMoEConfig(**data)
    model = SmallMoEModel(cfg)
    model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    tokenizer = None
    if (folder / "tokenizer.json").is_file():
        from transformers import PreTrainedTokenizerFast

        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(folder))
    return model.eval(), tokenizer
