"""Content hashes (files, trees, memoised), code versions, config diffs and manifest files."""

from __future__ import annotations

import json
import os
import time

import pytest

from facepipe.pipeline import manifest as mf
from facepipe.pipeline.io import sha256_file, sha256_json
from facepipe.pipeline.manifest import HashCache, config_changes, hash_path


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEPIPE_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def counted(monkeypatch):
    """Count real file hashing done by the cache."""
    calls: list[str] = []
    real = mf.sha256_file

    def counting(path, *a, **kw):
        calls.append(str(path))
        return real(path, *a, **kw)

    monkeypatch.setattr(mf, "sha256_file", counting)
    return calls


@pytest.fixture
def no_racy_window(monkeypatch):
    """Memoise files written just now (ctime cannot be set back, so tests cannot age their files)."""
    monkeypatch.setattr(mf, "RACY_S", 0.0)


def _age(path, seconds=3600):
    """Set a file's mtime into the past."""
    t = time.time_ns() - int(seconds * 1e9)
    os.utime(path, ns=(t, t))


def make_tree(root, files: dict[str, str]):
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def test_file_hash_is_sha256_of_bytes(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"\x00\x01face")
    assert hash_path(f) == (sha256_file(f), 6)


def test_tree_hash_covers_names_and_contents_not_order_or_dotfiles(tmp_path):
    a = make_tree(tmp_path / "a", {"x/1.jpg": "one", "y/2.jpg": "two", "3.txt": "three"})
    b = make_tree(tmp_path / "b", {"3.txt": "three", "y/2.jpg": "two", "x/1.jpg": "one"})
    ha, size = hash_path(a)
    assert hash_path(b)[0] == ha and size == len("onetwothree")
    expected = sha256_json([[rel, sha256_file(a / rel)] for rel in ("3.txt", "x/1.jpg", "y/2.jpg")])
    assert ha == expected
    (a / ".DS_Store").write_text("junk")
    make_tree(a, {".git/HEAD": "ref", "x/.hidden": "h"})
    assert hash_path(a)[0] == ha
    (a / "x" / "1.jpg").write_text("ONE")
    assert hash_path(a)[0] != ha
    (a / "x" / "1.jpg").write_text("one")
    (a / "x" / "1.jpg").rename(a / "x" / "1b.jpg")
    assert hash_path(a)[0] != ha


def test_cache_memoises_files_across_instances(tmp_path, counted, no_racy_window):
    d = make_tree(tmp_path / "set", {f"id{i}/img.jpg": f"face {i}" for i in range(20)})
    cache = HashCache()
    first = hash_path(d, cache)
    assert len(counted) == 20
    cache.save()
    assert (tmp_path / "cache" / "hashes.json").is_file()
    counted.clear()
    assert hash_path(d, HashCache()) == first
    assert counted == [], "unchanged files must come from the cache"
    changed = d / "id3" / "img.jpg"
    changed.write_text("FACE 3")  # same size, new mtime/ctime
    _age(changed, 60)
    assert hash_path(d, HashCache())[0] != first[0]
    assert counted == [str(changed)]


def test_cache_does_not_trust_restored_mtime(tmp_path, counted, no_racy_window):
    f = tmp_path / "w.bin"
    f.write_text("weights A")
    _age(f)
    cache = HashCache()
    old = cache.sha256(f)
    cache.save()
    st = os.stat(f)
    time.sleep(0.02)
    f.write_text("weights B")  # same size
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # `touch -r`: mtime restored, ctime moves on
    assert HashCache().sha256(f) == sha256_file(f) != old


def test_recently_written_files_are_not_memoised(tmp_path, counted):
    f = tmp_path / "fresh.bin"
    f.write_text("v1")
    cache = HashCache()
    assert cache.sha256(f) == sha256_file(f)
    cache.save()
    # a same-size edit in the same timestamp tick would be invisible to the stat signature
    saved = tmp_path / "cache" / "hashes.json"
    assert not saved.exists() or str(f) not in json.loads(saved.read_text())
    f.write_text("v2")
    assert HashCache().sha256(f) == sha256_file(f)
    assert len(counted) == 2


