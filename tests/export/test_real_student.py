"""The real distilled student on real LFW faces: fp32 ONNX and OpenVINO through the exporter, gated at
cosine >= 0.9999 against PyTorch (slow: loads and aligns LFW)."""

from __future__ import annotations

import pytest

from facepipe.export.exporter import Exporter, ExportPlan
from facepipe.export.parity import parity_faces
from facepipe.pipeline.config import load_config

pytestmark = pytest.mark.slow


def test_real_student_fp32_parity_on_lfw(lfw_root, distilled_student, tmp_path):
    pytest.importorskip("openvino")
    cfg = load_config(None, [f"data.root={lfw_root.parent}", "data.benchmarks=[lfw]"])
    faces, source = parity_faces(cfg, 64)
    assert source.startswith("real: first 64 aligned faces of lfw") and faces.shape == (64, 112, 112, 3)
    report = Exporter(ExportPlan(formats=["torch", "onnx", "openvino"], out_dir=tmp_path, student=distilled_student)
                      ).run(faces, source)
    for key in ("onnx", "openvino"):
        rec = report["formats"][key]
        assert rec["status"] == "ok", rec.get("error")
        assert rec["parity"]["cos_min"] >= 0.9999 and rec["parity"]["max_abs"] < 1e-3
        print(key, rec["parity"])
