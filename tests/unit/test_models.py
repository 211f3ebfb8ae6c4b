"""Architectures: exact parameter counts, shapes, checkpoint-compatible names, registry and `models` CLI."""

from __future__ import annotations

import json

import pytest
import torch
import typer
from typer.testing import CliRunner

from facepipe.models.iresnet import iresnet18
from facepipe.models.mobilefacenet import Bottleneck, MobileFaceNet
from facepipe.models.registry import MODELS, build_model, list_models
from facepipe.pipeline.commands.models import register
from facepipe.pipeline.errors import FacepipeError, ModelError

torch.set_num_threads(1)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("emb, expected", [(512, 1_199_488), (128, 1_002_880)])
def test_mobilefacenet_parameter_count(emb, expected):
    assert n_params(MobileFaceNet(emb)) == expected


@pytest.mark.parametrize("emb", [512, 128])
def test_mobilefacenet_forward_shape(emb):
    model = MobileFaceNet(emb).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 112, 112))
    assert out.shape == (2, emb)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_mobilefacenet_trains_one_step():
    model = MobileFaceNet(64).train()
    out = model(torch.randn(4, 3, 112, 112))
    out.pow(2).mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads)
    assert model.conv1.conv.weight.grad.abs().sum() > 0


def test_mobilefacenet_names_match_adadistill_checkpoints():
    keys = set(MobileFaceNet().state_dict())
    for key in ("conv1.conv.weight", "conv2_dw.prelu.weight", "conv_23.conv_dw.conv.weight",
                "conv_3.model.3.project.bn.running_var", "conv_4.model.5.conv.prelu.weight",
                "conv_5.model.1.project.conv.weight", "conv_6_sep.bn.weight", "output_layer.conv_6_dw.conv.weight",
                "output_layer.linear.weight", "output_layer.bn.running_mean"):
        assert key in keys, key
    # BatchNorm1d(affine=False) and the bias-free linear have no extra parameters.
    assert "output_layer.bn.weight" not in keys and "output_layer.linear.bias" not in keys


def test_mobilefacenet_state_dict_round_trip():
    a, b = MobileFaceNet(128).eval(), MobileFaceNet(128).eval()
    x = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        assert not torch.allclose(a(x), b(x))
        b.load_state_dict(a.state_dict(), strict=True)
        assert torch.equal(a(x), b(x))


def test_residual_bottleneck_needs_matching_shapes():
    with pytest.raises(ValueError):
        Bottleneck(64, 128, expand=256, residual=True)
    block = Bottleneck(8, 8, expand=16, residual=True).eval()
    for p in block.project.bn.parameters():
        torch.nn.init.zeros_(p)  # projection branch outputs 0 -> the block is the identity
    x = torch.randn(1, 8, 5, 5)
    with torch.no_grad():
        assert torch.allclose(block(x), x)


@pytest.mark.parametrize("arch, expected", [("iresnet18", 24_025_600), ("iresnet34", 34_139_328),
                                            ("iresnet50", 43_590_848), ("iresnet100", 65_156_160)])
def test_iresnet_parameter_count(arch, expected):
    assert n_params(build_model(arch)) == expected


@pytest.mark.parametrize("emb", [512, 128])
def test_iresnet18_forward_shape(emb):
    model = iresnet18(embedding_size=emb).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 112, 112))
    assert out.shape == (2, emb)
    assert torch.isfinite(out).all()


def test_iresnet_names_match_insightface():
    model = iresnet18()
    keys = set(model.state_dict())
    for key in ("conv1.weight", "bn1.running_mean", "prelu.weight", "layer1.0.bn1.weight", "layer1.0.conv1.weight",
                "layer1.0.downsample.0.weight", "layer1.0.downsample.1.running_var", "layer4.1.bn3.bias",
                "layer4.1.prelu.weight", "bn2.weight", "fc.weight", "fc.bias", "features.weight",
                "features.running_var"):
        assert key in keys, key
    assert model.fc.in_features == 512 * 7 * 7
    assert model.features.weight.requires_grad is False
    assert "layer1.1.downsample.0.weight" not in keys  # only the first block of a stage projects


def test_registry_builds_every_architecture_name():
    assert list_models() == ["mobilefacenet", "iresnet18", "iresnet34", "iresnet50", "iresnet100", "onnx_graph"]
    assert set(MODELS) == set(list_models())
    with pytest.raises(ModelError, match="'onnx_graph' is an imported ONNX graph and needs its spec"):
        build_model("onnx_graph")  # built from an .onnx (models/onnx_graph.py), not by name
    assert build_model("mobilefacenet", embedding_size=32).output_layer.linear.out_features == 32
    assert build_model("iresnet18", embedding_size=64, dropout=0.2).dropout.p == 0.2


def test_registry_unknown_and_bad_embedding():
    with pytest.raises(ModelError, match="did you mean 'iresnet50'"):
        build_model("iresnet05")
    with pytest.raises(ModelError, match="embedding size"):
        build_model("mobilefacenet", embedding_size=0)


def _cli() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def test_cli_models_info(tmp_path):
    out = tmp_path / "info.json"
    res = CliRunner().invoke(_cli(), ["models", "info", "mobilefacenet", "--embedding-size", "128", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "1,002,880" in res.output and "int6" in res.output
    data = json.loads(out.read_text())
    assert data["architecture"] == "mobilefacenet" and data["embedding_size"] == 128
    assert data["params"] == 1_002_880
    assert data["footprint"]["fp32"]["bytes"] == 4 * 1_002_880
    assert abs(data["macs"] - 221.2e6) / 221.2e6 < 0.01


def test_cli_models_info_unknown_arch():
    res = CliRunner().invoke(_cli(), ["models", "info", "mobilefacenett"])
    assert res.exit_code != 0
    assert isinstance(res.exception, FacepipeError)
    assert "did you mean 'mobilefacenet'" in str(res.exception)


def test_cli_models_info_bad_input_size():
    res = CliRunner().invoke(_cli(), ["models", "info", "mobilefacenet", "--input-size", "64"])
    assert isinstance(res.exception, FacepipeError)
    assert "--input-size 64" in str(res.exception)


def test_cli_models_list(monkeypatch):
    # Two architectures keep it cheap; every name's build and count is covered above.
    monkeypatch.setattr("facepipe.models.registry.list_models", lambda: ["mobilefacenet", "iresnet18"])
    res = CliRunner().invoke(_cli(), ["models", "list"], terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "mobilefacenet" in res.output and "1,199,488" in res.output and "221.16M" in res.output
    assert "iresnet18" in res.output and "24,025,600" in res.output and "2.61G" in res.output
    assert "iresnet100" not in res.output
