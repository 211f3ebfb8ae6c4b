"""Teacher sources: each kind loads a model saved in its format and matches the PyTorch reference."""

from __future__ import annotations

import os
import pickle
import shutil
import sys

import numpy as np
import pytest
import torch
from torch import nn

from facepipe.pipeline.config import PreprocessOverride, TeacherConfig
from facepipe.pipeline.embedder import OnnxRuntimeEmbedder, Preprocess, TorchEmbedder, cosine_rows
from facepipe.pipeline.errors import BackendUnavailable, ConfigError, ModelError
from facepipe.pipeline.teachers import (TEACHER_SOURCES, guess_kind, insightface_mean_std, load_teacher,
                                        resolve_teacher)

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def reference(model, faces, mean=127.5, std=127.5):
    x = torch.from_numpy(faces.copy()).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        return model((x - mean) / std).numpy()


def assert_parity(got, ref):
    assert got.shape == ref.shape
    assert cosine_rows(got, ref).min() >= 0.9999


def export(module, path, size=112, outputs=("embedding",)):
    dyn = {"input": {0: "batch"}, **{o: {0: "batch"} for o in outputs}}
    torch.onnx.export(module, torch.zeros(2, 3, size, size), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=list(outputs), dynamic_axes=dyn)
    return path


@pytest.fixture(scope="module")
def mfn_onnx(mfn, tmp_path_factory):
    return export(mfn, tmp_path_factory.mktemp("onnx") / "mfn.onnx")


@pytest.fixture(scope="module")
def mfn_traced(mfn):
    return torch.jit.trace(mfn, torch.zeros(1, 3, 112, 112))


# --- kinds registered and guessed ---------------------------------------------------------------------
def test_all_kinds_registered():
    assert set(TEACHER_SOURCES.names()) == {"package", "checkpoint", "torchscript", "onnx", "insightface", "hf"}


def test_auto_kind(tmp_path, mfn, mfn_onnx, mfn_traced):
    torch.save(mfn.state_dict(), tmp_path / "w.pth")
    torch.jit.save(mfn_traced, str(tmp_path / "ts.pt"))
    (tmp_path / "pack").mkdir()
    shutil.copy(mfn_onnx, tmp_path / "pack" / "rec.onnx")
    assert guess_kind("sface") == "package"
    assert guess_kind("hf:minchul/cvlface_adaface_ir101_webface12m") == "hf"
    assert guess_kind(str(mfn_onnx)) == "onnx"
    assert guess_kind(str(tmp_path / "w.pth")) == "checkpoint"
    assert guess_kind("ts.pt", base_dir=tmp_path) == "torchscript"  # relative to the config's folder
    assert guess_kind(str(tmp_path / "pack")) == "insightface"
    with pytest.raises(ModelError, match="no such file"):
        guess_kind(str(tmp_path / "nope.onnx"))


# --- checkpoint ---------------------------------------------------------------------------------------
def test_checkpoint_state_dict_with_module_prefix(mfn, fake_faces, tmp_path):
    path = tmp_path / "teacher.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in mfn.state_dict().items()}, "epoch": 3}, path)
    cfg = TeacherConfig(source=str(path), arch="mobilefacenet", embedding_size=128)
    src = resolve_teacher(cfg)
    assert src.kind == "checkpoint" and src.files == [path] and src.preprocess == Preprocess()
    emb = load_teacher(cfg, threads=1)
    assert isinstance(emb, TorchEmbedder) and emb.dim == 128
    assert_parity(emb.embed(fake_faces), reference(mfn, fake_faces))


