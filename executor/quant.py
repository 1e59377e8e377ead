"""Group-quantised host copies of experts: int8 and int4, groups of 64 weights, fp16 scales.

An expert's weights are quantised as one flat vector (its tensors laid end to
end, see :class:`pregate.executor.store.ExpertSpec`). Each group of 64 weights
gets a symmetric scale ``absmax / qmax`` stored as float16; the weights become
``round(w / scale)`` in [-127, 127] (int8) or [-7, 7] (int4, two to a byte,
offset by 8). The host copy is one byte buffer, ``[codes | scales]``, so one
copy moves an expert; the device dequantises it into a slot of the model's
dtype. Sizes match the trace metadata's ``bytes_per_expert`` for int8/int4.
"""

from __future__ import annotations

import torch

GROUP = 64
FORMS = ("int8", "int4")
QMAX = {"int8": 127, "int4": 7}


def packed_nbytes(numel: int, form: str) -> int:
    """Bytes of the host copy of ``numel`` weights (``numel`` a multiple of GROUP)."""
    scales = (numel // GROUP) * 2
    return (numel if form == "int8" else numel // 2) + scales


def quantize(flat: torch.Tensor, form: str) -> torch.Tensor:
    """A uint8 buffer ``[codes | fp16 scales]`` for a flat float tensor of GROUP-multiple length."""
    if form not in QMAX:
        raise ValueError(f"unknown quantised form '{form}'")
    numel = flat.numel()
    assert numel % GROUP == 0, numel
    groups = flat.detach().float().reshape(-1, GROUP)
    qmax = QMAX[form]
    scale = (groups.abs().amax(dim=1) / qmax).clamp(min=2.0**-24).to(torch.float16)
    q = torch.round(groups / scale.float()[:, None]).clamp_(-qmax, qmax).to(torch.int16)
    if form == "int8":
        codes = q.to(torch.int8).reshape(-1).view(torch.uint8)
    else:
        u = (q + 8).to(torch.uint8).reshape(-1, 2)
        codes = (u[:, 0] | (u[:, 1] << 4)).contiguous()
    return torch.cat([codes, scale.view(torch.uint8)])


def dequantize_into(buf: torch.Tensor, out: torch.Tensor, form: str) -> None:
    """Write the weights of ``buf`` (from :func:`quantize`) into the flat tensor ``out``."""
    numel = out.numel()
    n_codes = numel if form == "int8" else numel // 2
    codes = buf[:n_codes]
    scale = buf[n_codes : n_codes + (numel // GROUP) * 2].view(torch.float16).to(out.dtype)[:, None]
    if form == "int8":
        q = codes.view(torch.int8).reshape(-1, GROUP).to(out.dtype)
    else:
        q = torch.stack((codes & 15, codes >> 4), dim=1).reshape(-1, GROUP).to(out.dtype) - 8
    torch.mul(q, scale, out=out.view(-1, GROUP))
