"""The cause of OpenVINO int8 missing its fake-quant reference on x86 CPUs without VNNI, and the fix.

Without VNNI, int8 convolutions add pairs of u8 x s8 products in saturating 16-bit sums (vpmaddubsw). One QDQ
conv with activations at code 255 and weights at code 127 shows it exactly: each pair sum 64770 clips to 32767,
so the output is 32767 / 64770 = 0.506 of the true value; with 7-bit weights (code 63) it is exact. A CPU
without VNNI is emulated on any AVX2 machine by oneDNN's ONEDNN_MAX_CPU_ISA=AVX2, which OpenVINO's CPU plugin
honours (a machine without VNNI runs the same kernels natively).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from facepipe.models.quant import safe_weight_bits, saturates_without_vnni
from facepipe.models.quant.overflow import pair_sum_max
from facepipe.pipeline.device import cpu_info, parse_isa

ZEN3 = parse_isa("avx avx2 fma f16c".split())
ZEN5 = parse_isa("avx avx2 fma avx512f avx512_vnni avx512_bf16".split())

PROBE = r"""
import json, sys
import numpy as np, onnx, openvino as ov
from onnx import TensorProto, helper, numpy_helper

def qdq_conv(code, cin=64):
    inits = [numpy_helper.from_array(np.array(1 / 255, np.float32), "xs"),
             numpy_helper.from_array(np.array(0, np.uint8), "xz"),
             numpy_helper.from_array(np.full((8, cin, 3, 3), code, np.int8), "wq"),
             numpy_helper.from_array(np.full(8, 0.01, np.float32), "ws"),
             numpy_helper.from_array(np.zeros(8, np.int8), "wz")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0),
             helper.make_node("Conv", ["xd", "wd"], ["y"], pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

core = ov.Core()
out = {}
for code in (127, 63):
    compiled = core.compile_model(core.read_model(qdq_conv(code).SerializeToString()), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "f32"})
    y = compiled(np.ones((1, 64, 8, 8), np.float32))[0]
    out[code] = float(y[0, 0, 4, 4] / (64 * 9 * code * 0.01))  # centre pixel vs the exact sum
print(json.dumps(out))
"""


def _ratios(max_isa: str | None) -> dict[int, float]:
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_MAX_CPU_ISA"}
    if max_isa:
        env["ONEDNN_MAX_CPU_ISA"] = max_isa
    res = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return {int(k): v for k, v in json.loads(res.stdout.strip().splitlines()[-1]).items()}


def test_bit_widths_that_can_saturate():
    assert pair_sum_max(8, 8) == 65280 and saturates_without_vnni(8, 8)
    assert not saturates_without_vnni(7, 8) and not saturates_without_vnni(8, 7)
    assert not saturates_without_vnni(6, 6)
    assert [safe_weight_bits(8, 8), safe_weight_bits(8, 6), safe_weight_bits(6, 6)] == [7, 8, 6]


@pytest.mark.skipif(not cpu_info()["isa"]["avx2"], reason="needs an x86 CPU with AVX2 (the int8 kernels measured)")
def test_openvino_int8_saturates_full_range_weights_without_vnni():
    pytest.importorskip("openvino")
    no_vnni = _ratios("AVX2")
    assert no_vnni[127] == pytest.approx(32767 / 64770, abs=1e-3), no_vnni  # every pair sum clipped
    assert no_vnni[63] == pytest.approx(1.0, abs=1e-6), no_vnni  # 7-bit weights: exact
    if cpu_info()["isa"]["vnni"]:  # this machine's own VNNI kernels are exact at full range
        native = _ratios(None)
        assert native[127] == pytest.approx(1.0, abs=1e-6) and native[63] == pytest.approx(1.0, abs=1e-6), native


@pytest.mark.parametrize("isa, setting, wbits, abits, expected_bits, fix", [
    (ZEN3, "auto", 8, 8, 7, True),
    (ZEN5, "auto", 8, 8, 8, False),
    (ZEN5, "true", 8, 8, 7, True),
    (ZEN3, "false", 8, 8, 8, False),
    (ZEN3, "auto", 6, 6, 6, False),
])
def test_weight_range_follows_the_cpu_and_the_setting(isa, setting, wbits, abits, expected_bits, fix, monkeypatch):
    import platform

    from facepipe.pipeline.config import load_config
    from facepipe.pipeline.quant.job import weight_range
    from facepipe.pipeline.quant.plan import QuantPlan

    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    cfg = load_config(None, [f"quantize.overflow_fix={setting}", f"quantize.wbits={wbits}",
                             f"quantize.abits={abits}"])
    got = weight_range(QuantPlan.from_config(cfg), isa)
    assert (got["weight_bits"], got["overflow_fix"]) == (expected_bits, fix), got
    assert got["cpu_isa"] == isa["summary"] and got["reason"]


def test_parity_hint_names_the_cause_only_where_it_applies(tmp_path, monkeypatch):
    import platform

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from facepipe.export.parity import overflow_hint

    monkeypatch.setattr(platform, "machine", lambda: "x86_64")

    def write(code: int):
        w = numpy_helper.from_array(np.full((4, 4, 1, 1), code, np.int8), "w")
        g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], [w])
        path = tmp_path / f"w{code}.onnx"
        onnx.save(helper.make_model(g), str(path))
        return path

    full, seven = write(-128), write(63)
    hint = overflow_hint(full, ZEN3)
    assert hint and "no VNNI" in hint and "quantize.overflow_fix=true" in hint and "128" in hint
    assert overflow_hint(seven, ZEN3) is None  # 7-bit weights cannot saturate
    assert overflow_hint(full, ZEN5) is None  # VNNI accumulates in 32 bits
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # the kernels of a VNNI CPU capped below VNNI
    assert "oneDNN capped at AVX2" in overflow_hint(full, ZEN5)