def test_checkpoint_needs_arch_and_matching_keys(mfn, tmp_path):
    state = dict(mfn.state_dict())
    path = tmp_path / "w.pt"
    torch.save(state, path)
    with pytest.raises(ConfigError, match="teacher.arch is required"):
        resolve_teacher(TeacherConfig(source=str(path), embedding_size=128))

    dropped = "output_layer.linear.weight"
    bad = {k: v for k, v in state.items() if k != dropped}
    bad["head.kernel"] = torch.zeros(3)
    torch.save(bad, path)
    with pytest.raises(ModelError) as e:
        load_teacher(TeacherConfig(source=str(path), arch="mobilefacenet", embedding_size=128))
    assert f"missing keys: {dropped}" in str(e.value) and "unexpected keys: head.kernel" in str(e.value)

    torch.save(state, path)  # 128-d weights, config says 512
    with pytest.raises(ModelError, match=r"output_layer.linear.weight \(128, 512\) in file vs \(512, 512\)"):
        load_teacher(TeacherConfig(source=str(path), arch="mobilefacenet", embedding_size=512))


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_malicious_checkpoint_refused_nothing_executed(tmp_path):
    marker = tmp_path / "pwned"
    zip_pt, legacy, legacy4 = tmp_path / "evil.pt", tmp_path / "evil_legacy.pth", tmp_path / "evil4.pth"
    torch.save({"weight": _Evil(str(marker))}, zip_pt)  # torch zip format
    for path, protocol in ((legacy, 2), (legacy4, 4)):  # bare pickles
        with open(path, "wb") as f:
            pickle.dump({"weight": _Evil(str(marker))}, f, protocol=protocol)
    for path in (zip_pt, legacy):
        with pytest.raises(ModelError, match="refusing to load .*GLOBAL posix.mkdir"):
            resolve_teacher(TeacherConfig(source=str(path), arch="mobilefacenet"))
    with pytest.raises(ModelError, match="refusing to load"):
        resolve_teacher(TeacherConfig(source=str(legacy4), arch="mobilefacenet"))
    assert not marker.exists()


def test_checkpoint_declared_preprocess_wins_over_conflicting_override(mfn, tmp_path):
    path = tmp_path / "meta.pt"
    declared = Preprocess(color="BGR")
    torch.save({"model": mfn.state_dict(), "preprocess": declared.to_dict()}, path)
    src = resolve_teacher(TeacherConfig(source=str(path), arch="mobilefacenet", embedding_size=128))
    assert src.preprocess == declared and src.declared >= {"size", "color", "mean", "std", "standardize"}
    with pytest.raises(ModelError, match="teacher.preprocess.color='RGB' conflicts"):
        resolve_teacher(TeacherConfig(source=str(path), arch="mobilefacenet", embedding_size=128,
                                      preprocess=PreprocessOverride(color="RGB")))


# --- torchscript -----------------------------------------------------------------------------------
def test_torchscript(mfn, mfn_traced, fake_faces, tmp_path):
    path = tmp_path / "teacher.pt"
    torch.jit.save(mfn_traced, str(path))
    # A TorchScript module says nothing of its input: undeclared, it is refused (no silent 112 / 127.5 guess)
    with pytest.raises(ModelError, match=r"declares no preprocessing and there is no honest guess.*"
                                         r"teacher\.facepipe\.json.*teacher\.preprocess"):
        resolve_teacher(TeacherConfig(source=str(path), embedding_size=128))
    cfg = TeacherConfig(source=str(path), embedding_size=128, preprocess={"size": 112})  # declared by config
    src = resolve_teacher(cfg)
    assert src.kind == "torchscript" and not src.declared and src.declared_by == "teacher.preprocess"
    assert_parity(load_teacher(cfg, threads=1).embed(fake_faces, batch_size=3), reference(mfn, fake_faces))

    with pytest.raises(ModelError, match="teacher teacher gives 128-d embeddings but teacher.embedding_size is 64"):
        load_teacher(TeacherConfig(source=str(path), embedding_size=64, preprocess={"size": 112}))
    (tmp_path / "teacher.facepipe.json").write_text('{"preprocess": {"size": 112}}')  # or by a sidecar
    src = resolve_teacher(TeacherConfig(source=str(path), embedding_size=128))
    assert src.declared_by == "teacher.facepipe.json" and tmp_path / "teacher.facepipe.json" in src.files

    # preprocessing declared through an extra file; an override of an undeclared field would apply
    declared = tmp_path / "declared.pt"
    torch.jit.save(mfn_traced, str(declared),
                   _extra_files={"facepipe.json": '{"preprocess": {"size": 112, "color": "RGB", '
                                                   '"mean": [0, 0, 0], "std": [1, 1, 1]}}'})
    src = resolve_teacher(TeacherConfig(source=str(declared)))
    assert src.preprocess.mean == (0.0, 0.0, 0.0) and "mean" in src.declared


