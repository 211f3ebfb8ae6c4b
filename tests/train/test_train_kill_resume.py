"""kill -9 in the middle of an epoch, then resume: the final weights equal an uninterrupted run's, bit for bit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch

from facepipe.pipeline.train.checkpoint import load_checkpoint

from train_synth import make_trainer

torch.set_num_threads(1)
HERE = Path(__file__).resolve().parent
KW = dict(epochs=3, save_every=5, bn=True, augment={"flip": True, "shift": 4},
          losses=[{"name": "ada_arc_distill"}, {"name": "arcface", "weight": 0.5},
                  {"name": "angular_kd", "weight": 0.1}])
CHILD = textwrap.dedent("""
    import sys, time, torch
    torch.set_num_threads(1)
    sys.path.insert(0, {here!r})
    from train_synth import make_trainer
    slow = lambda trainer, step: time.sleep(0.3)  # leaves time to kill it mid-epoch
    make_trainer({out!r}, callbacks=[slow], **{kw!r}).fit()
    print("finished", flush=True)
""")


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path):
    out = tmp_path / "killed"
    ckpt = out / "checkpoints" / "last.pt"
    proc = subprocess.Popen([sys.executable, "-c", CHILD.format(here=str(HERE), out=str(out), kw=KW)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not ckpt.exists():
            assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint was written"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert b"finished" not in proc.stdout.read()
    saved = load_checkpoint(ckpt)
    assert saved["step"] == 5 and (saved["sampler"]["epoch"], saved["sampler"]["step"]) == (0, 5)  # mid epoch 0

    resumed = make_trainer(out, **KW).fit()
    reference = make_trainer(tmp_path / "reference", **KW).fit()
    assert resumed.resumed_from == 5 and resumed.step == reference.step == 24
    a = load_checkpoint(out / "checkpoints/last.pt")
    b = load_checkpoint(tmp_path / "reference/checkpoints/last.pt")
    for part in ("model", "loss", "optimizer"):
        flat_a, flat_b = _tensors(a[part]), _tensors(b[part])
        assert flat_a.keys() == flat_b.keys()
        assert all(torch.equal(flat_a[k], flat_b[k]) for k in flat_a), part


def _tensors(tree, prefix=""):
    out = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.update(_tensors(v, f"{prefix}{k}."))
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            out.update(_tensors(v, f"{prefix}{i}."))
    elif isinstance(tree, torch.Tensor):
        out[prefix] = tree
    return out
