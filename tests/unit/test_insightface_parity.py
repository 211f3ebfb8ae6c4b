"""insightface as the reference (issue 18). insightface is optional (`make insightface`: its wheel requires
opencv-python, a second cv2, so it goes in --no-deps); every test that needs it skips, naming the recipe,
where it is not installed. Checked against it:

- the install: cv2 is still opencv-python-headless's, opencv-python is absent, the versions are the lock's;
- facepipe's alignment against `insightface.utils.face_align.norm_crop` on real LFW landmarks (pixels, the
  transform, and, slow, SFace's LFW accuracy on both crops);
- facepipe's insightface-pack loader against `insightface.model_zoo.get_model` on packs built here (the model
  picked, input mean / std and colour order, embeddings), and teacher.loader=insightface.

Measured (2026-12-03, insightface 2.1, scikit-image 0.26.0, opencv-python-headless 5.1.0.95):
alignment on all 13,233 LFW images: max 1 grey level, mean |diff| 5.25e-05 (26,142 of 498M values differ by 1);
the transforms differ by <= 4.2e-05 (insightface fits in float32). SFace on LFW's 6000 pairs (slow test):
99.42 ± 0.37 on both crops (6,002 of 7,701 faces differ somewhere; embedding cosine >= 0.999997). Loader parity
(32 real LFW faces, tiny net): max |diff| 1.4e-06 with mean / std 127.5, 0 with Sub/Mul in the graph.
"""

from __future__ import annotations

import importlib.metadata as md
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from facepipe.pipeline.config import TeacherConfig
from facepipe.pipeline.data.align import align_face, similarity_transform, template, warp_face
from facepipe.pipeline.embedder import Preprocess, cosine_rows
from facepipe.pipeline.errors import BackendUnavailable, ConfigError, ModelError
from facepipe.pipeline.teachers import load_teacher, resolve_teacher
from sanity import assert_not_collapsed
from test_teachers import _Attr, _Det, export, mxnet_style
from tiny_nets import warmed_tiny_facenet

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

REPO = Path(__file__).resolve().parents[2]
SKIP = "insightface is not installed (optional, the reference of these checks): run `make insightface`"
N_ALIGN = 200  # LFW images for the pixel check (all 13,233 in the module docstring's numbers)


@pytest.fixture(scope="module")
def insightface():
    return pytest.importorskip("insightface", reason=SKIP)


def _pinned(name: str) -> str:
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.split("==")[0].strip().lower() == name.lower():
            return line.split("==", 1)[1].strip()
    raise AssertionError(f"{name} is not pinned in constraints.txt")


# --- the install -----------------------------------------------------------------------------------
def test_install_keeps_the_headless_cv2(insightface):
    import cv2

    assert md.packages_distributions().get("cv2") == ["opencv-python-headless"], md.packages_distributions()["cv2"]
    with pytest.raises(md.PackageNotFoundError):
        md.version("opencv-python")
    headless = md.version("opencv-python-headless")
    assert headless == _pinned("opencv-python-headless")
    assert headless.startswith(cv2.__version__ + "."), (cv2.__version__, headless)
    assert md.version("insightface") == _pinned("insightface") == insightface.__version__
    assert md.version("scikit-image") == _pinned("scikit-image")
    assert cv2.dnn.blobFromImages is not None  # what ArcFaceONNX.get_feat uses: in the headless build too


# --- alignment -------------------------------------------------------------------------------------
def _lfw_sample(lfw_root: Path, n: int):
    from facepipe.pipeline.data.images import read_image_rgb
    from facepipe.pipeline.data.lfw import read_landmarks

    lm = read_landmarks(lfw_root / "landmarks.tsv")
    keys = sorted(lm)
    for i in np.linspace(0, len(keys) - 1, n).astype(int):
        yield keys[i], read_image_rgb(lfw_root / keys[i], on_error="fail"), lm[keys[i]]


