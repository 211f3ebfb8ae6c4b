"""Benchmark registry, spec resolution and the one evaluation path, on generated LFW / .bin / IJB folders."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest

from facepipe.pipeline.eval.datasets import (BENCHMARKS, PAIR_BINS, evaluate_all, evaluate_benchmark,
                                          evaluate_embeddings, resolve_benchmark)
from facepipe.pipeline.data.align import ARCFACE_TEMPLATE
from facepipe.pipeline.data.ijb import ijb_evaluate, load_ijb
from facepipe.pipeline.data.types import VerificationSet
from facepipe.pipeline.errors import DataError, ModelError
from facepipe.pipeline.eval.metrics import verification_10fold

BANDS = 8


# ---------------------------------------------------------------------------------------------------------
# synthetic identities: an identity is a code painted as 8 horizontal grey bands; the fake embedder
# reads the bands back and projects them with a fixed random matrix.

def identity_codes(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, BANDS))


def paint_face(code: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    rows = np.repeat(60 + 130 * code, 112 // BANDS) + rng.uniform(-10, 10)  # per-image brightness
    img = np.broadcast_to(rows[:, None, None], (112, 112, 3)) + rng.normal(0, 4, (112, 112, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


class BandEmbedder:
    """embed(faces, batch_size, flip) like the project's embedders; counts its calls."""

    def __init__(self, dim: int = 32, seed: int = 1):
        self.w = np.random.default_rng(seed).standard_normal((BANDS, dim))
        self.calls = 0

    def embed(self, faces: np.ndarray, batch_size: int = 64, flip: bool = False) -> np.ndarray:
        assert faces.dtype == np.uint8 and faces.shape[1:] == (112, 112, 3)
        self.calls += 1
        bands = faces.astype(np.float32).mean(axis=(2, 3)).reshape(len(faces), BANDS, -1).mean(2)
        e = (bands - bands.mean(1, keepdims=True)) @ self.w
        # Horizontal bands are mirror-symmetric, so emb(face) + emb(mirror) = 2 emb(face).
        return (2 * e if flip else e).astype(np.float32)


def jpeg(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return buf.tobytes()


def pair_plan(n_pairs: int, n_ids: int, rng) -> list[tuple[int, int, bool]]:
    """Alternating genuine / impostor identity pairs."""
    out = []
    for k in range(n_pairs):
        a = int(rng.integers(n_ids))
        b = a if k % 2 == 0 else int((a + rng.integers(1, n_ids)) % n_ids)
        out.append((a, b, a == b))
    return out


def write_bin(path: Path, n_pairs: int = 40, n_ids: int = 10, seed: int = 0) -> Path:
    """insightface .bin: pickle of (list of JPEG bytes, list of bool issame); pairs are consecutive images."""
    rng, codes = np.random.default_rng(seed), identity_codes(n_ids, seed)
    bins, issame = [], []
    for a, b, same in pair_plan(n_pairs, n_ids, rng):
        bins += [jpeg(paint_face(codes[a], rng)), jpeg(paint_face(codes[b], rng))]
        issame.append(same)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps((bins, issame), protocol=4))
    return path


def write_lfw(root: Path, folds: int = 2, per_half: int = 4, n_ids: int = 6, seed: int = 0) -> Path:
    """LFW layout: pairs.txt (folds x (per_half same + per_half different)), images/, landmarks.tsv."""
    rng, codes = np.random.default_rng(seed), identity_codes(n_ids, seed)
    names = [f"Person_{i}" for i in range(n_ids)]
    counts = [0] * n_ids
    lines, lms = [f"{folds}\t{per_half}"], ["# path\tlandmarks\tscore"]

    def new_image(i: int) -> int:
        counts[i] += 1
        rel = f"images/{names[i]}/{names[i]}_{counts[i]:04d}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(jpeg(paint_face(codes[i], rng)))
        lms.append(f"{rel}\t{' '.join(f'{v:.3f}' for v in ARCFACE_TEMPLATE.ravel())}\t0.99")
        return counts[i]

    for _ in range(folds):
        for _ in range(per_half):
            i = int(rng.integers(n_ids))
            lines.append(f"{names[i]}\t{new_image(i)}\t{new_image(i)}")
        for _ in range(per_half):
            i = int(rng.integers(n_ids))
            j = int((i + rng.integers(1, n_ids)) % n_ids)
            lines.append(f"{names[i]}\t{new_image(i)}\t{names[j]}\t{new_image(j)}")
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    (root / "landmarks.tsv").write_text("\n".join(lms) + "\n")
    return root