# --- onnx ------------------------------------------------------------------------------------------
def test_onnx_torch_export_uses_127_5_rule(mfn, mfn_onnx, fake_faces):
    cfg = TeacherConfig(source=str(mfn_onnx), embedding_size=128)
    src = resolve_teacher(cfg)
    assert src.kind == "onnx" and src.preprocess == Preprocess() and src.declared == {"size"}
    emb = load_teacher(cfg, threads=1)
    assert isinstance(emb, OnnxRuntimeEmbedder)
    assert_parity(emb.embed(fake_faces, batch_size=5), reference(mfn, fake_faces))
    with pytest.raises(ModelError, match="teacher mfn gives 128-d embeddings but teacher.embedding_size is 512"):
        load_teacher(TeacherConfig(source=str(mfn_onnx), embedding_size=512))


def mxnet_style(src, dst):
    """Copy of an ONNX whose graph takes raw 0-255 input and normalises it in its first two nodes, named
    like mxnet conversions (_minusscalar0, _mulscalar0), as SFace and the old insightface models do."""
    import onnx
    from onnx import helper, numpy_helper

    proto = onnx.load(str(src))
    g = proto.graph
    name = g.input[0].name
    for node in g.node:
        node.input[:] = ["normed" if i == name else i for i in node.input]
    g.initializer.extend([numpy_helper.from_array(np.array(127.5, np.float32), "mx_mean"),
                          numpy_helper.from_array(np.array(1 / 127.5, np.float32), "mx_scale")])
    nodes = [helper.make_node("Sub", [name, "mx_mean"], ["centered"], name="_minusscalar0"),
             helper.make_node("Mul", ["centered", "mx_scale"], ["normed"], name="_mulscalar0"), *g.node]
    del g.node[:]
    g.node.extend(nodes)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(dst))
    return proto


def test_onnx_insightface_rule_detects_mxnet_normalisation(mfn, mfn_onnx, fake_faces, tmp_path):
    import onnx

    assert insightface_mean_std(onnx.load(str(mfn_onnx))) == (127.5, 127.5)  # torch export: no Sub/Mul names
    path = tmp_path / "mx.onnx"
    assert insightface_mean_std(mxnet_style(mfn_onnx, path)) == (0.0, 1.0)
    cfg = TeacherConfig(source=str(path), embedding_size=128)
    assert resolve_teacher(cfg).preprocess == Preprocess(mean=(0, 0, 0), std=(1, 1, 1))
    assert_parity(load_teacher(cfg, threads=1).embed(fake_faces), reference(mfn, fake_faces))


def test_onnx_override_only_where_undeclared(mfn_onnx):
    src = resolve_teacher(TeacherConfig(source=str(mfn_onnx), preprocess=PreprocessOverride(color="BGR")))
    assert src.preprocess.color == "BGR"  # not declared by a plain ONNX: the override applies
    with pytest.raises(ModelError, match="teacher.preprocess.size=96 conflicts"):
        resolve_teacher(TeacherConfig(source=str(mfn_onnx), preprocess=PreprocessOverride(size=96)))


# --- insightface pack ------------------------------------------------------------------------------
class _Det(nn.Module):  # dynamic-size input, several outputs (like det_10g)
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.c(x)
        return y[:, :1], y[:, 1:]


class _Attr(nn.Module):  # 96x96 -> 3 values (like genderage)
    def __init__(self):
        super().__init__()
        self.c, self.fc = nn.Conv2d(3, 4, 8, stride=8), nn.Linear(4 * 12 * 12, 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.c(x), 1))


