"""Compression of host copies: fewer bytes over PCIe for a dequantisation cost.

A scheme names the dtype of the host copy moved for a demand miss and for a
prefetch; the cost model prices the copy by that dtype's bytes and adds a
dequantisation on the GPU whenever it differs from the GPU dtype. The accuracy
cost of low precision is not simulated; the executor measures it.
"""

from __future__ import annotations

from pregate.simulator.policies.registry import COMPRESSION


class Compression:
    name = "base"

    def demand_dtype(self, gpu_dtype: str) -> str:
        return gpu_dtype

    def prefetch_dtype(self, gpu_dtype: str) -> str:
        return gpu_dtype


@COMPRESSION.register("none")
class NoCompression(Compression):
    """Host copies in the GPU dtype."""


@COMPRESSION.register("int8")
class Int8(Compression):
    """int8 host copies (weights plus scales), dequantised on the GPU after the copy."""

    def demand_dtype(self, gpu_dtype):
        return "int8"

    def prefetch_dtype(self, gpu_dtype):
        return "int8"


@COMPRESSION.register("int4")
class Int4(Compression):
    """int4 host copies (packed, plus scales), dequantised on the GPU after the copy."""

    def demand_dtype(self, gpu_dtype):
        return "int4"

    def prefetch_dtype(self, gpu_dtype):
        return "int4"


@COMPRESSION.register("low-precision-on-miss")
class LowPrecisionOnMiss(Compression):
    """HOBBIT: a demand miss fetches the int4 copy (fast, less accurate); prefetches,
    which have time, fetch full precision."""

    def demand_dtype(self, gpu_dtype):
        return "int4"