def write_ijb(root: Path, which: str = "IJBC", n_ids: int = 4, seed: int = 0) -> Path:
    """IJB layout with painted loose crops: 2 templates per identity, 2 medias per template."""
    rng, codes = np.random.default_rng(seed), identity_codes(n_ids, seed + 7)
    (root / "meta").mkdir(parents=True)
    (root / "loose_crop").mkdir()
    tid_mid, lmk = [], []
    k = 0
    for ident in range(n_ids):
        for t in (2 * ident + 1, 2 * ident + 2):
            for media, n_img in ((100 * t, 2), (100 * t + 1, 1)):
                for _ in range(n_img):
                    k += 1
                    dx, dy = (int(v) for v in rng.integers(5, 30, 2))
                    crop = np.full((150, 150, 3), 30, np.uint8)
                    crop[dy:dy + 112, dx:dx + 112] = paint_face(codes[ident], rng)
                    cv2.imwrite(str(root / "loose_crop" / f"{k}.jpg"), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
                    tid_mid.append(f"{k}.jpg {t} {media}")
                    pts = " ".join(f"{v:.4f}" for v in (ARCFACE_TEMPLATE + [dx, dy]).ravel())
                    lmk.append(f"{k}.jpg {pts} {rng.uniform(0.6, 1.0):.4f}")
    pairs = [f"{2 * i + 1} {2 * i + 2} 1" for i in range(n_ids)]
    pairs += [f"{2 * i + 1} {2 * ((i + 1) % n_ids) + 2} 0" for i in range(n_ids)]
    pairs += [f"{2 * i + 2} {2 * ((i + 2) % n_ids) + 1} 0" for i in range(n_ids)]
    p = which.lower()
    (root / "meta" / f"{p}_face_tid_mid.txt").write_text("\n".join(tid_mid) + "\n")
    (root / "meta" / f"{p}_name_5pts_score.txt").write_text("\n".join(lmk) + "\n")
    (root / "meta" / f"{p}_template_pair_label.txt").write_text("\n".join(pairs) + "\n")
    return root


# ---------------------------------------------------------------------------------------------------------
# registry and resolution

def test_registry_holds_the_insightface_names():
    names = set(BENCHMARKS.names())
    assert {"lfw", "cfp_fp", "cfp_ff", "ijbb", "ijbc", *PAIR_BINS} == names
    assert {n for n in names if BENCHMARKS.get(n).kind == "ijb"} == {"ijbb", "ijbc"}


def test_bin_found_flat_or_nested(tmp_path):
    (tmp_path / "cfp_fp.bin").write_bytes(b"x")
    (tmp_path / "agedb_30").mkdir()
    (tmp_path / "agedb_30" / "agedb_30.bin").write_bytes(b"x")
    b = resolve_benchmark("cfp_fp", tmp_path)
    assert (b.name, b.kind, b.fmt, b.path) == ("cfp_fp", "pairs", "bin", tmp_path / "cfp_fp.bin")
    b = resolve_benchmark("AgeDB_30", tmp_path)  # names are case-insensitive
    assert (b.name, b.path) == ("agedb_30", tmp_path / "agedb_30" / "agedb_30.bin")
    assert b.input_files() == [tmp_path / "agedb_30" / "agedb_30.bin"]


def test_lfw_folder_preferred_over_bin(tmp_path):
    (tmp_path / "lfw").mkdir()
    (tmp_path / "lfw" / "pairs.txt").write_text("1\t1\n")
    (tmp_path / "lfw.bin").write_bytes(b"x")
    b = resolve_benchmark("lfw", tmp_path)
    assert (b.fmt, b.path) == ("lfw", tmp_path / "lfw")
    assert b.input_files() == [tmp_path / "lfw" / "pairs.txt"]
    (tmp_path / "lfw" / "landmarks.tsv").write_text("")
    assert b.input_files() == [tmp_path / "lfw" / "pairs.txt", tmp_path / "lfw" / "landmarks.tsv"]
    (tmp_path / "lfw" / "pairs.txt").unlink()
    b = resolve_benchmark("lfw", tmp_path)
    assert (b.fmt, b.path) == ("bin", tmp_path / "lfw.bin")


def test_missing_named_benchmark_says_where_and_how(tmp_path):
    with pytest.raises(DataError) as e:
        resolve_benchmark("cfp_fp", tmp_path)
    msg = str(e.value)
    for p in (tmp_path / "cfp_fp.bin", tmp_path / "cfp_fp" / "cfp_fp.bin"):
        assert str(p) in msg
    assert "FACEPIPE_DATA" in msg and "data.root" in msg and "facepipe data make-bin" in msg

    with pytest.raises(DataError) as e:
        resolve_benchmark("lfw", tmp_path)
    assert f"{tmp_path / 'lfw'} (LFW-style folder): missing pairs.txt" in str(e.value)
    assert str(tmp_path / "lfw.bin") in str(e.value)


def test_missing_ijb_names_meta_files(tmp_path):
    (tmp_path / "IJBC" / "meta").mkdir(parents=True)
    (tmp_path / "IJBC" / "meta" / "ijbc_face_tid_mid.txt").write_text("")
    with pytest.raises(DataError) as e:
        resolve_benchmark("ijbc", tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "IJBC") in msg
    assert "meta/ijbc_template_pair_label.txt" in msg and "meta/ijbc_name_5pts_score.txt" in msg
    assert "loose_crop" in msg and "meta/ijbc_face_tid_mid.txt" not in msg  # that one exists


def test_name_without_data_root():
    with pytest.raises(DataError, match=r"data\.root.*FACEPIPE_DATA"):
        resolve_benchmark("lfw", None)


def test_unknown_name_suggests(tmp_path):
    with pytest.raises(DataError, match=r"did you mean 'agedb_30'.*path to a \.bin"):
        resolve_benchmark("agedb30", tmp_path)


def test_path_specs(tmp_path, monkeypatch):
    data = tmp_path / "data"
    write_bin(data / "sets" / "mine.bin", n_pairs=2)
    b = resolve_benchmark(str(data / "sets" / "mine.bin"), None)
    assert (b.name, b.kind, b.fmt) == ("mine", "pairs", "bin")
    b = resolve_benchmark("sets/mine.bin", data)  # relative to the data root
    assert b.path == data / "sets" / "mine.bin"
    monkeypatch.chdir(data)
    assert resolve_benchmark("sets/mine.bin", None).path == Path("sets/mine.bin")  # relative to cwd

    (data / "lfwlike").mkdir()
    (data / "lfwlike" / "pairs.txt").write_text("1\t1\n")
    assert resolve_benchmark(str(data / "lfwlike"), None).fmt == "lfw"

    write_ijb(data / "my_ijbb", which="IJBB", n_ids=2)
    b = resolve_benchmark(str(data / "my_ijbb"), None)
    assert (b.kind, b.fmt, b.which) == ("ijb", "ijb", "IJBB")
    assert [p.name for p in b.input_files()] == ["ijbb_face_tid_mid.txt", "ijbb_template_pair_label.txt",
                                                  "ijbb_name_5pts_score.txt"]

    (data / "calfw").mkdir()
    (data / "calfw" / "calfw.bin").write_bytes(b"x")
    assert resolve_benchmark(str(data / "calfw"), None).fmt == "bin"

    (data / "empty").mkdir()
    expected = r"(?s)not a benchmark folder.*ijbc_face_tid_mid.*missing pairs\.txt.*empty\.bin"
    with pytest.raises(DataError, match=expected):
        resolve_benchmark(str(data / "empty"), None)
    (data / "notes.md").write_text("x")
    with pytest.raises(DataError, match=r"must be an insightface \.bin .* or a pairs list"):
        resolve_benchmark(str(data / "notes.md"), None)
    (data / "notes.txt").write_text("x")  # a .txt is a pairs list: read (and refused line by line) at load
    assert resolve_benchmark(str(data / "notes.txt"), None).fmt == "pairs"
    with pytest.raises(DataError, match=r"'nope/x\.bin' not found"):
        resolve_benchmark("nope/x.bin", data)


# ---------------------------------------------------------------------------------------------------------
# evaluation

def test_evaluate_embeddings_wires_pairs_to_metrics(rng):
    # Pairs index images in arbitrary order: the summary must equal the metric on exactly those rows.
    n_img, n_pairs = 50, 200
    emb = rng.standard_normal((n_img, 16)).astype(np.float32)
    pairs = rng.integers(0, n_img, (n_pairs, 2))
    issame = rng.permutation(np.arange(n_pairs) % 2 == 0)
    folds = np.arange(n_pairs) % 10
    data = VerificationSet("toy", np.zeros((n_img, 112, 112, 3), np.uint8), pairs, issame, folds, skipped=3)
    r = evaluate_embeddings(emb, data)
    want = verification_10fold(emb[pairs[:, 0]], emb[pairs[:, 1]], issame, folds=folds)
    for key in ("accuracy", "std", "threshold", "val", "far", "fold_accuracies"):
        assert r.summary[key] == want[key]
    s = r.summary
    assert (s["name"], s["kind"], s["pairs"], s["skipped"], s["images"]) == ("toy", "pairs", 200, 3, 50)
    # 100 impostors: only FAR 1e-2 and 1e-1 are measurable.
    assert set(s["tar_at_far"]) == {"1e-02", "1e-01"}
    json.dumps(s, allow_nan=False)
    fpr, tpr = r.roc
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0) and fpr[-1] == 1.0
    with pytest.raises(ValueError, match=r"\(50, D\)"):
        evaluate_embeddings(emb[:10], data)
    emb[7, 3] = np.nan  # a broken model is the user's problem to fix, not a crash in the ROC code
    with pytest.raises(ModelError, match=r"toy: .*NaN/inf embeddings for 1 of 50 faces \(first: row 7\)"):
        evaluate_embeddings(emb, data)


