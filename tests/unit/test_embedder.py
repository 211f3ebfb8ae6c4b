"""Embedder interface: preprocessing, torch and ONNX Runtime backends, ONNX metadata."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from facepipe.pipeline.embedder import (EMBEDDER_BACKENDS, META_EMBEDDING_SIZE, META_FINGERPRINT, META_PREPROCESS,
                                        OnnxRuntimeEmbedder, Preprocess, TorchEmbedder, cosine_rows,
                                        read_onnx_metadata, write_onnx_metadata)
from facepipe.pipeline.errors import ModelError

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def plain_onnx(mfn, tmp_path_factory):
    """MobileFaceNet exported once with a dynamic batch axis and no metadata."""
    path = tmp_path_factory.mktemp("onnx") / "plain.onnx"
    export(mfn, path)
    return path


def with_metadata(src, dst, preprocess, dim, fingerprint):
    import onnx

    proto = onnx.load(str(src))
    write_onnx_metadata(proto, preprocess, dim, fingerprint)
    onnx.save(proto, str(dst))
    return dst


def reference(model, faces: np.ndarray, mean=127.5, std=127.5) -> np.ndarray:
    """Independent torch path: RGB uint8 NHWC -> (x - mean) / std NCHW -> model."""
    x = torch.from_numpy(faces.copy()).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        return model((x - mean) / std).numpy()


def export(model, path, batch: int | None = None, wrapper=None):
    """Legacy ONNX export; batch=None gives a dynamic batch axis."""
    import onnx

    mod = wrapper or model
    dyn = {"input": {0: "batch"}, "embedding": {0: "batch"}} if batch is None else None
    torch.onnx.export(mod, torch.zeros(batch or 2, 3, 112, 112), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["embedding"], dynamic_axes=dyn)
    return onnx.load(str(path))


def assert_parity(got: np.ndarray, ref: np.ndarray):
    assert got.shape == ref.shape and got.dtype == np.float32
    assert cosine_rows(got, ref).min() >= 0.9999
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3)


# --- Preprocess -----------------------------------------------------------------------------------
def test_preprocess_rgb_values_and_layout():
    faces = np.zeros((2, 112, 112, 3), np.uint8)
    faces[..., 0], faces[..., 1], faces[..., 2] = 255, 0, 100
    x = Preprocess()(faces)
    assert x.shape == (2, 3, 112, 112) and x.dtype == np.float32 and x.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(x[:, 0], 1.0)
    np.testing.assert_allclose(x[:, 1], -1.0)
    np.testing.assert_allclose(x[:, 2], (100 - 127.5) / 127.5, rtol=1e-6)
    raw = Preprocess(mean=(0, 0, 0), std=(1, 1, 1))(faces)  # SFace style
    np.testing.assert_array_equal(raw[:, 0], 255.0)


def test_preprocess_bgr_uses_model_channel_order():
    faces = np.zeros((1, 112, 112, 3), np.uint8)
    faces[..., 0], faces[..., 2] = 10, 200  # R=10, B=200
    x = Preprocess(color="BGR", mean=(1, 2, 3), std=(1, 1, 2))(faces)
    np.testing.assert_allclose(x[0, 0], 200 - 1)  # channel 0 is blue, mean[0] applies to it
    np.testing.assert_allclose(x[0, 1], 0 - 2)
    np.testing.assert_allclose(x[0, 2], (10 - 3) / 2)


def test_preprocess_resizes_when_size_differs(fake_faces):
    x = Preprocess(size=64)(fake_faces)
    assert x.shape == (8, 3, 64, 64)
    flat = np.full((1, 112, 112, 3), 77, np.uint8)
    np.testing.assert_allclose(Preprocess(size=96)(flat), (77 - 127.5) / 127.5, rtol=1e-6)


def test_preprocess_roundtrip_and_validation():
    p = Preprocess(size=128, color="bgr", mean=[1, 2, 3], std=(4, 5, 6))
    assert p.color == "BGR" and p.mean == (1.0, 2.0, 3.0)
    d = p.to_dict()
    assert Preprocess.from_dict(json.loads(json.dumps(d))) == p
    for bad in ({"color": "YUV"}, {"std": (1, 0, 1)}, {"mean": (1, 2)}, {"size": 0}):
        with pytest.raises(ModelError):
            Preprocess(**bad)
    with pytest.raises(ModelError, match="unknown keys"):
        Preprocess.from_dict({**d, "alignment": "arcface"})
    with pytest.raises(ValueError, match="uint8"):
        Preprocess()(np.zeros((1, 112, 112, 3), np.float32))


# --- Torch backend ------------------------------------------------------------------------------
def test_registry_has_torch_and_onnxruntime():
    assert EMBEDDER_BACKENDS.get("torch") is TorchEmbedder
    assert EMBEDDER_BACKENDS.get("onnxruntime") is OnnxRuntimeEmbedder


def test_torch_embedder_matches_reference_in_any_batching(mfn, fake_faces):
    emb = TorchEmbedder(mfn, Preprocess(), name="mfn")
    ref = reference(mfn, fake_faces)
    assert emb.dim == 128 and not emb.normalized
    assert_parity(emb.embed(fake_faces, batch_size=3), ref)
    assert_parity(emb.embed(fake_faces, batch_size=64, show_progress=True), ref)
    d = emb.describe()
    assert d["runtime"] == "torch" and d["dim"] == 128 and d["parameters"] == sum(p.numel() for p in mfn.parameters())


def test_flip_is_sum_of_face_and_mirror(mfn, fake_faces):
    emb = TorchEmbedder(mfn, Preprocess())
    ref = reference(mfn, fake_faces) + reference(mfn, np.ascontiguousarray(fake_faces[:, :, ::-1]))
    assert_parity(emb.embed(fake_faces, batch_size=5, flip=True), ref)
    # and it is not just the plain embedding
    assert cosine_rows(emb.embed(fake_faces, flip=True), emb.embed(fake_faces)).min() < 0.9999


# --- ONNX Runtime backend ---------------------------------------------------------------------------
def test_onnx_dynamic_batch_reads_metadata(mfn, plain_onnx, fake_faces, tmp_path):
    path = with_metadata(plain_onnx, tmp_path / "mfn.onnx", Preprocess(), 128, "abc123")
    assert read_onnx_metadata(path)["fingerprint"] == "abc123"

    emb = OnnxRuntimeEmbedder(path, threads=1)  # nothing given: everything comes from the metadata
    assert emb.preprocess == Preprocess() and emb.dim == 128 and emb.fixed_batch is None
    assert emb.fingerprint == "abc123"
    assert_parity(emb.embed(fake_faces, batch_size=5), reference(mfn, fake_faces))
    io = emb.io_info()
    assert io["inputs"][0]["name"] == "input" and io["inputs"][0]["shape"][1:] == [3, 112, 112]
    assert io["outputs"][0]["shape"][-1] == 128

    # the same preprocessing asked explicitly is fine; a different one is refused
    OnnxRuntimeEmbedder(path, preprocess=Preprocess(), embedding_size=128)
    with pytest.raises(ModelError, match="declares preprocess"):
        OnnxRuntimeEmbedder(path, preprocess=Preprocess(mean=(0, 0, 0), std=(1, 1, 1)))
    with pytest.raises(ModelError, match="declares 128-d"):
        OnnxRuntimeEmbedder(path, embedding_size=512)


def test_onnx_fixed_batch_models_loop_and_pad(mfn, fake_faces, tmp_path):
    ref = reference(mfn, fake_faces)
    for batch in (1, 3):  # 1: SFace style, one image per run; 3: the last chunk of 8 is padded
        path = tmp_path / f"mfn_b{batch}.onnx"
        export(mfn, path, batch=batch)
        emb = OnnxRuntimeEmbedder(path, preprocess=Preprocess(), threads=1)
        assert emb.fixed_batch == batch
        assert_parity(emb.embed(fake_faces, batch_size=64), ref)


def test_onnx_without_metadata_needs_preprocess_and_checks_shapes(plain_onnx, tmp_path):
    path = plain_onnx
    with pytest.raises(ModelError, match="declares no preprocessing"):
        OnnxRuntimeEmbedder(path)
    with pytest.raises(ModelError, match="preprocess.size is 128"):
        OnnxRuntimeEmbedder(path, preprocess=Preprocess(size=128))
    with pytest.raises(ModelError, match="gives 128-d embeddings, 512 was asked"):
        OnnxRuntimeEmbedder(path, preprocess=Preprocess(), embedding_size=512)
    with pytest.raises(ModelError, match="not found"):
        OnnxRuntimeEmbedder(tmp_path / "missing.onnx", preprocess=Preprocess())


def test_onnx_metadata_inconsistent_with_graph_is_refused(plain_onnx, tmp_path):
    path = with_metadata(plain_onnx, tmp_path / "liar.onnx", Preprocess(), 512, "x")  # the graph gives 128
    with pytest.raises(ModelError, match="declares 512-d embeddings but output"):
        OnnxRuntimeEmbedder(path)


def test_write_onnx_metadata_replaces_and_keeps_others():
    import onnx

    proto = onnx.ModelProto()
    other = proto.metadata_props.add()
    other.key, other.value = "author", "someone"
    write_onnx_metadata(proto, Preprocess(), 128, "fp1")
    write_onnx_metadata(proto, Preprocess(color="BGR"), 512, "fp2", normalized=True)
    props = {p.key: p.value for p in proto.metadata_props}
    assert len(proto.metadata_props) == len(props) == 5
    assert props["author"] == "someone" and props[META_FINGERPRINT] == "fp2"
    assert props[META_EMBEDDING_SIZE] == "512"
    assert Preprocess.from_dict(json.loads(props[META_PREPROCESS])).color == "BGR"


def test_unavailable_devices_are_typed_errors(mfn, plain_onnx):
    from facepipe.pipeline.embedder import ort_providers
    from facepipe.pipeline.errors import BackendUnavailable

    assert ort_providers("cpu") == ["CPUExecutionProvider"]
    assert ort_providers("cuda:1")[0] == ("CUDAExecutionProvider", {"device_id": 1})
    with pytest.raises(BackendUnavailable, match="jetson"):
        ort_providers("jetson")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the unavailable-device path cannot be exercised")
    with pytest.raises(BackendUnavailable, match="CUDA is not available"):
        TorchEmbedder(mfn, Preprocess(), device="cuda:0")
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(BackendUnavailable, match="CUDAExecutionProvider"):
            OnnxRuntimeEmbedder(plain_onnx, preprocess=Preprocess(), providers=ort_providers("cuda:0"))


def test_standardize_and_center_fit_are_one_rule_for_numpy_and_torch():
    import torch

    from facepipe.pipeline.embedder import Preprocess, center_fit, standardize_images

    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    faces[2] = 7  # a flat image: std 0, the 1/sqrt(n) floor keeps it finite
    x = Preprocess(standardize=True)(faces)
    assert np.isfinite(x).all() and np.allclose(x[:2].mean(axis=(1, 2, 3)), 0, atol=1e-5)
    assert np.allclose(x[:2].std(axis=(1, 2, 3)), 1, atol=1e-4)
    t = standardize_images(torch.from_numpy(faces.astype(np.float32)).permute(0, 3, 1, 2))
    assert np.allclose(t.numpy(), x, atol=1e-5)  # the training path applies the same formula
    padded = Preprocess(size=128, resize="center")(faces)
    assert padded.shape == (3, 3, 128, 128) and np.allclose(padded[0, :, :8, :], -1.0)  # black border
    assert np.array_equal(center_fit(faces, 96), faces[:, 8:104, 8:104])
    old = {"size": 112, "color": "RGB", "mean": [127.5] * 3, "std": [127.5] * 3}  # metadata of older exports
    assert Preprocess.from_dict(old) == Preprocess()
    with pytest.raises(ModelError, match="preprocess.resize must be one of scale, center"):
        Preprocess(resize="stretch")
