"""Hostile input 2: a full filesystem is one line naming the file and the free space, and loses nothing.
Run on a real 1 MiB tmpfs (needs root to mount; skipped with the reason elsewhere)."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from facepipe.pipeline.errors import DiskFull
from facepipe.pipeline.io import atomic_torch_save, atomic_write_bytes


@pytest.fixture
def tiny_fs(tmp_path):
    mnt = tmp_path / "full"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a 1 MiB tmpfs here ({res.stderr.strip() or 'not root'})")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)  # lazy: a memory map of a failed build may hold it


def test_a_write_that_does_not_fit_names_the_file_and_keeps_the_old_one(tiny_fs):
    target = tiny_fs / "student.pt"
    atomic_write_bytes(target, b"old")
    with pytest.raises(DiskFull, match=r"student\.pt: no space left on its filesystem \(\d+\.\d MiB free\)"):
        atomic_write_bytes(target, b"\0" * (2 << 20))
    assert target.read_bytes() == b"old"
    assert [p.name for p in tiny_fs.iterdir()] == ["student.pt"]  # no temporary left behind


def test_a_checkpoint_on_a_full_disk_is_diskfull_not_a_torch_traceback(tiny_fs):
    import torch

    with pytest.raises(DiskFull, match=r"last\.pt: no space left"):
        atomic_torch_save(tiny_fs / "last.pt", {"w": torch.zeros(600_000)})


def test_the_embedding_cache_checks_room_before_allocating(tiny_fs, rng):
    from facepipe.pipeline.eval.cache import TeacherCache

    class Emb:
        dim, name, runtime, normalized = 512, "e", "torch", False

        def embed(self, x, batch_size=64):
            return np.ones((len(x), 512), np.float32)

    class Faces:
        def __len__(self):
            return 1000  # 1000 x 512 float32 = 2 MB > 1 MiB

        def image(self, i):
            return np.zeros((112, 112, 3), np.uint8)

        def content_hash(self):
            return "x"

    with pytest.raises(DiskFull, match=r"k\.npy: no space left .* MiB needed"):
        TeacherCache.build(Emb(), Faces(), tiny_fs / "cache", "k", show_progress=False)
    assert not any(p.suffix == ".partial" for p in (tiny_fs / "cache").iterdir())


def test_a_memory_mapped_cache_reserves_its_blocks_so_a_full_disk_is_not_sigbus(tiny_fs, monkeypatch):
    """Past the up-front check (another writer may fill the disk meanwhile), the blocks are reserved before the
    memory map is written: ENOSPC there, not SIGBUS at the first store into a sparse page."""
    from facepipe.pipeline.eval import cache as cache_mod
    from facepipe.pipeline.io import reserve_space

    big = tiny_fs / "sparse.npy"
    with open(big, "wb") as f:
        f.truncate(8 << 20)  # 8 MiB sparse file on a 1 MiB filesystem: fine until its pages are written
    with pytest.raises(DiskFull, match=r"sparse\.npy: no space left .* 8\.0 MiB needed"):
        reserve_space(big, 8 << 20)
    big.unlink()
    monkeypatch.setattr(cache_mod, "free_bytes", lambda folder: 1 << 40)  # the check passes: reserving must catch it
    test_the_embedding_cache_checks_room_before_allocating(tiny_fs, None)