def test_lfw_folder_end_to_end(tmp_path):
    write_lfw(tmp_path / "lfw")
    emb = BandEmbedder()
    bench = resolve_benchmark("lfw", tmp_path)
    r = evaluate_benchmark(emb, bench)
    s = r.summary
    assert s["accuracy"] == 100.0 and s["std"] == 0.0 and len(s["fold_accuracies"]) == 2
    assert (s["name"], s["pairs"], s["images"], s["skipped"]) == ("lfw", 16, 32, 0)
    assert s["seconds"] > 0 and emb.calls == 1
    json.dumps(s, allow_nan=False)
    # Precomputed embeddings go through the same code path and give the same numbers.
    data = bench.load()
    again = evaluate_embeddings(emb.embed(data.images, flip=True), data, name="lfw")
    assert {k: v for k, v in again.summary.items() if k != "seconds"} == \
           {k: v for k, v in s.items() if k != "seconds"}


def test_bin_end_to_end(tmp_path):
    write_bin(tmp_path / "cfp_fp.bin", n_pairs=40)
    r = evaluate_benchmark(BandEmbedder(), resolve_benchmark("cfp_fp", tmp_path), batch_size=7)
    s = r.summary
    assert s["accuracy"] == 100.0 and (s["pairs"], s["images"]) == (40, 80)
    assert s["name"] == "cfp_fp" and s["kind"] == "pairs"


