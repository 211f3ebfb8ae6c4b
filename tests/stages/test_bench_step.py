"""`facepipe distill --bench-step N` end to end (data-free, so it needs no face data): the legacy settings and
this config timed on the same batches, the split into parts, and the FLOP floor, as a table and JSON."""

from __future__ import annotations

import json

import pytest


def test_bench_step_times_legacy_and_configured_loops(tmp_path, monkeypatch, capsys, data_free_config):
    from facepipe.pipeline.cli import main
    from facepipe.pipeline.train.steptime import PARTS

    monkeypatch.setenv("COLUMNS", "200")
    out = tmp_path / "bench.json"
    sets = ["data.generated=24", "data.generated_eval=16", "distill.batch_size=8", "distill.steps=4",
            "distill.tensorboard=false", "run.name=bench", "distill.augment.views=2"]
    args = ["distill", "-c", str(data_free_config), "--bench-step", "2", "--bench-json", str(out)]
    for s in sets:
        args += ["--set", s]
    rc = main(args)
    captured = capsys.readouterr()
    output = captured.out + captured.err
    assert rc in (0, None), output
    report = json.loads(out.read_text())
    rows = {r["setting"]: r for r in report["rows"]}
    assert set(rows) == {"legacy", "this config"}
    assert rows["legacy"]["settings"] == {"data": "files", "num_workers": 2, "compile": "off"}
    assert rows["this config"]["data_mode"] == "decoded" and rows["this config"]["num_workers"] == 0
    assert not rows["this config"]["compiled"]  # 4 steps: auto does not compile
    for r in rows.values():
        assert r["batch"] == 8 and r["img_per_s"] > 0
        assert abs(sum(r[f"{p}_ms"] for p in PARTS) - r["step_ms"]) <= 0.02 * r["step_ms"] + 0.6
        assert r["floor_fraction"] == pytest.approx(r["img_per_s"] / report["floor_img_per_s"], abs=1e-4)
    assert report["sgemm_gflops"] > 1 and 1.2 < report["gflop_per_image"] < 1.5
    text = " ".join(output.split())
    assert "floor: sgemm" in text and "legacy" in text and "of floor" in text