def test_insightface_pack_picks_the_recognition_model(mfn, mfn_onnx, fake_faces, tmp_path):
    pack = tmp_path / "buffalo_x"
    pack.mkdir()
    export(_Det(), pack / "det_10g.onnx", size=64, outputs=("score", "bbox"))
    export(_Attr(), pack / "genderage.onnx", size=96)
    shutil.copy(mfn_onnx, pack / "w600k_mfn.onnx")
    cfg = TeacherConfig(source=str(pack), embedding_size=128)
    src = resolve_teacher(cfg)
    assert src.kind == "insightface" and src.files == [pack / "w600k_mfn.onnx"]
    assert src.name == "buffalo_x/w600k_mfn"
    assert_parity(load_teacher(cfg, threads=1).embed(fake_faces), reference(mfn, fake_faces))

    shutil.copy(mfn_onnx, pack / "second.onnx")
    with pytest.raises(ModelError, match="several recognition models"):
        resolve_teacher(cfg)
    for p in ("second.onnx", "w600k_mfn.onnx"):
        (pack / p).unlink()
    with pytest.raises(ModelError, match="none of .* is a recognition model"):
        resolve_teacher(cfg)


# --- CVLFace (hf) --------------------------------------------------------------------------------
IR18_YAML = ("input_size:\n- 3\n- 112\n- 112\ncolor_space: RGB\nname: ir18\noutput_dim: 512\nstart_from: ''\n"
             "freeze: false\nyaml_path: models/iresnet/configs/v1_ir18.yaml\n")


@pytest.fixture(scope="module")
def cvlface_snapshot(tmp_path_factory):
    """A CVLFace-style snapshot: config.json, pretrained_model/model.yaml, model.safetensors (model.net.*)."""
    from safetensors.torch import save_file

    from facepipe.models.cvlface import build_cvlface

    torch.manual_seed(1)
    model = build_cvlface({"name": "ir18", "output_dim": 512, "yaml_path": "models/iresnet/configs/v1_ir18.yaml"})
    with torch.no_grad():  # non-trivial BN statistics so that a wrong mapping would show
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    snap = tmp_path_factory.mktemp("hf") / "cvlface_adaface_ir18_test"
    (snap / "pretrained_model").mkdir(parents=True)
    (snap / "pretrained_model" / "model.yaml").write_text(IR18_YAML)
    (snap / "config.json").write_text('{"architectures": ["CVLFaceRecognitionModel"], "auto_map": '
                                      '{"AutoModel": "wrapper.CVLFaceRecognitionModel"}}')
    save_file({f"model.{k}": v.contiguous() for k, v in model.state_dict().items()}, str(snap / "model.safetensors"))
    return snap, model.eval()


def test_cvlface_local_snapshot(cvlface_snapshot, fake_faces):
    snap, model = cvlface_snapshot
    faces = fake_faces[:4]
    cfg = TeacherConfig(source=str(snap), embedding_size=512)
    src = resolve_teacher(cfg)
    assert src.kind == "hf" and [p.name for p in src.files] == ["config.json", "model.yaml", "model.safetensors"]
    assert src.preprocess == Preprocess() and src.declared == {"size", "color"}
    emb = load_teacher(cfg, threads=1)
    assert emb.dim == 512 and not emb.normalized
    assert_parity(emb.embed(faces), reference(model, faces))
    assert list(emb.module.state_dict())[0] == "net.input_layer.0.weight"


def test_cvlface_bgr_flag_and_unsupported_models():
    from facepipe.models.cvlface import build_cvlface
    from facepipe.models.iresnet import IResNet

    m = build_cvlface({"name": "ir18", "color_space": "BGR", "yaml_path": "models/iresnet/configs/v1_ir18.yaml"})
    assert m.input_color_flip
    ins = build_cvlface({"name": "ir18", "yaml_path": "models/iresnet_insightface/configs/v1_ir18.yaml"})
    assert isinstance(ins.net, IResNet) and "net.layer1.0.conv1.weight" in ins.state_dict()
    with pytest.raises(ValueError, match="vit_kprpe"):
        build_cvlface({"name": "base", "yaml_path": "models/vit_kprpe/configs/v1_base_kprpe_splithead_unshared.yaml"})


def test_cvlface_snapshot_missing_files(tmp_path):
    (tmp_path / "pretrained_model").mkdir()
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pretrained_model" / "model.yaml").write_text(IR18_YAML)
    with pytest.raises(ModelError, match="missing \\['model.safetensors'\\]"):
        resolve_teacher(TeacherConfig(source=str(tmp_path), kind="hf"))