def test_ijb_end_to_end(tmp_path):
    write_ijb(tmp_path / "IJBC")
    bench = resolve_benchmark("ijbc", tmp_path)
    assert (bench.kind, bench.which) == ("ijb", "IJBC")
    emb = BandEmbedder()
    r = evaluate_benchmark(emb, bench, batch_size=5)
    s = r.summary
    assert (s["name"], s["kind"], s["pairs"], s["images"], s["skipped"]) == ("ijbc", "ijb", 12, 24, 0)
    assert s["tar_at_far"] == {k: 100.0 for k in ("1e-06", "1e-05", "1e-04", "1e-03", "1e-02", "1e-01")}
    assert s["accuracy"] is None
    json.dumps(s, allow_nan=False)
    # Same scores as the protocol applied by hand to the faces embedded one by one.
    data = load_ijb(tmp_path / "IJBC")
    idx, faces = data.faces(np.arange(len(data)))
    feats = emb.embed(faces, flip=True)
    np.testing.assert_allclose(r.scores, ijb_evaluate(feats, data)["scores"], rtol=1e-5)


def test_ijb_skips_unreadable_faces(tmp_path):
    root = write_ijb(tmp_path / "IJBC")
    (root / "loose_crop" / "1.jpg").write_bytes(b"broken")
    bench = resolve_benchmark("ijbc", tmp_path)
    with pytest.raises(DataError, match="1.jpg"):
        evaluate_benchmark(BandEmbedder(), bench)
    s = evaluate_benchmark(BandEmbedder(), bench, on_error="skip").summary
    assert (s["images"], s["images_skipped"], s["skipped"], s["pairs"]) == (23, 1, 0, 12)


