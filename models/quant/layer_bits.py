"""Per-layer bit widths: `quantize.layer_bits` patterns resolved against a model's quantized layers.

Keys are fnmatch patterns on the quantized layer names (as quant_spec.json lists them, e.g.
'layers.conv_1_conv2d') or the words `first` / `last` (the first / last quantized layer in graph
order: the stem conv and the embedding layer, the usual cure for the largest drops at low bit widths). Values
are a bit width for weights and inputs, or {wbits: W, abits: A}. A key that matches no layer is an error.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from facepipe.pipeline.errors import ConfigError

from .formulas import check_bits

POSITIONS = ("first", "last")


def _bits_of(key: str, value) -> tuple[int | None, int | None]:
    if isinstance(value, int) and not isinstance(value, bool):  # a YAML on/off is not a bit width
        return check_bits(value, f"quantize.layer_bits.{key}"), check_bits(value, f"quantize.layer_bits.{key}")
    if isinstance(value, dict) and value and set(value) <= {"wbits", "abits"}:
        return (None if value.get("wbits") is None else check_bits(value["wbits"], f"quantize.layer_bits.{key}.wbits"),
                None if value.get("abits") is None else check_bits(value["abits"], f"quantize.layer_bits.{key}.abits"))
    raise ConfigError(f"quantize.layer_bits.{key}={value!r}: give a bit width (e.g. 8) or {{wbits: 8, abits: 8}}")


def resolve_layer_bits(names: list[str], spec: dict | None, wbits: int, abits: int) -> dict[str, tuple[int, int]]:
    """{layer name: (wbits, abits)} for the layers `spec` moves off the model-wide (wbits, abits); later keys
    win over earlier ones. `names`: the quantized layers in graph order."""
    out: dict[str, tuple[int, int]] = {}
    for key, value in (spec or {}).items():
        key = str(key)
        w, a = _bits_of(key, value)
        if key in POSITIONS:
            hits = names[:1] if key == "first" else names[-1:]
        else:
            hits = [n for n in names if fnmatchcase(n, key)]
        if not hits:
            shown = ", ".join(names if len(names) <= 5 else names[:4] + ["...", names[-1]])
            raise ConfigError(f"quantize.layer_bits.{key}: matches none of the model's {len(names)} quantized layers "
                              f"({shown}); use a layer name or pattern from quant_spec.json, or first / last")
        for n in hits:
            cur = out.get(n, (wbits, abits))
            out[n] = (cur[0] if w is None else w, cur[1] if a is None else a)
    return {n: b for n, b in out.items() if b != (wbits, abits)}
