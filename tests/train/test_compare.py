"""`facepipe compare`: every (method, seed) is a pipeline run; the summary is mean ± sample std of what the
runs' metrics.json hold, and finished runs are not trained again."""

from __future__ import annotations

import json
import statistics

import pytest

from facepipe.pipeline.cli import main
from facepipe.pipeline.errors import ConfigError
from facepipe.pipeline.manifest import read_manifest
from facepipe.pipeline.train.compare import METHODS, mean_std, pick_methods

from train_synth import write_project


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEPIPE_CACHE", str(tmp_path / "fpcache"))


def test_mean_std_is_the_sample_standard_deviation():
    assert mean_std([70.0, 72.0, 74.0]) == (72.0, 2.0)
    assert mean_std([65.5]) == (65.5, 0.0)


def test_methods_are_picked_in_table_order_and_unknown_ones_named():
    assert [m.name for m in pick_methods(["iled_rpsd", "arcface"])] == ["arcface", "iled_rpsd"]
    assert len(pick_methods(None)) == len(METHODS)
    with pytest.raises(ConfigError, match="'adaface'.*known methods: arcface"):
        pick_methods(["adaface"])


def test_compare_trains_each_method_and_seed_and_summarises(tmp_path, capsys):
    cfg = write_project(tmp_path)
    args = ["compare", "-c", str(cfg), "--method", "arcface", "--method", "feature_kd", "--seeds", "2",
            "--steps", "2", "--set", "distill.teacher_mode=cache"]
    assert main(args) == 0
    runs = tmp_path / "runs"
    names = [f"compare-{m}-s{s}" for m in ("arcface", "feature_kd") for s in (0, 1)]
    finished = {n: read_manifest(runs / n / "distill")["finished"] for n in names}
    finals = [json.loads((runs / n / "distill" / "metrics.json").read_text())["train"]["final_losses"]["loss"]
              for n in names]
    assert len(set(finals)) == len(finals)  # the summary's input: four distinct runs (methods and seeds reach them)
    summary = json.loads((runs / "compare.json").read_text())
    assert summary["metrics"] == ["tiny_accuracy"]
    for row in summary["rows"]:
        values = [json.loads((runs / f"compare-{row['method']}-s{s}" / "distill" / "metrics.json").read_text())
                  ["metrics"]["tiny_accuracy"] for s in (0, 1)]
        assert row["seeds"] == [0, 1] and row["tiny_accuracy"]["values"] == values
        assert row["tiny_accuracy"]["mean"] == pytest.approx(statistics.mean(values))
        assert row["tiny_accuracy"]["std"] == pytest.approx(statistics.stdev(values))
        assert row["steps"] == 2
    assert "| arcface | arcface (no KD) | 2 |" in (runs / "compare.md").read_text()
    assert (runs / "compare.png").stat().st_size > 0
    assert "facepipe compare" in capsys.readouterr().out

    assert main(args) == 0  # finished runs are fresh: not trained again
    assert {n: read_manifest(runs / n / "distill")["finished"] for n in names} == finished
    assert main([*args, "--no-run", "--seeds", "3"]) == 0  # seed 2 never ran: summarised from what finished
    assert json.loads((runs / "compare.json").read_text())["rows"][0]["seeds"] == [0, 1]
