"""Generic pairs lists (the three common forms + LFW's), CFP in its official layout, and the user's own
aligned folder scored, packed and inspected; real CFP read when present."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from facepipe.pipeline.data.align import ARCFACE_TEMPLATE
from facepipe.pipeline.data.binfile import make_bin, read_bin
from facepipe.pipeline.data.cfp import load_cfp, read_cfp_pairs
from facepipe.pipeline.data.images import encode_jpeg, encode_png
from facepipe.pipeline.data.pairset import read_pair_list
from facepipe.pipeline.errors import DataError
from facepipe.pipeline.eval.datasets import evaluate_embeddings, resolve_benchmark


def _face(rng, size=112) -> np.ndarray:
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


def make_aligned_folder(root: Path, rng, people: int = 6, per: int = 4) -> dict[str, np.ndarray]:
    """<root>/images/pNN/imgK.png aligned crops (lossless, so reading them back is exact)."""
    faces = {}
    for p in range(people):
        for k in range(per):
            rel = f"p{p:02d}/img{k}.png"
            (root / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
            faces[rel] = _face(rng)
            (root / "images" / rel).write_bytes(encode_png(faces[rel]))
    return faces


def test_the_three_forms_and_lfw_numbers_resolve_to_files(tmp_path, rng):
    root = tmp_path / "images"
    for rel in ("Ann/a.jpg", "Ann/b.png", "Bob/Bob_0002.jpg", "Cy/7.jpg"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(encode_jpeg(_face(rng)))
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("# my pairs\nAnn\ta\tb\nAnn\ta.jpg\tBob\t2\nAnn/b.png Cy/7.jpg 0\nCy 7 7\n")
    refs = read_pair_list(pairs, root)
    assert [(r.a.relative_to(root).as_posix(), r.b.relative_to(root).as_posix(), r.issame) for r in refs] == [
        ("Ann/a.jpg", "Ann/b.png", True), ("Ann/a.jpg", "Bob/Bob_0002.jpg", False),
        ("Ann/b.png", "Cy/7.jpg", False), ("Cy/7.jpg", "Cy/7.jpg", True)]
    assert {r.fold for r in refs} == {0}
    assert refs[2].where == "pairs.txt line 4"  # the comment line counts: the user's own line numbers


def test_an_lfw_header_gives_lfw_folds(tmp_path):
    root = tmp_path
    body = "".join(f"P{i}\t1\t2\n" for i in range(2)) + "".join(f"P{i}\t1\tQ{i}\t1\n" for i in range(2))
    (tmp_path / "pairs.txt").write_text("2\t1\n" + body)
    refs = read_pair_list(tmp_path / "pairs.txt", root)
    assert [r.fold for r in refs] == [0, 0, 1, 1]
    assert refs[0].a == root / "P0" / "P0_0001.jpg"  # LFW naming for numbers when no file decides


@pytest.mark.parametrize("line, needle", [
    ("../outside\t1\t2", "points outside"),
    ("/etc/passwd x.jpg 1", "points outside"),
    ("Ann\t1", "got 2 fields"),
])
def test_a_bad_line_is_named(tmp_path, line, needle):
    (tmp_path / "pairs.txt").write_text(f"Ann\t1\t2\n{line}\n")
    with pytest.raises(DataError, match=rf"pairs.txt line 2: .*{needle}"):
        read_pair_list(tmp_path / "pairs.txt", tmp_path)


def _same_diff_pairs(faces: dict[str, np.ndarray], n: int = 12) -> str:
    people = sorted({k.split("/")[0] for k in faces})
    lines = []
    for i in range(n):
        p, q = people[i % len(people)], people[(i + 1) % len(people)]
        lines.append(f"{p}\timg{i % 2}\timg{2 + i % 2}")
        lines.append(f"{p}\timg{i % 4}\t{q}\timg{(i + 1) % 4}")
    return "\n".join(lines) + "\n"


def test_a_users_aligned_folder_is_scored_from_one_spec(tmp_path, rng):
    faces = make_aligned_folder(tmp_path / "mine", rng)
    (tmp_path / "mine" / "pairs.txt").write_text(_same_diff_pairs(faces))
    bench = resolve_benchmark(str(tmp_path / "mine" / "pairs.txt") + "?aligned", None)
    assert (bench.name, bench.fmt, bench.aligned) == ("mine", "pairs", True)
    assert bench.paths[1] == tmp_path / "mine" / "images"
    data = bench.load()
    assert data.images.shape[1:] == (112, 112, 3) and len(data.issame) == 24 and data.issame.sum() == 12
    # declared aligned: the crops are taken as they are, bit for bit
    by_bytes = {v.tobytes() for v in faces.values()}
    assert all(img.tobytes() in by_bytes for img in data.images)
    # an identity-aware embedding separates the pairs: the scoring path sees the right labels
    people = sorted({k.split("/")[0] for k in faces})
    lookup = {faces[k].tobytes(): people.index(k.split("/")[0]) for k in faces}
    emb = np.eye(len(people), dtype=np.float32)[[lookup[i.tobytes()] for i in data.images]]
    emb += rng.normal(0, 0.01, emb.shape).astype(np.float32)
    r = evaluate_embeddings(emb, data, name=bench.name)
    assert r.summary["accuracy"] == 100.0 and r.summary["folds"] == "10 stratified"


def test_raw_images_are_aligned_from_landmarks_not_taken_as_crops(tmp_path, rng):
    root = tmp_path / "raw"
    lines = []
    for p in range(2):
        for k in range(2):
            rel = f"p{p}/{k}.jpg"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(encode_jpeg(_face(rng, 250)))
            lm = ARCFACE_TEMPLATE * 1.8 + 20
            lines.append(f"{rel}\t{' '.join(f'{v:.2f}' for v in lm.reshape(-1))}\t0.9")
    (root / "landmarks.tsv").write_text("\n".join(lines) + "\n")
    (root / "pairs.txt").write_text("p0\t0\t1\np1\t0\t1\np0\t0\tp1\t1\np1\t0\tp0\t1\n" * 5)  # 10 of each
    bench = resolve_benchmark(str(root / "pairs.txt"), None)
    assert not bench.aligned and bench.landmarks == root / "landmarks.tsv"
    assert bench.load().images.shape == (4, 112, 112, 3)
    declared = resolve_benchmark(f"{root / 'pairs.txt'}?aligned", None)  # 250x250 crops are resized, not refused
    assert declared.load().images.shape == (4, 112, 112, 3)


def test_unknown_options_and_missing_images_are_named(tmp_path, rng):
    faces = make_aligned_folder(tmp_path / "mine", rng, people=2, per=4)
    (tmp_path / "mine" / "pairs.txt").write_text(_same_diff_pairs(faces, 2) + "p00\timg0\timg9\n")  # line 5
    with pytest.raises(DataError, match="unknown option 'algined'"):
        resolve_benchmark(f"{tmp_path / 'mine' / 'pairs.txt'}?algined", None)
    with pytest.raises(DataError, match=r"pairs.txt line 5: image .*img9.jpg not found"):
        resolve_benchmark(f"{tmp_path / 'mine' / 'pairs.txt'}?aligned", None).load()


def make_cfp(root: Path, rng, people: int = 4) -> None:
    """A CFP tree in the official layout: 10 frontal + 4 profile per person, 10 folds of 2 + 2 pairs."""
    f_lines, p_lines = [], []
    for n in range(1, people + 1):
        for view, count, lines in (("frontal", 10, f_lines), ("profile", 4, p_lines)):
            for k in range(1, count + 1):
                rel = f"Data/Images/{n:03d}/{view}/{k:02d}.jpg"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                (root / rel).write_bytes(encode_jpeg(_face(rng)))
                lines.append(f"{len(lines) + 1} ../{rel}")
    (root / "Protocol").mkdir(parents=True)
    (root / "Protocol" / "Pair_list_F.txt").write_text("\n".join(f_lines) + "\n")
    (root / "Protocol" / "Pair_list_P.txt").write_text("\n".join(p_lines) + "\n")
    for proto in ("FF", "FP"):
        for fold in range(1, 11):
            d = root / "Protocol" / "Split" / proto / f"{fold:02d}"
            d.mkdir(parents=True)
            second = 10 if proto == "FF" else 4
            same = [f"{1 + (fold % 10)},{second * 0 + 1 + fold % second}", f"{11},{second + 1}"]
            diff = [f"1,{second + 2}", f"{11 + fold % 10},{1 + fold % second}"]
            (d / "same.txt").write_text("\n".join(same) + "\n")
            (d / "diff.txt").write_text("\n".join(diff) + "\n")


def test_cfp_official_layout_gives_ten_folds_and_fp_pairs_into_the_profile_list(tmp_path, rng):
    make_cfp(tmp_path / "cfp", rng)
    pairs = read_cfp_pairs(tmp_path / "cfp", "FP")
    assert len(pairs) == 40 and {p.fold for p in pairs} == set(range(10))
    assert all("frontal" in p.a.as_posix() and "profile" in p.b.as_posix() for p in pairs)
    assert pairs[0].where == "FP/01/same.txt line 1"
    ff = read_cfp_pairs(tmp_path / "cfp", "FF")
    assert all("frontal" in p.b.as_posix() for p in ff)
    bench = resolve_benchmark("cfp_fp", tmp_path)
    assert (bench.fmt, bench.which) == ("cfp", "FP")
    data = bench.load()
    assert len(data.issame) == 40 and len(np.unique(data.folds)) == 10
    one = resolve_benchmark("cfp_ff@2", tmp_path).load()
    assert len(one.issame) == 8


def test_a_cfp_list_cannot_leave_the_cfp_folder(tmp_path, rng):
    make_cfp(tmp_path / "cfp", rng)
    lst = tmp_path / "cfp" / "Protocol" / "Pair_list_P.txt"
    lst.write_text(lst.read_text().replace("../Data/Images/001/profile/01.jpg", "../../outside.jpg", 1))
    with pytest.raises(DataError, match="Pair_list_P.txt line 1: path .* points outside"):
        read_cfp_pairs(tmp_path / "cfp", "FP")
    (tmp_path / "cfp" / "Protocol" / "Split" / "FP" / "03" / "diff.txt").write_text("1,999\n")
    lst.write_text(lst.read_text().replace("../../outside.jpg", "../Data/Images/001/profile/01.jpg"))
    with pytest.raises(DataError, match=r"FP/03/diff.txt line 1: index 999 is not in its pair list"):
        read_cfp_pairs(tmp_path / "cfp", "FP")


def test_make_bin_from_a_pairs_spec_keeps_faces_and_gives_stratified_folds(tmp_path, rng):
    faces = make_aligned_folder(tmp_path / "mine", rng)
    (tmp_path / "mine" / "pairs.txt").write_text(_same_diff_pairs(faces, 20))
    out = tmp_path / "mine.bin"
    cmd = [sys.executable, "-m", "facepipe.pipeline.cli", "data", "make-bin", str(out), "--benchmark",
           f"{tmp_path / 'mine' / 'pairs.txt'}?aligned"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    back = read_bin(out)
    assert len(back.issame) == 40
    for fold in range(10):  # every consecutive fold holds both labels (a label-sorted list would not)
        assert 0 < back.issame[back.folds == fold].sum() < (back.folds == fold).sum()
    data = resolve_benchmark(f"{tmp_path / 'mine' / 'pairs.txt'}?aligned", None).load()
    assert {i.tobytes() for i in back.images} == {i.tobytes() for i in data.images}  # lossless PNG


def test_make_bin_writes_pairs_in_fold_order(tmp_path, rng):
    make_cfp(tmp_path / "cfp", rng)
    data = load_cfp(tmp_path / "cfp", "FP")
    back = read_bin(make_bin(data, tmp_path / "cfp_fp.bin"))
    assert np.array_equal(back.issame, data.issame[np.argsort(data.folds, kind="stable")])


def _inspect(spec: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "facepipe.pipeline.cli", "data", "inspect", spec],
                          capture_output=True, text=True)


def test_data_inspect_reads_cfp_and_pairs_files_and_explains_what_it_cannot_resolve(tmp_path, rng):
    make_cfp(tmp_path / "cfp", rng)
    r = _inspect(str(tmp_path / "cfp"))
    assert r.returncode == 0 and "CFP" in r.stdout and "FF pairs" in r.stdout, r.stdout + r.stderr
    faces = make_aligned_folder(tmp_path / "mine", rng, people=2, per=4)
    (tmp_path / "mine" / "pairs.txt").write_text(_same_diff_pairs(faces, 2))
    r = _inspect(f"{tmp_path / 'mine' / 'pairs.txt'}?aligned")
    assert r.returncode == 0 and "declared aligned" in r.stdout, r.stdout + r.stderr
    r = _inspect(f"{tmp_path / 'mine' / 'pairs.txt'}?images=nowhere")
    assert r.returncode == 2 and "image folder" in r.stderr and "nowhere" in r.stderr, r.stderr
    (tmp_path / "mine" / "images").rename(tmp_path / "mine" / "elsewhere")
    r = _inspect(str(tmp_path / "mine" / "pairs.txt"))
    assert r.returncode == 2 and "none of the" in r.stderr and "images=" in r.stderr, r.stderr


def test_real_cfp_official_layout(data_root):
    root = data_root / "cfp"
    if not (root / "Protocol" / "Split").is_dir():
        pytest.skip(f"CFP not found under {data_root}")
    for proto in ("FP", "FF"):
        pairs = read_cfp_pairs(root, proto)
        assert len(pairs) == 7000 and sum(p.issame for p in pairs) == 3500
        assert {p.fold for p in pairs} == set(range(10))
        assert all(p.a.is_file() and p.b.is_file() for p in pairs)
    data = resolve_benchmark("cfp_fp@1", data_root).load()
    assert len(data.issame) == 700 and data.images.shape[1:] == (112, 112, 3)
    assert data.images.std() > 20  # real faces, not blank crops
