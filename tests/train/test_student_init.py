"""distill.student.init: a pretrained MobileFaceNet (checkpoint, state dict or TorchScript) is where the
student starts; a file of another architecture or size, or an ONNX whose weights were folded, is refused
naming what to give instead; the file's content is an input of the distill stage."""

from __future__ import annotations

import pytest
import torch

from facepipe.models.registry import build_model
from facepipe.pipeline.config import load_config
from facepipe.pipeline.errors import ConfigError, ModelError
from facepipe.pipeline.embedder import STUDENT_PREPROCESS
from facepipe.pipeline.train.init import init_student


def _same(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def pretrained():
    torch.manual_seed(1)
    m = build_model("mobilefacenet", embedding_size=128).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.01)  # not the fresh initialisation a new student gets
    return m


def test_checkpoint_state_dict_and_torchscript_start_the_student(pretrained, tmp_path):
    torch.save({"state_dict": pretrained.state_dict(), "arch": "mobilefacenet", "embedding_size": 128},
               tmp_path / "student.pt")
    torch.save({f"module.{k}": v for k, v in pretrained.state_dict().items()}, tmp_path / "plain.pth")
    torch.jit.save(torch.jit.trace(pretrained, torch.zeros(1, 3, 112, 112)), str(tmp_path / "mfn.ts"))
    for name, fmt in (("student.pt", "checkpoint"), ("plain.pth", "checkpoint"), ("mfn.ts", "torchscript")):
        torch.manual_seed(0)
        student = build_model("mobilefacenet", embedding_size=128)
        assert not _same(student, pretrained)
        info = init_student(student, tmp_path / name, "mobilefacenet", 128)
        assert info["format"] == fmt and _same(student, pretrained), name


def test_wrong_architecture_size_or_folded_onnx_is_refused(pretrained, tmp_path):
    torch.save({"state_dict": pretrained.state_dict(), "arch": "mobilefacenet"}, tmp_path / "student.pt")
    with pytest.raises(ConfigError, match="holds a 'mobilefacenet' but distill.student.arch is 'iresnet18'"):
        init_student(build_model("iresnet18", embedding_size=128), tmp_path / "student.pt", "iresnet18", 128)
    with pytest.raises(ModelError, match="shape mismatch"):
        init_student(build_model("mobilefacenet", embedding_size=64), tmp_path / "student.pt", "mobilefacenet", 64)
    from facepipe.export.onnx import export_onnx  # facepipe's own exporter folds BN: names are gone

    onnx_path = tmp_path / "mfn.onnx"
    export_onnx(pretrained, onnx_path, STUDENT_PREPROCESS, 128, "test")
    with pytest.raises(ModelError, match="does not keep the parameter names"):
        init_student(build_model("mobilefacenet", embedding_size=128), onnx_path, "mobilefacenet", 128)
    with pytest.raises(ConfigError, match="not found"):
        init_student(build_model("mobilefacenet", embedding_size=128), tmp_path / "nope.pt", "mobilefacenet", 128)


def test_the_init_file_is_a_distill_input(tmp_path):
    from facepipe.stages.distill import external_inputs

    (tmp_path / "pre.pt").write_bytes(b"x")
    cfg = load_config(None, ["data.benchmarks=[]", "distill.student.init=pre.pt"])
    cfg = cfg.model_copy(update={"base_dir": tmp_path})
    assert cfg.student_init_path() == tmp_path / "pre.pt"
    assert external_inputs(cfg)["distill.student.init"] == tmp_path / "pre.pt"