def test_alignment_matches_norm_crop_on_real_lfw(insightface, lfw_root):
    from insightface.utils import face_align
    from skimage.transform import SimilarityTransform

    diffs, m_if, m_64 = [], 0.0, 0.0
    for key, img, lm in _lfw_sample(lfw_root, N_ALIGN):
        ours, theirs = align_face(img, lm), face_align.norm_crop(img, lm)
        assert ours.shape == theirs.shape == (112, 112, 3) and ours.dtype == theirs.dtype == np.uint8
        assert ours.std() > 10, f"{key}: a blank crop would make the comparison vacuous"
        diffs.append(np.abs(ours.astype(np.int16) - theirs.astype(np.int16)))
        # The warp is the same: insightface's own transform through facepipe's warp gives its crop exactly.
        m_theirs = face_align.estimate_norm(lm)
        assert np.array_equal(warp_face(img, m_theirs), theirs), key
        # The fit is the same least squares: scikit-image in float64 equals facepipe's float64 Umeyama ...
        m_ours = similarity_transform(lm, template())
        t = SimilarityTransform()
        t.estimate(lm.astype(np.float64), face_align.arcface_dst.astype(np.float64))
        m_64 = max(m_64, float(np.abs(t.params[:2] - m_ours).max()))
        # ... and insightface fits in the landmarks' float32, which is the whole difference.
        m_if = max(m_if, float(np.abs(m_theirs - m_ours).max()))
    d = np.stack(diffs)
    stats = f"{N_ALIGN} LFW images: max {d.max()}, mean {d.mean():.3g}, differing {np.mean(d > 0):.3g}"
    print(f"\nalignment vs norm_crop on {stats}; transform max |diff| {m_if:.3g} (float64 fit: {m_64:.3g})")
    assert m_64 < 1e-9, stats
    assert m_if < 2e-4, stats
    assert d.max() <= 1 and np.mean(d > 0) < 1e-3, stats


@pytest.mark.slow
def test_sface_lfw_accuracy_on_both_crops(insightface, lfw_root, monkeypatch):
    """SFace on all 6000 LFW pairs from facepipe's crops and from norm_crop's (same landmarks, same scoring as
    `facepipe eval --model sface --benchmarks lfw --no-flip`). A face whose two crops are byte-identical has one
    embedding (same input, same session): only the crops that differ are embedded again."""
    import facepipe.pipeline.data.align as align_mod
    from facepipe.pipeline.data.lfw import load_lfw
    from facepipe.pipeline.eval.datasets import evaluate_embeddings
    from insightface.utils import face_align

    ours = load_lfw(lfw_root)
    monkeypatch.setattr(align_mod, "align_face", lambda img, lm, size=112: face_align.norm_crop(img, lm, size))
    theirs = load_lfw(lfw_root)
    monkeypatch.undo()
    assert np.array_equal(ours.pairs, theirs.pairs) and len(ours.images) == len(theirs.images) == 7701
    differ = np.abs(ours.images.astype(np.int16) - theirs.images.astype(np.int16)).reshape(len(ours.images), -1)
    changed = np.flatnonzero(differ.max(1) > 0)
    sface = load_teacher(TeacherConfig(source="sface"), threads=2)
    emb_ours = sface.embed(ours.images, flip=False)
    emb_theirs = emb_ours.copy()
    emb_theirs[changed] = sface.embed(theirs.images[changed], flip=False)
    acc = {name: evaluate_embeddings(e, data, metric="euclidean").summary
           for name, e, data in (("facepipe", emb_ours, ours), ("norm_crop", emb_theirs, theirs))}
    cos = cosine_rows(emb_ours[changed], emb_theirs[changed])
    print(f"\nSFace LFW (6000 pairs, no flip): facepipe crops {acc['facepipe']['accuracy']:.2f} ± "
          f"{acc['facepipe']['std']:.2f}, norm_crop crops {acc['norm_crop']['accuracy']:.2f} ± "
          f"{acc['norm_crop']['std']:.2f}; {len(changed)} of {len(ours.images)} crops differ (max 1 grey level: "
          f"{differ.max()}), their embeddings' cosine min {cos.min() if len(cos) else 1.0:.6f}")
    assert differ.max() <= 1
    assert abs(acc["facepipe"]["accuracy"] - 99.42) < 0.02  # the README's number for facepipe eval
    assert abs(acc["facepipe"]["accuracy"] - acc["norm_crop"]["accuracy"]) <= 0.05  # at most 3 of 6000 pairs