def test_evaluate_all_resolves_before_embedding(tmp_path):
    write_lfw(tmp_path / "lfw")
    emb = BandEmbedder()
    with pytest.raises(DataError, match="agedb_30"):
        evaluate_all(emb, ["lfw", "agedb_30"], tmp_path)
    assert emb.calls == 0
    write_ijb(tmp_path / "IJBC")
    results = evaluate_all(emb, ["ijbc", "lfw"], tmp_path)
    assert [r.summary["name"] for r in results] == ["ijbc", "lfw"]


def test_first_folds_of_lfw_folder_and_bin(tmp_path):
    root = write_lfw(tmp_path / "lfw", folds=3, per_half=10)  # one fold must hold 10 + 10 for 10 stratified folds
    full = resolve_benchmark(str(root), None).load()
    one = resolve_benchmark(f"{root}@1", None)
    assert one.name == "lfw@1" and one.folds == 1
    sub = one.load()
    assert len(sub.issame) == 20 and len(np.unique(sub.folds)) == 1
    # the subset reads only its images, and its pairs point at the same faces as the full set's first fold
    first = full.folds == np.unique(full.folds)[0]
    assert len(sub.images) <= len(np.unique(full.pairs[first]))
    np.testing.assert_array_equal(sub.images[sub.pairs], full.images[full.pairs[first]])
    np.testing.assert_array_equal(sub.issame, full.issame[first])

    binf = write_bin(tmp_path / "x.bin", n_pairs=40)
    two = resolve_benchmark(f"{binf}@2", None).load()
    assert len(two.issame) == 8  # insightface's consecutive folds: 40 pairs / 10 * 2


def test_first_folds_rejects_bad_counts(tmp_path):
    root = write_lfw(tmp_path / "lfw", folds=2, per_half=2)
    for bad in ("@0", "@11"):
        with pytest.raises(DataError, match="first N of 10 folds"):
            resolve_benchmark(f"{root}{bad}", None)


@pytest.mark.parametrize("per_half", [1, 9])
def test_too_few_pairs_for_ten_stratified_folds_is_a_data_error_naming_the_set(tmp_path, per_half):
    """Hostile input 5: a one-fold pairs list with fewer than 10 genuine pairs ended in an uncaught ValueError
    (10 label-stratified folds cannot be made); now a DataError at load, before any embedding."""
    root = write_lfw(tmp_path / "lfw", folds=1, per_half=per_half)
    with pytest.raises(DataError, match=rf"lfw: {per_half} genuine and {per_half} impostor pairs; 10-fold "
                                        r"verification needs at least 10 of each"):
        resolve_benchmark(str(root), None).load()
    ok = write_lfw(tmp_path / "lfw10", folds=1, per_half=10)
    assert len(resolve_benchmark(str(ok), None).load().issame) == 20
    official = write_lfw(tmp_path / "lfw2", folds=2, per_half=per_half)  # official folds are used as given
    assert len(resolve_benchmark(str(official), None).load().issame) == 4 * per_half


def test_the_skip_hint_names_options_the_commands_have():
    """Hostile input 6: the hint named `--on-error`, which `facepipe eval` does not have."""
    from facepipe.pipeline.data.images import SKIP_HINT

    assert "--set data.on_error=skip" in SKIP_HINT and "`facepipe data` commands: --on-error skip" in SKIP_HINT