def test_cache_survives_corruption_and_merges_and_prunes(tmp_path, no_racy_window):
    path = tmp_path / "cache" / "hashes.json"
    path.parent.mkdir()
    path.write_text("{not json")
    f, g = tmp_path / "f.txt", tmp_path / "g.txt"
    f.write_text("f")
    g.write_text("g")
    c1, c2 = HashCache(), HashCache()
    assert c1.sha256(f) == sha256_file(f)
    c2.sha256(g)
    c1.save()
    c2.save()  # merges with what c1 wrote instead of overwriting it
    assert set(json.loads(path.read_text())) == {str(f), str(g)}
    f.unlink()
    c3 = HashCache()
    h = tmp_path / "h.txt"
    h.write_text("h")
    c3.sha256(h)
    c3.save()
    assert set(json.loads(path.read_text())) == {str(g), str(h)}, "entries of deleted files are pruned"


def test_code_version_follows_module_source(tmp_path, monkeypatch):
    (tmp_path / "fp_code_mod_a.py").write_text("A = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    v1 = mf.code_version(["fp_code_mod_a"])
    assert v1 == mf.code_version(["fp_code_mod_a"])
    (tmp_path / "fp_code_mod_a.py").write_text("A = 2\n")
    assert mf.code_version(["fp_code_mod_a"]) != v1
    assert mf.module_source_hash("no_such_module_xyz") == "unavailable"


def test_code_version_includes_facepipe_version(tmp_path, monkeypatch):
    (tmp_path / "fp_code_mod_b.py").write_text("B = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = mf.code_version(["fp_code_mod_b"])
    monkeypatch.setattr(mf, "__version__", "9.9.9")
    assert mf.code_version(["fp_code_mod_b"]) != before


def test_config_changes_name_dotted_paths():
    old = {"teacher": {"flip": False, "preprocess": {"size": 112}, "check": ["lfw"]},
           "distill": {"losses": [{"name": "kd", "weight": 1.0}], "lr": 0.1}}
    new = {"teacher": {"flip": True, "preprocess": {"size": 112, "color": "RGB"}, "check": ["lfw", "cfp_fp"]},
           "distill": {"losses": [{"name": "kd", "weight": 2.0}]}}
    assert config_changes(old, new) == [
        "config teacher.flip changed: False -> True",
        "config teacher.preprocess.color added: 'RGB'",
        "config teacher.check changed: ['lfw'] -> ['lfw', 'cfp_fp']",
        "config distill.losses[0].weight changed: 1.0 -> 2.0",
        "config distill.lr removed (was 0.1)",
    ]
    assert config_changes(old, json.loads(json.dumps(old))) == []
    assert config_changes({"a": 1}, {"a": True}) == ["config a changed: 1 -> True"]


def test_manifest_files_and_stored_paths(tmp_path):
    d = tmp_path / "teacher"
    assert mf.read_manifest(d) is None
    mf.write_manifest(d, {"stage": "teacher", "status": "complete"})
    assert mf.read_manifest(d) == {"stage": "teacher", "status": "complete"}
    assert not list(d.glob(".tmp-*"))
    (d / "manifest.json").write_text('{"stage": "teach')  # torn write from some other tool
    assert mf.read_manifest(d) == {"status": "unreadable"}
    reasons = mf.stale_reasons(mf.read_manifest(d), stage="teacher", code="c", config={}, inputs={},
                               upstreams=(), stage_dir=d, cache=HashCache())
    assert reasons == ["previous run incomplete (manifest status 'unreadable')"]
    mf.remove_manifest(d)
    assert mf.read_manifest(d) is None
    inside, outside = d / "sub" / "m.onnx", tmp_path / "elsewhere.bin"
    assert mf.stored_path(d, inside) == "sub/m.onnx"
    assert mf.stored_path(d, outside) == str(outside)
    assert mf.resolve_stored(d, "sub/m.onnx") == inside and mf.resolve_stored(d, str(outside)) == outside


def test_env_info_reports_versions_and_device():
    info = mf.env_info("cpu")
    assert info["device"] == "cpu" and info["python"].count(".") == 2
    assert info["onnxruntime"] and info["torch"]
    assert "tensorrt" in info


def test_lfw_tree_status_is_memoised(lfw_root, counted):
    """A second hash of the real LFW folder (13k files) reads no file bytes."""
    cache = HashCache()
    t0 = time.perf_counter()
    first = hash_path(lfw_root, cache, label="lfw")
    cold = time.perf_counter() - t0
    cache.save()
    n = len(counted)
    counted.clear()
    t0 = time.perf_counter()
    assert hash_path(lfw_root, HashCache(), label="lfw") == first
    warm = time.perf_counter() - t0
    assert n > 10_000 and counted == []
    print(f"LFW tree hash: {n} files, cold {cold:.2f} s, warm {warm:.2f} s")