# --- the model-pack loader -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    """32 real LFW faces aligned from their landmarks (distinct people), else smooth generated images."""
    import os

    lfw = Path(os.environ.get("FACEPIPE_DATA") or REPO.parent / "shared" / "data") / "lfw"
    if (lfw / "landmarks.tsv").is_file():
        return np.stack([align_face(img, lm) for _, img, lm in _lfw_sample(lfw, 32)])
    import cv2

    rng = np.random.default_rng(0)
    return np.stack([cv2.resize(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), (112, 112),
                                interpolation=cv2.INTER_CUBIC) for _ in range(32)])


@pytest.fixture(scope="module")
def tiny_onnx(faces, tmp_path_factory):
    """A small recognition net (BatchNorm statistics of these faces, so they spread), exported to ONNX."""
    x = (torch.from_numpy(faces.copy()).permute(0, 3, 1, 2).float() - 127.5) / 127.5
    return export(warmed_tiny_facenet(x), tmp_path_factory.mktemp("tiny") / "tiny.onnx")


def _pack(root: Path, rec_onnx: Path, in_graph: bool) -> Path:
    """An insightface-style model pack: a detector, an attribute model and the recognition model; with
    in_graph the recognition graph takes 0-255 input and normalises itself (mxnet-style Sub/Mul first)."""
    root.mkdir()
    export(_Det(), root / "det_10g.onnx", size=64, outputs=("score", "bbox"))
    export(_Attr(), root / "genderage.onnx", size=96)
    if in_graph:
        mxnet_style(rec_onnx, root / "w600k_tiny.onnx")
    else:
        shutil.copy(rec_onnx, root / "w600k_tiny.onnx")
    return root


def _insightface_route(pack: Path):
    """What insightface's FaceAnalysis does with a pack folder: get_model on every .onnx, keep the recognition
    task."""
    from insightface.model_zoo import get_model

    models = [get_model(str(p), providers=["CPUExecutionProvider"]) for p in sorted(pack.glob("*.onnx"))]
    return [m for m in models if m is not None and m.taskname == "recognition"]


@pytest.mark.parametrize("in_graph", [False, True], ids=["mean127.5", "sub-mul-in-graph"])
def test_pack_loader_matches_insightface_get_model(insightface, faces, tiny_onnx, tmp_path, in_graph):
    pack = _pack(tmp_path / "buffalo_t", tiny_onnx, in_graph)
    src = resolve_teacher(TeacherConfig(source=str(pack), embedding_size=16))
    (rec,) = _insightface_route(pack)
    assert Path(rec.model_file) == src.files[0] == pack / "w600k_tiny.onnx"  # the same model picked
    pre = src.preprocess
    assert (pre.mean, pre.std) == ((rec.input_mean,) * 3, (rec.input_std,) * 3)
    assert (pre.mean[0], pre.std[0]) == ((0.0, 1.0) if in_graph else (127.5, 127.5))
    assert pre.size == rec.input_size[0] == 112 and pre.color == "RGB"  # get_feat: BGR images, swapRB=True

    ref = rec.get_feat([np.ascontiguousarray(f[..., ::-1]) for f in faces])  # insightface's own path (BGR)
    assert_not_collapsed(ref, "insightface get_feat on the parity faces")
    ours = src.load(threads=1).embed(faces)
    diff, cos = float(np.abs(ours - ref).max()), float(cosine_rows(ours, ref).min())
    print(f"\nloader parity ({'Sub/Mul in graph' if in_graph else 'mean/std 127.5'}, {len(faces)} faces): "
          f"max |diff| {diff:.3g} (|emb| max {np.abs(ref).max():.3g}), min cosine {cos:.8f}")
    assert diff < 1e-5 and cos > 0.999999
    # The comparison can fail: the other colour order, or the other normalisation, gives other embeddings.
    swapped = rec.get_feat([np.ascontiguousarray(f) for f in faces])
    assert cosine_rows(swapped, ref).min() < 0.999
    other = Preprocess(mean=(127.5,) * 3, std=(127.5,) * 3) if in_graph else Preprocess(mean=(0,) * 3, std=(1,) * 3)
    from facepipe.pipeline.embedder import OnnxRuntimeEmbedder

    wrong = OnnxRuntimeEmbedder(src.files[0], preprocess=other, threads=1).embed(faces)
    assert cosine_rows(wrong, ref).min() < 0.999

    # teacher.loader=insightface: insightface's get_model behind the same Embedder interface
    cfg = TeacherConfig(source=str(pack), embedding_size=16, loader="insightface")
    via = resolve_teacher(cfg)
    emb = load_teacher(cfg, threads=1)
    assert type(emb).__name__ == "InsightFaceZooEmbedder" and emb.preprocess == pre and emb.dim == 16
    got = emb.embed(faces, batch_size=7)
    assert float(np.abs(got - ref).max()) < 1e-5 and np.allclose(emb.get_feat(faces), ref, atol=1e-6)
    flipped = emb.embed(faces, flip=True)
    np.testing.assert_allclose(flipped, got + rec.get_feat([np.ascontiguousarray(f[:, ::-1, ::-1]) for f in faces]),
                               atol=2e-5)
    d = via.describe()
    assert d["loader"] == "insightface" and d["insightface"] == insightface.__version__
    assert emb.describe()["insightface_class"] == "ArcFaceONNX"
    assert via.fingerprint() != src.fingerprint() and "loader" not in src.describe()


