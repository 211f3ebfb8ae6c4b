"""Hostile input 8: kill -9 of a bench leaves no timing child running, and what killed processes left (probe
folders, partial cache arrays) is removed by the next run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from facepipe.pipeline.io import pid_alive, remove_orphans


def _wait(cond, timeout=30.0) -> bool:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if cond():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_the_timing_child_dies_with_a_bench_killed_by_sigkill(tmp_path):
    from facepipe.pipeline.bench.latency import PROBE_PREFIX

    # a parent that starts a probe child which sleeps instead of timing (the child is what must not survive)
    script = textwrap.dedent(f"""
        import subprocess, sys, time
        from facepipe.pipeline.bench import latency
        latency.probe_command = lambda job, out: [sys.executable, "-c", "import time; time.sleep(600)"]
        latency.measure_latency({str(tmp_path / 'x.onnx')!r}, "onnx", timeout_s=600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script])
    tmp = Path(tempfile.gettempdir())
    assert _wait(lambda: list(tmp.glob(f"{PROBE_PREFIX}{parent.pid}-*"))), "the bench never started its probe"
    probe_dir = next(tmp.glob(f"{PROBE_PREFIX}{parent.pid}-*"))
    kids = lambda: subprocess.run(["pgrep", "-P", str(parent.pid)], capture_output=True, text=True).stdout.split()  # noqa: E731
    assert _wait(kids), "no probe child found"  # the probe folder exists a moment before the child does
    child = int(kids()[0])
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    assert _wait(lambda: not pid_alive(child) or _zombie(child), 10), f"probe child {child} outlived its bench"
    assert probe_dir.exists()  # SIGKILL runs no cleanup: the next bench removes it
    from facepipe.pipeline.bench.latency import _probe_pid

    removed = remove_orphans(tmp, f"{PROBE_PREFIX}*", _probe_pid)
    assert probe_dir in removed and not probe_dir.exists()


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def test_partial_cache_arrays_of_killed_builders_are_removed_by_the_next_build(tmp_path):
    from facepipe.pipeline.eval.cache import TeacherCache

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    cache = tmp_path / "cache"
    cache.mkdir()
    orphan = cache / f".otherkey.npy.{dead.pid}.partial"
    orphan.write_bytes(b"\0" * 128)
    live = cache / f".busykey.npy.{os.getppid()}.partial"  # a live builder's (our parent's pid): kept
    live.write_bytes(b"\0" * 128)

    from facepipe.pipeline.embedder import Preprocess

    class Emb:
        dim, name, runtime, normalized, preprocess = 4, "e", "torch", False, Preprocess()

        def embed(self, x, batch_size=64):
            return np.ones((len(x), 4), np.float32)

    class Faces:
        def __len__(self):
            return 3

        def image(self, i):
            return np.zeros((112, 112, 3), np.uint8)

        def content_hash(self):
            return "x"

    TeacherCache.build(Emb(), Faces(), cache, "k", show_progress=False)
    assert not orphan.exists() and live.exists()
