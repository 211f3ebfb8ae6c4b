"""Checkpoint save / load, quant_spec.json, and the bit-packed file (codes, size, bit-exact rebuild)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from facepipe.models.quant import prepare_quantized
from facepipe.pipeline.quant.storage import (
    load_packed,
    load_quantized,
    read_packed,
    save_quantized,
    write_packed,
)
from facepipe.pipeline.quant.storage import pack_codes, unpack_codes
from facepipe.models.registry import build_model

from quant_nets import one_thread  # noqa: F401 (autouse fixture)
from facepipe.pipeline.errors import ModelError


def _quantized(wbits, abits, **kw):
    torch.manual_seed(0)
    q = prepare_quantized(build_model("mobilefacenet", embedding_size=128).eval(), wbits, abits, **kw)
    q.calibrate([torch.randn(1, 3, 112, 112)])
    q.freeze_activations()
    return q.eval()


@pytest.fixture(scope="module")
def q6():
    return _quantized(6, 6)


@pytest.fixture(scope="module")
def x():
    return torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("bits", range(2, 9))
def test_pack_unpack_round_trip(bits):
    rng = np.random.default_rng(bits)
    codes = rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), size=1001)
    data = pack_codes(codes, bits)
    assert len(data) == math.ceil(1001 * bits / 8)
    assert np.array_equal(unpack_codes(data, bits, 1001), codes)


def test_six_bits_pack_four_codes_in_three_bytes():
    assert len(pack_codes(np.array([-32, 31, 0, -1]), 6)) == 3
    with pytest.raises(ValueError, match="outside the 6-bit range"):
        pack_codes(np.array([32]), 6)


def test_packed_6bit_round_trips_codes_and_outputs_exactly(q6, x, tmp_path):
    path = write_packed(tmp_path / "m.fpq", q6)
    packed = read_packed(path)
    assert packed["arch"] == "mobilefacenet" and packed["settings"]["wbits"] == 6
    codes = q6.weight_codes()
    assert set(packed["layers"]) == set(codes)
    for name, c in codes.items():
        assert np.array_equal(packed["layers"][name]["codes"], c.numpy()), name
    rebuilt = load_packed(path)
    assert rebuilt.weight_codes().keys() == codes.keys()
    assert all(torch.equal(rebuilt.weight_codes()[n], c) for n, c in codes.items())
    with torch.no_grad():
        assert torch.equal(rebuilt(x), q6(x))


def test_packed_size_reflects_the_bits(q6, tmp_path):
    n_weights = sum(layer.weight.numel() for layer in q6.quant_layers().values())
    n_params = sum(p.numel() for p in build_model("mobilefacenet", embedding_size=128).parameters())
    size = write_packed(tmp_path / "m6.fpq", q6).stat().st_size
    code_bytes = sum(math.ceil(layer.weight.numel() * 6 / 8) for layer in q6.quant_layers().values())
    assert code_bytes / n_weights == pytest.approx(0.75, abs=1e-3)
    # besides the codes: float32 bias + scale per output channel, PReLU slopes, a JSON header
    channels = sum(layer.weight.shape[0] for layer in q6.quant_layers().values())
    slopes = sum(p.numel() for n, p in q6.named_parameters() if "prelu" in n)
    side = 4 * (2 * channels + slopes)
    assert code_bytes + side < size < code_bytes + side + 32_000
    assert size < 0.9 * n_params
    size8 = write_packed(tmp_path / "m8.fpq", _quantized(8, 8)).stat().st_size
    assert size8 - size == pytest.approx(n_weights * 2 / 8, rel=0.01)


def test_asymmetric_4bit_weights_round_trip(x, tmp_path):
    q = _quantized(4, 8, weight_symmetric=False)
    assert any(z != 0 for z in q.spec()["layers"][0]["weight"]["zero_point"])
    rebuilt = load_packed(write_packed(tmp_path / "a.fpq", q))
    with torch.no_grad():
        assert torch.equal(rebuilt(x[:1]), q(x[:1]))


def test_checkpoint_round_trip_with_spec(q6, x, tmp_path):
    path = save_quantized(tmp_path / "student_q.pt", q6, {"method": "ptq", "calibration": {"batches": 1}})
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "facepipe.quantized/1" and raw["arch"] == "mobilefacenet"
    assert raw["embedding_size"] == 128 and raw["preprocess"]["size"] == 112
    assert raw["settings"]["bn"] == "folded"
    spec = json.loads((tmp_path / "quant_spec.json").read_text())
    assert spec["settings"]["wbits"] == 6 and len(spec["layers"]) == 50
    loaded, meta = load_quantized(path)
    assert meta == {"method": "ptq", "calibration": {"batches": 1}}
    assert not loaded.training and all(bool(a.frozen) for a in loaded.act_quantizers())
    with torch.no_grad():
        assert torch.equal(loaded(x), q6(x))


def test_wrong_files_are_model_errors(q6, tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"format": 1, "kind": "facepipe.student"}, other)
    with pytest.raises(ModelError, match="not a quantized facepipe model"):
        load_quantized(other)
    with pytest.raises(ModelError, match="not found"):
        load_quantized(tmp_path / "missing.pt")
    with pytest.raises(ModelError, match="bad magic"):
        read_packed(other)
    path = save_quantized(tmp_path / "q.pt", q6, {})
    ckpt = torch.load(path, weights_only=True)
    ckpt["embedding_size"] = 64
    torch.save(ckpt, path)
    with pytest.raises(ModelError, match="does not match architecture 'mobilefacenet'"):
        load_quantized(path)


def test_unknown_arch_cannot_be_saved(tmp_path):
    q = prepare_quantized(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1)), 8, 8)
    with pytest.raises(ModelError, match="architecture / embedding size are unknown"):
        save_quantized(tmp_path / "q.pt", q, {})
