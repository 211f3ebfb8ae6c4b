"""int8 overflow on CPUs without VNNI, and the weight range that avoids it.

x86 int8 convolutions without VNNI (AVX2, AVX-512 without VNNI) multiply u8 activations by s8 weights with
vpmaddubsw, which adds each pair of products into a *saturating* 16-bit sum before widening. Two full-range
products reach 2 * 255 * 128 = 65280 > 32767, so a model whose activations use all 256 levels and whose weights
use all of [-128, 127] silently clips. VNNI (vpdpbusd) accumulates in 32 bits and is exact. Keeping every pair
sum within int16 needs 2 * (2**abits - 1) * 2**(wbits - 1) <= 32767: at 8-bit activations, 7-bit weights
(NNCF's overflow_fix and OpenVINO's guidance do the same).

Measured here (a w8a8 MobileFaceNet, OpenVINO 2026.4 int8 vs its fake-quant reference, ONEDNN_MAX_CPU_ISA
limiting one AVX-512 + VNNI CPU): 8-bit weights cos min 0.906 with VNNI, 0.830 at AVX2; 7-bit weights 0.904
at both, bit-identical outputs.
"""

from __future__ import annotations

INT16_MAX = 32767


def pair_sum_max(wbits: int, abits: int) -> int:
    """The largest |sum| of two u8 x s8 products at these bit widths (unsigned activations, signed weights)."""
    return 2 * (2 ** abits - 1) * 2 ** (wbits - 1)


def saturates_without_vnni(wbits: int, abits: int) -> bool:
    """True when full-range weights and activations can overflow vpmaddubsw's 16-bit pair sums."""
    return pair_sum_max(wbits, abits) > INT16_MAX


def safe_weight_bits(wbits: int, abits: int) -> int:
    """The widest weight range <= wbits whose products cannot saturate at `abits` activations (>= 2)."""
    bits = wbits
    while bits > 2 and saturates_without_vnni(bits, abits):
        bits -= 1
    return bits
