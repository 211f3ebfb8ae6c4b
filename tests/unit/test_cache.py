"""Teacher embedding cache: reuse on the same key, stale on any change, never a half-written cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from torch import nn

from facepipe.pipeline.eval.cache import TeacherCache, cache_key, open_or_build
from facepipe.pipeline.config import PreprocessOverride, TeacherConfig
from facepipe.pipeline.errors import DataError, ModelError
from facepipe.pipeline.io import sha256_json
from facepipe.pipeline.teachers import load_teacher, resolve_teacher

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.* deprecation notices


class Tiny(nn.Module):
    """A small conv net: (N, 3, 112, 112) -> (N, 16)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 8, stride=8)
        self.fc = nn.Linear(8 * 14 * 14, 16)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))


class Faces:
    """A FaceSource stand-in: images in memory, a listing hash from a tag, optional failure / delay."""

    def __init__(self, images, tag="v1", fail_at=None, delay=0.0, skip=()):
        self.images, self.tag, self.fail_at, self.delay, self.skip = images, tag, fail_at, delay, set(skip)
        self.reads = 0

    def __len__(self):
        return len(self.images)

    def image(self, i):
        if i == self.fail_at:
            raise DataError(f"face {i}: corrupt JPEG")
        self.reads += 1
        time.sleep(self.delay)
        return None if i in self.skip else self.images[i]  # None: unreadable under data.on_error=skip

    def content_hash(self):
        return sha256_json({"tag": self.tag, "n": len(self.images)})


def save_teacher(path, seed=0):
    torch.manual_seed(seed)
    torch.jit.save(torch.jit.trace(Tiny().eval(), torch.zeros(1, 3, 112, 112)), str(path))
    return path


@pytest.fixture
def teacher(tmp_path):
    path = save_teacher(tmp_path / "tiny.pt")
    return resolve_teacher(TeacherConfig(source=str(path), embedding_size=16, preprocess={"size": 112}))


@pytest.fixture
def faces(rng):
    return rng.integers(0, 256, size=(20, 112, 112, 3), dtype=np.uint8)


def test_build_then_reuse(teacher, faces, tmp_path):
    src, emb = Faces(faces), teacher.load()
    key = cache_key(teacher, src, flip=False)
    assert TeacherCache.open(tmp_path / "c", key) is None
    built = TeacherCache.build(emb, src, tmp_path / "c", key, batch_size=7, show_progress=False)
    np.testing.assert_allclose(built.embeddings, emb.embed(faces), rtol=1e-6, atol=1e-6)
    assert built.flipped is None and built.n == 20 and built.dim == 16
    meta = json.loads((tmp_path / "c" / f"{key}.json").read_text())
    assert meta["complete"] is True and meta["key"] == key and meta["n"] == 20 and meta["dim"] == 16
    assert meta["data"] == src.content_hash() and meta["preprocess"] == emb.preprocess.to_dict()
    assert meta["flip"] is False and meta["teacher"]["name"] == "tiny"

    again = TeacherCache.open(tmp_path / "c", key)
    assert isinstance(again.embeddings, np.memmap)
    np.testing.assert_array_equal(again.embeddings, built.embeddings)

    # open_or_build reuses it without loading the teacher or reading a single image
    teacher.load = lambda **kw: pytest.fail("the teacher must not be loaded for a fresh cache")
    src2 = Faces(faces)
    cache, reused = open_or_build(teacher, src2, tmp_path / "c")
    assert reused and src2.reads == 0 and cache.key == key


def test_concurrent_builds_of_one_entry_both_succeed(teacher, faces, tmp_path):
    """Two builders of the same key (two jobs scoring one model) are serialised by the entry's lock; without
    it the second removed the first's partial files mid-build (FileNotFoundError on the final rename)."""
    from concurrent.futures import ThreadPoolExecutor

    emb = teacher.load()
    key = cache_key(teacher, Faces(faces), flip=False)

    def build(_):
        return TeacherCache.build(emb, Faces(faces, delay=0.005), tmp_path / "c", key, batch_size=4,
                                  show_progress=False)

    with ThreadPoolExecutor(2) as pool:
        caches = list(pool.map(build, range(2)))
    for c in caches:
        np.testing.assert_allclose(c.embeddings, emb.embed(faces), rtol=1e-6, atol=1e-6)
    assert TeacherCache.open(tmp_path / "c", key) is not None
    assert not list((tmp_path / "c").glob("*.partial"))