def test_hf_repo_from_offline_cache(cvlface_snapshot, tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub")
    import huggingface_hub.constants as hf_constants

    snap, _ = cvlface_snapshot
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = tmp_path / "hub" / "models--minchul--cvlface_adaface_ir18_test"
    shutil.copytree(snap, repo_dir / "snapshots" / revision)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(revision)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    src = resolve_teacher(TeacherConfig(source="hf:minchul/cvlface_adaface_ir18_test", embedding_size=512))
    assert src.kind == "hf" and src.name == "minchul/cvlface_adaface_ir18_test"
    assert src.files[2] == repo_dir / "snapshots" / revision / "model.safetensors"
    with pytest.raises(BackendUnavailable, match="HF_HUB_OFFLINE=1 and it is not in the local cache"):
        resolve_teacher(TeacherConfig(source="hf:minchul/not_downloaded"))


def test_hf_without_huggingface_hub_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails as if not installed
    with pytest.raises(BackendUnavailable, match="needs huggingface_hub"):
        resolve_teacher(TeacherConfig(source="hf:minchul/cvlface_adaface_ir101_webface12m"))
    with pytest.raises(ConfigError, match="expected hf:<org>/<repo>"):
        resolve_teacher(TeacherConfig(source="hf:no-slash"))


# --- the real packaged teacher ---------------------------------------------------------------------
# sface_path: tests/conftest.py


def test_sface_real_fixed_batch_1(sface_path, fake_faces):
    cfg = TeacherConfig(source="sface", embedding_size=128)
    src = resolve_teacher(cfg)
    assert src.kind == "package" and src.files == [sface_path]
    assert src.preprocess == Preprocess(mean=(0, 0, 0), std=(1, 1, 1))
    emb = load_teacher(cfg, threads=1)
    assert isinstance(emb, OnnxRuntimeEmbedder) and emb.fixed_batch == 1 and emb.dim == 128
    out = emb.embed(fake_faces, batch_size=3)
    assert out.shape == (8, 128) and out.dtype == np.float32 and np.isfinite(out).all()
    # per-image results do not depend on batching, and the rows differ between faces
    np.testing.assert_allclose(emb.embed(fake_faces[2:3]), out[2:3], rtol=1e-5, atol=1e-5)
    assert cosine_rows(out[:4], out[4:]).max() < 0.9999
    # the graph normalises itself (Sub/Mul first): the insightface rule agrees with the packaged knowledge
    import onnx

    assert insightface_mean_std(onnx.load(str(sface_path))) == (0.0, 1.0)


def test_sface_dim_mismatch_message(sface_path):
    with pytest.raises(ModelError) as e:
        load_teacher(TeacherConfig(source="sface", embedding_size=512))
    assert "teacher sface gives 128-d embeddings but teacher.embedding_size is 512" in str(e.value)
    with pytest.raises(ModelError, match="conflicts with packaged teacher sface"):
        resolve_teacher(TeacherConfig(source="sface", preprocess=PreprocessOverride(mean=[127.5] * 3)))


# --- CLI -------------------------------------------------------------------------------------------
def _app():
    import typer

    from facepipe.pipeline.commands import teacher as teacher_cmds

    app = typer.Typer()
    teacher_cmds.register(app)
    return app


def test_cli_inspect_onnx_and_checkpoint(mfn, mfn_onnx, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from facepipe.pipeline.io import sha256_file

    monkeypatch.chdir(tmp_path)  # no pipeline.yaml here: defaults + --set
    runner = CliRunner()
    r = runner.invoke(_app(), ["teacher", "inspect",
                               "--set", f"teacher.source={mfn_onnx}", "--set", "teacher.embedding_size=128",
                               "--json", str(tmp_path / "report.json")])
    assert r.exit_code == 0, r.output
    assert f"sha256 {sha256_file(mfn_onnx)}" in r.output
    assert "kind:          onnx" in r.output and "output dim:    128\n" in r.output
    assert "input:         input ['batch', 3, 112, 112] tensor(float)" in r.output
    assert "normalised:    no" in r.output and "initializer elements" in r.output
    assert (tmp_path / "report.json").is_file()

    torch.save(mfn.state_dict(), tmp_path / "w.pth")
    cfg = tmp_path / "pipeline.yaml"
    cfg.write_text("teacher:\n  source: w.pth\n  arch: mobilefacenet\n  embedding_size: 512\n")
    r = runner.invoke(_app(), ["teacher", "inspect", "-c", str(cfg)])
    assert isinstance(r.exception, ModelError) and "shape mismatch" in str(r.exception)
    r = runner.invoke(_app(), ["teacher", "inspect", "-c", str(cfg), "--set", "teacher.embedding_size=128"])
    assert r.exit_code == 0, r.output
    n = sum(p.numel() for p in mfn.parameters())
    assert f"parameters:    {n:,} (MobileFaceNet)" in r.output


def test_cli_fetch(sface_path):
    from typer.testing import CliRunner

    from facepipe.pipeline.assets import ASSETS

    r = CliRunner().invoke(_app(), ["teacher", "fetch", "sface"])
    assert r.exit_code == 0, r.output
    assert str(sface_path) in r.output and f"sha256: {ASSETS.get('sface').sha256}" in r.output


def test_checkpoint_declaring_its_arch_needs_no_config(mfn, fake_faces, tmp_path):
    """A facepipe student.pt carries arch and embedding size; a conflicting teacher.arch is refused."""
    path = tmp_path / "student.pt"
    torch.save({"kind": "facepipe.student", "state_dict": mfn.state_dict(), "arch": "mobilefacenet",
                "embedding_size": 128}, path)
    emb = load_teacher(TeacherConfig(source=str(path), embedding_size=128), threads=1)
    assert_parity(emb.embed(fake_faces), reference(mfn, fake_faces))
    with pytest.raises(ModelError, match="declares arch 'mobilefacenet'"):
        resolve_teacher(TeacherConfig(source=str(path), arch="iresnet18", embedding_size=128))
    with pytest.raises(ModelError, match="gives 128-d embeddings but teacher.embedding_size is 512"):
        load_teacher(TeacherConfig(source=str(path), embedding_size=512))


def test_a_model_pack_symlink_out_of_the_pack_is_refused(tmp_path):
    """Hostile input 10: a model-pack folder with a symlink to a file outside it was followed without comment."""
    from facepipe.pipeline.config import TeacherConfig
    from facepipe.pipeline.errors import ModelError

    outside = tmp_path / "elsewhere.onnx"
    outside.write_bytes(b"not read")
    pack = tmp_path / "pack"
    pack.mkdir()
    (pack / "w600k_r50.onnx").symlink_to(outside)
    with pytest.raises(ModelError, match=r"w600k_r50\.onnx is a link to .*elsewhere\.onnx, outside the model pack"):
        resolve_teacher(TeacherConfig(source=str(pack), kind="insightface"))


def test_a_fake_torchscript_archive_gets_a_reason(tmp_path):
    """Hostile input 9 (last part): a zip that looks like TorchScript but is not gave an error with an empty
    reason; every foreign-library error now names at least its type (errors.first_line)."""
    import zipfile

    from facepipe.pipeline.config import TeacherConfig
    from facepipe.pipeline.errors import ModelError, first_line

    fake = tmp_path / "fake.pt"
    with zipfile.ZipFile(fake, "w") as zf:
        zf.writestr("fake/code/__torch__.py", "")
        zf.writestr("fake/constants.pkl", b"")
    (tmp_path / "fake.facepipe.json").write_text('{"preprocess": {"size": 112}}')
    src = resolve_teacher(TeacherConfig(source=str(fake), kind="torchscript", embedding_size=8))
    with pytest.raises(ModelError, match=r"torch\.jit\.load cannot read .*fake\.pt: \S+") as e:
        src.load()
    assert not str(e.value).rstrip().endswith(":")
    assert first_line(RuntimeError("")) == "RuntimeError" and first_line(ValueError("\n  bad\nmore")) == "bad"