def test_loader_insightface_single_onnx_and_conflicting_declaration(insightface, faces, tiny_onnx, tmp_path):
    cfg = TeacherConfig(source=str(tiny_onnx), embedding_size=16, loader="insightface")
    emb = load_teacher(cfg, threads=1)
    ref = load_teacher(TeacherConfig(source=str(tiny_onnx), embedding_size=16), threads=1).embed(faces)
    assert float(np.abs(emb.embed(faces) - ref).max()) < 1e-5
    # A facepipe.json that declares another normalisation than insightface's rule: insightface ignores it,
    # so the insightface loader refuses instead of silently disagreeing with the fingerprint.
    folder = tmp_path / "declared"
    folder.mkdir()
    shutil.copy(tiny_onnx, folder / "rec.onnx")
    (folder / "rec.facepipe.json").write_text('{"preprocess": {"mean": [0, 0, 0], "std": [1, 1, 1]}}')
    cfg = TeacherConfig(source=str(folder / "rec.onnx"), embedding_size=16, loader="insightface")
    with pytest.raises(ModelError, match=r"teacher.loader=insightface: insightface's model_zoo reads .*mean \[127.5, "
                                         r"127.5, 127.5\].*rec.facepipe.json gives .*teacher.loader: facepipe"):
        load_teacher(cfg, threads=1)


# --- without insightface -------------------------------------------------------------------------
def test_loader_insightface_without_the_package_is_one_clear_line(tmp_path, monkeypatch):
    from tiny_nets import TinyFaceNet

    path = export(TinyFaceNet().eval(), tmp_path / "rec.onnx")
    monkeypatch.setitem(sys.modules, "insightface", None)  # `import insightface` raises ImportError
    with pytest.raises(BackendUnavailable) as e:
        resolve_teacher(TeacherConfig(source=str(path), loader="insightface", embedding_size=16))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("teacher.loader=insightface needs the insightface package")
    assert "make insightface" in msg and "teacher.loader: facepipe" in msg
    # the default loader never imports it
    assert resolve_teacher(TeacherConfig(source=str(path), embedding_size=16)).describe()["kind"] == "onnx"


def test_loader_insightface_only_for_onnx_kinds():
    with pytest.raises(ConfigError, match=r"teacher.loader='insightface' applies to teacher kinds onnx, "
                                          r"insightface, and teacher.source 'sface' is kind package"):
        resolve_teacher(TeacherConfig(source="sface", loader="insightface"))
    with pytest.raises(ValueError, match="loader"):
        TeacherConfig(loader="mxnet")