def test_flip_stores_the_mirrored_faces(teacher, faces, tmp_path):
    emb = teacher.load()
    src = Faces(faces)
    teacher.load = lambda **kw: pytest.fail("a given embedder is used, the teacher is not loaded again")
    cache, reused = open_or_build(teacher, src, tmp_path, flip=True, batch_size=8, embedder=emb,
                                  show_progress=False)
    assert not reused
    mirror = np.ascontiguousarray(faces[:, :, ::-1])
    np.testing.assert_allclose(cache.embeddings, emb.embed(faces), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(cache.flipped, emb.embed(mirror), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(cache.embeddings + cache.flipped, emb.embed(faces, flip=True), rtol=1e-5, atol=1e-5)
    assert cache.key != cache_key(teacher, src, flip=False)


def test_skipped_faces_get_nan_rows_and_are_listed(teacher, faces, tmp_path):
    emb = teacher.load()
    src = Faces(faces[:10], skip={0, 1, 2, 3, 7})  # the whole first batch of 4 and one more
    cache, _ = open_or_build(teacher, src, tmp_path, flip=True, batch_size=4, show_progress=False)
    assert cache.skipped.tolist() == [0, 1, 2, 3, 7]
    assert cache.valid.tolist() == [False] * 4 + [True] * 3 + [False] + [True] * 2
    for arr in (cache.embeddings, cache.flipped):
        assert np.isnan(arr[~cache.valid]).all() and np.isfinite(arr[cache.valid]).all()
    np.testing.assert_allclose(cache.embeddings[cache.valid], emb.embed(faces[:10][cache.valid]), rtol=1e-6, atol=1e-6)
    assert TeacherCache.open(tmp_path, cache.key).skipped.tolist() == [0, 1, 2, 3, 7]


def test_key_changes_with_teacher_data_preprocess_and_flip(teacher, faces, tmp_path):
    src = Faces(faces)
    key = cache_key(teacher, src, False)
    assert key == cache_key(resolve_teacher(teacher.cfg), Faces(faces), False)  # deterministic
    others = {
        "flip": cache_key(teacher, src, True),
        "data": cache_key(teacher, Faces(faces, tag="v2"), False),
        "preprocess": cache_key(resolve_teacher(teacher.cfg.model_copy(
            update={"preprocess": PreprocessOverride(mean=[0, 0, 0])})), src, False),
    }
    save_teacher(teacher.files[0], seed=1)  # same path, new weights
    others["teacher file"] = cache_key(resolve_teacher(teacher.cfg), src, False)
    assert len({key, *others.values()}) == 5, others

    TeacherCache.build(teacher.load(), src, tmp_path, key, show_progress=False)
    assert TeacherCache.open(tmp_path, key) is not None
    for what, k in others.items():
        assert TeacherCache.open(tmp_path, k) is None, what


def test_stale_or_damaged_caches_are_not_opened(teacher, faces, tmp_path):
    src = Faces(faces[:6])
    key = cache_key(teacher, src, True)
    TeacherCache.build(teacher.load(), src, tmp_path, key, flip=True, show_progress=False)
    meta_path = tmp_path / f"{key}.json"
    good = json.loads(meta_path.read_text())
    assert TeacherCache.open(tmp_path, key) is not None

    def opened_with(**changes):
        meta_path.write_text(json.dumps({**good, **changes}))
        return TeacherCache.open(tmp_path, key)

    assert opened_with(complete=False) is None
    assert opened_with(n=7) is None                      # shape disagrees with the array
    assert opened_with(key="0" * 64) is None             # sidecar of another key
    assert opened_with(format=99) is None
    assert opened_with() is not None
    meta_path.write_text("{not json")
    assert TeacherCache.open(tmp_path, key) is None
    meta_path.write_text(json.dumps(good))
    (tmp_path / f"{key}.flip.npy").unlink()              # the mirrored half is missing
    assert TeacherCache.open(tmp_path, key) is None
    TeacherCache.build(teacher.load(), src, tmp_path, key, flip=True, show_progress=False)
    npy = tmp_path / f"{key}.npy"
    npy.write_bytes(npy.read_bytes()[:-40])              # truncated
    assert TeacherCache.open(tmp_path, key) is None


def test_failed_build_leaves_nothing_reusable(teacher, faces, tmp_path):
    tmp_path = tmp_path / "cache"
    emb = teacher.load()
    key = cache_key(teacher, Faces(faces), False)
    TeacherCache.build(emb, Faces(faces), tmp_path, key, show_progress=False)
    assert TeacherCache.open(tmp_path, key) is not None
    # a rebuild of the same key that dies half way invalidates the old one instead of mixing the two
    with pytest.raises(DataError, match="face 13"):
        TeacherCache.build(emb, Faces(faces, fail_at=13), tmp_path, key, batch_size=4, show_progress=False)
    assert TeacherCache.open(tmp_path, key) is None
    left = sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".lock")  # the entry's lock file stays
    assert left == [f"{key}.npy"]  # no sidecar, no temp files


def test_killed_build_is_not_reused(teacher, faces, tmp_path):
    """SIGKILL a build in another process mid-way: no cleanup runs, and still nothing is reused."""
    cache_dir = tmp_path / "cache"
    np.save(tmp_path / "faces.npy", faces)
    script = textwrap.dedent(f"""
        import sys, numpy as np, torch
        torch.set_num_threads(1)
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_cache import Faces
        from facepipe.pipeline.eval.cache import TeacherCache, cache_key
        from facepipe.pipeline.config import TeacherConfig
        from facepipe.pipeline.teachers import resolve_teacher
        src = resolve_teacher(TeacherConfig(source={str(teacher.files[0])!r}, embedding_size=16, preprocess={{"size": 112}}))
        faces = Faces(np.load({str(tmp_path / 'faces.npy')!r}), delay=0.5)
        TeacherCache.build(src.load(), faces, {str(cache_dir)!r}, cache_key(src, faces, False), batch_size=2,
                           show_progress=False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not list(cache_dir.glob(".*.partial")):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the build never started"
            time.sleep(0.1)
        time.sleep(0.5)
    finally:
        proc.kill()
        proc.wait()
    src = Faces(faces)
    key = cache_key(teacher, src, False)
    assert list(cache_dir.glob(".*.partial")), "the killed build should have left its temp file"
    assert TeacherCache.open(cache_dir, key) is None
    cache, reused = open_or_build(teacher, src, cache_dir, show_progress=False)
    assert not reused and src.reads == len(faces)
    assert not list(cache_dir.glob(".*.partial"))  # the next build cleared the leftovers
    np.testing.assert_allclose(cache.embeddings, teacher.load().embed(faces), rtol=1e-6, atol=1e-6)


def test_dim_mismatch_checked_before_and_after_caching(teacher, faces, tmp_path):
    src = Faces(faces[:4])
    wrong = resolve_teacher(teacher.cfg.model_copy(update={"embedding_size": 512}))
    with pytest.raises(ModelError, match="teacher tiny gives 16-d embeddings but teacher.embedding_size is 512"):
        open_or_build(wrong, src, tmp_path)
    assert src.reads == 0 and not list(tmp_path.glob("*.npy"))  # refused before any image was read
    open_or_build(teacher, src, tmp_path, show_progress=False)
    with pytest.raises(ModelError, match="16-d embeddings \\(cached"):
        open_or_build(wrong, src, tmp_path)
    with pytest.raises(ModelError):
        load_teacher(wrong.cfg)


def test_cli_cache_builds_then_reuses(teacher, faces, tmp_path, monkeypatch):
    import typer
    from typer.testing import CliRunner

    from facepipe.pipeline.commands import teacher as teacher_cmds

    monkeypatch.setattr(teacher_cmds, "_open_train_source", lambda cfg: Faces(faces[:10]))
    app = typer.Typer()
    teacher_cmds.register(app)
    cfg = tmp_path / "pipeline.yaml"
    cfg.write_text(f"run:\n  dir: runs\n  name: t1\nteacher:\n  source: {teacher.files[0]}\n  embedding_size: 16\n  preprocess: {{size: 112}}\n")
    runner = CliRunner()
    r1 = runner.invoke(app, ["teacher", "cache", "-c", str(cfg)])
    assert r1.exit_code == 0, r1.output
    assert "teacher cache written" in r1.output and "(10 x 16;" in r1.output
    cache_dir = tmp_path / "runs" / "t1" / "teacher" / "cache"
    assert len(list(cache_dir.glob("*.json"))) == 1
    r2 = runner.invoke(app, ["teacher", "cache", "-c", str(cfg)])
    assert r2.exit_code == 0 and "teacher cache is fresh, reusing it" in r2.output
    r3 = runner.invoke(app, ["teacher", "cache", "-c", str(cfg), "--set", "teacher.flip=true",
                             "--dir", str(tmp_path / "other")])
    assert r3.exit_code == 0 and "written" in r3.output and "+ mirrored" in r3.output
    assert len(list((tmp_path / "other").glob("*.flip.npy"))) == 1
    r4 = runner.invoke(app, ["teacher", "cache", "-c", str(cfg), "--rebuild"])
    assert r4.exit_code == 0 and "written" in r4.output
    r5 = runner.invoke(app, ["teacher", "cache", "-c", str(cfg), "--set", "teacher.embedding_size=128"])
    assert isinstance(r5.exception, ModelError)
