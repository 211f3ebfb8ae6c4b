"""Stage runner: fresh/stale decisions, --from/--to/--force/--dry-run, crashes, and the run/status commands."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from facepipe.pipeline import runner
from facepipe.pipeline.config import load_config
from facepipe.pipeline.errors import FacepipeError, StageError
from facepipe.pipeline.io import atomic_path, atomic_write_text, sha256_file
from facepipe.pipeline.manifest import read_manifest
from facepipe.pipeline.runner import StageResult, StageSpec, run_pipeline, stage_status


@pytest.fixture(autouse=True)
def _hash_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEPIPE_CACHE", str(tmp_path / "cache"))


class Toy:
    """Four toy stages: teacher (reads data.src) -> distill -> export <- quantize (independent, switchable).

    Each writes a JSON output derived from its config section and its inputs' bytes, so a change upstream
    changes the bytes downstream; `crash` makes a stage fail half-way through an atomic write.
    """

    def __init__(self, tmp_path: Path):
        self.root = tmp_path
        self.src = tmp_path / "src.txt"
        self.src.write_text("faces v1")
        self.calls: Counter[str] = Counter()
        self.crash: dict[str, BaseException] = {}
        self.seen_inputs: dict[str, dict[str, Path]] = {}

    def _stage(self, name: str):
        def run(ctx: runner.StageContext) -> StageResult:
            self.calls[name] += 1
            self.seen_inputs[name] = dict(ctx.inputs)
            payload = {"config": {s: ctx.config.section(s) for s in self.specs[name].sections},
                       "inputs": {r: sha256_file(p) for r, p in sorted(ctx.inputs.items())}}
            out = ctx.output_path(f"{name}.json")
            with atomic_path(out) as tmp:
                tmp.write_text(json.dumps(payload, sort_keys=True)[:20])
                if name in self.crash:
                    raise self.crash[name]
                tmp.write_text(json.dumps(payload, sort_keys=True))
            return StageResult(outputs={"out": out}, metrics={"calls": self.calls[name], "acc": 0.5})

        return run

    @property
    def specs(self) -> dict[str, StageSpec]:
        return {
            "teacher": StageSpec("teacher", self._stage("teacher"), ("teacher",),
                                 external_inputs=lambda cfg: {"data.src": self.src}),
            "distill": StageSpec("distill", self._stage("distill"), ("distill",), after=("teacher",)),
            "quantize": StageSpec("quantize", self._stage("quantize"), ("quantize",),
                                  enabled=lambda cfg: cfg.quantize.enabled),
            "export": StageSpec("export", self._stage("export"), ("export",), after=("distill", "quantize")),
        }

    def cfg(self, *sets: str):
        return load_config(None, [f"run.dir={self.root / 'runs'}", *sets])

    def run(self, *sets: str, **kw):
        return {o.name: o for o in run_pipeline(self.cfg(*sets), stages=self.specs, **kw)}

    def status(self, *sets: str):
        return {s.name: s for s in stage_status(self.cfg(*sets), stages=self.specs)}

    def stage_dir(self, name: str) -> Path:
        return self.root / "runs" / "default" / name


ALL = ["teacher", "distill", "quantize", "export"]


@pytest.fixture
def toy(tmp_path) -> Toy:
    return Toy(tmp_path)


def statuses(outcomes) -> dict[str, str]:
    """Status of each toy stage (bench, which the toy set lacks, is reported as unavailable)."""
    if "bench" in outcomes:
        assert outcomes["bench"].status == "unavailable"
    return {n: o.status for n, o in outcomes.items() if n != "bench"}


def test_second_run_skips_fresh_stages(toy):
    first = toy.run()
    assert statuses(first) == {n: "ran" for n in ALL}
    assert first["teacher"].reasons == ["never run"]
    second = toy.run()
    assert statuses(second) == {n: "skipped" for n in ALL}
    assert toy.calls == Counter({n: 1 for n in ALL})
    assert {s.name: s.state for s in toy.status().values() if s.name in ALL} == {n: "fresh" for n in ALL}
    assert toy.status()["bench"].state == "unavailable"


def test_manifest_records_inputs_outputs_config_and_env(toy):
    toy.run()
    m = read_manifest(toy.stage_dir("distill"))
    out = toy.stage_dir("distill") / "distill.json"
    assert m["stage"] == "distill" and m["status"] == "complete"
    assert m["outputs"]["out"] == {"path": "distill.json", "sha256": sha256_file(out), "bytes": out.stat().st_size}
    teacher_out = toy.stage_dir("teacher") / "teacher.json"
    assert m["inputs"] == {"teacher.out": {"path": str(teacher_out), "sha256": sha256_file(teacher_out)}}
    assert m["config"] == {"distill": toy.cfg().section("distill")}
    assert m["metrics"] == {"calls": 1, "acc": 0.5}
    assert {"python", "torch", "onnxruntime", "device"} <= set(m["env"])
    assert m["duration_s"] >= 0 and m["started"] <= m["finished"]
    assert len(m["fingerprint"]) == 64 and len(m["code_version"]) == 64
    assert toy.seen_inputs["distill"] == {"teacher.out": teacher_out}
    assert toy.seen_inputs["teacher"] == {"data.src": toy.src}


def test_config_change_stales_exactly_that_stage_and_its_dependents(toy):
    toy.run()
    st = toy.status("distill.lr=0.05")
    assert {n: st[n].state for n in ALL} == {"teacher": "fresh", "distill": "stale", "quantize": "fresh",
                                            "export": "stale"}
    assert st["distill"].reasons == ["config distill.lr changed: 0.1 -> 0.05"]
    assert st["export"].reasons == ["upstream distill is stale"]
    out = toy.run("distill.lr=0.05")
    assert statuses(out) == {"teacher": "skipped", "distill": "ran", "quantize": "skipped", "export": "ran"}
    assert out["export"].reasons == ["upstream distill changed output distill.out"]
    assert toy.calls == Counter({"teacher": 1, "distill": 2, "quantize": 1, "export": 2})
    st = toy.status("teacher.flip=true")
    assert st["teacher"].reasons == ["config teacher.flip changed: False -> True"]


def test_input_file_change_stales_exactly_the_dependent_stages(toy):
    toy.run()
    before = sha256_file(toy.src)
    toy.src.write_text("faces v2")
    st = toy.status()
    assert {n: st[n].state for n in ALL} == {"teacher": "stale", "distill": "stale", "quantize": "fresh",
                                            "export": "stale"}
    assert st["teacher"].reasons == [f"input data.src changed (sha256 {before[:8]}.. -> {sha256_file(toy.src)[:8]}..)"]
    out = toy.run()
    assert statuses(out) == {"teacher": "ran", "distill": "ran", "quantize": "skipped", "export": "ran"}
    assert out["distill"].reasons == ["upstream teacher changed output teacher.out"]


def test_same_bytes_under_a_new_mtime_is_not_a_change(toy):
    toy.run()
    toy.src.write_text("faces v1")
    assert statuses(toy.run()) == {n: "skipped" for n in ALL}


def test_force_reruns_only_that_stage_and_dependents_follow_by_hash(toy):
    toy.run()
    out = toy.run(force=["teacher"])
    # teacher's output is deterministic, so its dependents see identical input bytes and stay fresh
    assert statuses(out) == {"teacher": "ran", "distill": "skipped", "quantize": "skipped", "export": "skipped"}
    assert out["teacher"].reasons == ["forced (--force)"]
    assert toy.calls["teacher"] == 2 and toy.calls["distill"] == 1


def test_from_to_limits_the_range_and_from_forces(toy):
    toy.run()
    out = toy.run(from_="distill", to="quantize")
    assert statuses(out) == {"distill": "ran", "quantize": "ran"}
    assert out["distill"].reasons == ["forced (--from distill)"]
    assert toy.calls == Counter({"teacher": 1, "distill": 2, "quantize": 2, "export": 1})
    out = toy.run(to="teacher")
    assert statuses(out) == {"teacher": "skipped"}
    with pytest.raises(StageError, match="--from export comes after --to teacher"):
        toy.run(from_="export", to="teacher")
    with pytest.raises(StageError, match="outside the --from/--to range"):
        toy.run(to="teacher", force=["export"])


def test_from_needs_upstream_manifest(toy):
    with pytest.raises(StageError, match="upstream 'teacher' has no complete manifest.*facepipe run --to teacher"):
        toy.run(from_="distill")
    assert toy.calls["distill"] == 0


def test_dry_run_executes_nothing(toy):
    plan = toy.run(dry_run=True)
    assert statuses(plan) == {n: "would run" for n in ALL}
    assert plan["teacher"].reasons == ["never run"]
    assert plan["distill"].reasons == ["never run", "upstream teacher will run first"]
    assert not toy.calls and not (toy.root / "runs").exists()
    toy.run()
    plan = toy.run("distill.lr=0.05", dry_run=True)
    assert statuses(plan) == {"teacher": "would skip", "distill": "would run", "quantize": "would skip",
                              "export": "would run"}
    assert plan["export"].reasons == ["upstream distill will run first"]
    assert toy.calls == Counter({n: 1 for n in ALL})
    assert read_manifest(toy.stage_dir("distill"))["config"]["distill"]["lr"] == 0.1


@pytest.mark.parametrize("error", [StageError("teacher source unreadable"), RuntimeError("bug mid-write")])
def test_crash_mid_write_leaves_no_manifest_and_next_run_reruns(toy, error):
    toy.crash["teacher"] = error
    record: list = []
    with pytest.raises(type(error)) as info:
        toy.run(record=record)
    assert info.value is error
    assert [(o.name, o.status) for o in record] == [("teacher", "failed")]
    d = toy.stage_dir("teacher")
    assert not (d / "manifest.json").exists() and not (d / "teacher.json").exists()
    assert not list(d.glob(".tmp-*")), "the partial temp file must be cleaned up"
    assert toy.status()["teacher"].state == "never-run"
    del toy.crash["teacher"]
    assert statuses(toy.run()) == {n: "ran" for n in ALL}
    assert toy.calls["teacher"] == 2


def test_crash_on_rerun_removes_the_old_manifest(toy):
    toy.run()
    toy.crash["teacher"] = RuntimeError("killed")
    with pytest.raises(RuntimeError):
        toy.run("teacher.flip=true")
    d = toy.stage_dir("teacher")
    assert not (d / "manifest.json").exists(), "an old manifest must not vouch for a half-done re-run"
    st = toy.status()
    assert st["teacher"].state == "never-run"
    assert st["teacher"].reasons == ["no manifest: the last run did not finish"]
    assert st["distill"].reasons == ["upstream teacher has never run"]
    del toy.crash["teacher"]
    out = toy.run()
    assert out["teacher"].status == "ran" and toy.calls["teacher"] == 3  # ok, crashed, ok


def test_tampered_or_missing_output_is_stale(toy):
    toy.run()
    out = toy.stage_dir("quantize") / "quantize.json"
    out.write_bytes(out.read_bytes().replace(b"8", b"7"))
    st = toy.status()
    assert st["quantize"].reasons == ["output quantize.out modified"]
    assert st["quantize"].outputs == {"out": "quantize.json"}
    assert st["export"].reasons[0] == "upstream quantize is stale"
    (toy.stage_dir("distill") / "distill.json").unlink()
    assert "output distill.out missing" in toy.status()["distill"].reasons
    result = toy.run()
    # the re-runs restore the original bytes, so export's inputs hash as before: it stays fresh
    assert statuses(result) == {"teacher": "skipped", "distill": "ran", "quantize": "ran", "export": "skipped"}
    assert toy.status()["quantize"].state == "fresh"


def test_code_change_is_detected(toy, tmp_path, monkeypatch):
    mod = tmp_path / "toy_stage_code_mod.py"
    mod.write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    specs = toy.specs
    specs["quantize"] = StageSpec("quantize", specs["quantize"].run, ("quantize",), code=("toy_stage_code_mod",))
    run_pipeline(toy.cfg(), stages=specs)
    mod.write_text("X = 2\n")
    st = {s.name: s for s in stage_status(toy.cfg(), stages=specs)}
    assert st["quantize"].reasons == ["code changed: toy_stage_code_mod"]  # names the edited module
    assert st["teacher"].state == "fresh"


def test_missing_external_input_names_role_and_path(toy):
    toy.src.unlink()
    assert toy.status()["teacher"].reasons == ["never run", f"input data.src missing: {toy.src}"]
    with pytest.raises(StageError, match=f"stage 'teacher': input data.src not found: {toy.src}"):
        toy.run()
    assert not toy.calls


def test_disabled_stage_contributes_no_inputs(toy):
    out = toy.run("quantize.enabled=false")
    assert statuses(out) == {"teacher": "ran", "distill": "ran", "quantize": "disabled", "export": "ran"}
    assert set(toy.seen_inputs["export"]) == {"distill.out"}
    assert toy.status("quantize.enabled=false")["quantize"].state == "disabled"
    with pytest.raises(StageError, match="--force quantize: stage 'quantize' is disabled"):
        toy.run("quantize.enabled=false", force=["quantize"])
    out = toy.run()  # re-enabled: export gains an input and re-runs
    assert out["quantize"].status == "ran" and out["export"].reasons == ["new input quantize.out"]


def test_stage_names_unknown_or_unavailable(toy):
    with pytest.raises(StageError, match=r"--from 'distil': unknown stage \(did you mean 'distill'\?\)"):
        toy.run(from_="distil")
    only_teacher = {"teacher": toy.specs["teacher"]}
    with pytest.raises(StageError, match=r"stage 'distill' is not available in this version of facepipe "
                                         r"\(available: teacher\)"):
        run_pipeline(toy.cfg(), to="distill", stages=only_teacher)
    with pytest.raises(StageError, match="not available"):
        run_pipeline(toy.cfg(), force=["bench"], stages=toy.specs)


def test_zero_runnable_stages_says_so(toy):
    with pytest.raises(StageError, match="nothing to run: no stage is available"):
        run_pipeline(toy.cfg(), stages=[])
    only_q = [toy.specs["quantize"]]
    with pytest.raises(StageError, match="nothing to run: stage\\(s\\) quantize .* disabled by the config"):
        run_pipeline(toy.cfg("quantize.enabled=false"), stages=only_q)


def test_bad_specs_are_rejected():
    with pytest.raises(ValueError, match="not in STAGE_ORDER"):
        runner.register_stage(StageSpec("train", lambda ctx: StageResult({}), ()))
    with pytest.raises(ValueError, match="earlier"):
        run_pipeline(load_config(None), stages=[StageSpec("teacher", lambda c: StageResult({}), (), after=("bench",))])


def test_stage_reporting_a_missing_output_fails_without_manifest(toy, tmp_path):
    spec = StageSpec("teacher", lambda ctx: StageResult({"model": ctx.output_path("never-written.pt")}), ("teacher",))
    with pytest.raises(StageError, match="reported output 'model' at .*never-written.pt, which does not exist"):
        run_pipeline(toy.cfg(), stages=[spec])
    assert not (toy.stage_dir("teacher") / "manifest.json").exists()


def test_directory_outputs_and_inputs_are_hashed_as_trees(toy, tmp_path):
    def make_dir(ctx):
        d = ctx.output_path("ir")
        d.mkdir(exist_ok=True)
        atomic_write_text(d / "model.xml", "<xml/>")
        atomic_write_text(d / "model.bin", "weights")
        return StageResult({"ir": d})

    specs = [StageSpec("teacher", make_dir, ()),
             StageSpec("distill", lambda ctx: StageResult({}), (), after=("teacher",))]
    run_pipeline(toy.cfg(), stages=specs)
    m = read_manifest(toy.stage_dir("teacher"))
    assert m["outputs"]["ir"]["path"] == "ir" and m["outputs"]["ir"]["bytes"] == len("<xml/>") + len("weights")
    (toy.stage_dir("teacher") / "ir" / "model.bin").write_text("weights!")
    st = {s.name: s for s in stage_status(toy.cfg(), stages=specs)}
    assert st["teacher"].reasons == ["output teacher.ir modified"]


# --- the run / status commands, in process (the console script needs every command module) --------------
@pytest.fixture
def cli(toy, monkeypatch):
    from facepipe.pipeline.commands import run as run_cmds

    monkeypatch.setattr(runner, "available_stages", lambda: toy.specs)
    monkeypatch.chdir(toy.root)
    app = typer.Typer()
    app.command("noop", hidden=True)(lambda: None)  # a second command keeps run/status as sub-commands
    run_cmds.register(app)
    return lambda *args: CliRunner().invoke(app, [*args, "--set", f"run.dir={toy.root / 'runs'}"])


def test_run_and_status_commands(cli, toy):
    res = cli("run", "--dry-run")
    assert res.exit_code == 0, res.output
    assert "would run" in res.output and "dry run: 4 stage(s) would run; nothing was executed" in res.output
    assert not toy.calls
    res = cli("run")
    assert res.exit_code == 0, res.output
    assert "teacher: running (never run)" in res.output and "acc=0.5" in res.output
    res = cli("run")
    assert "every stage is fresh: nothing to do" in res.output and toy.calls["teacher"] == 1
    res = cli("status", "--json", "--set", "distill.lr=0.05")
    assert res.exit_code == 0, res.output
    states = {s["stage"]: s for s in json.loads(res.output)}
    assert states["distill"]["state"] == "stale"
    assert states["distill"]["reasons"] == ["config distill.lr changed: 0.1 -> 0.05"]
    assert states["teacher"]["outputs"] == {"out": "teacher.json"}
    assert states["bench"]["state"] == "unavailable"
    res = cli("status")
    assert res.exit_code == 0 and "fresh" in res.output


def test_run_command_propagates_stage_errors_after_the_table(cli, toy):
    toy.crash["distill"] = StageError("distill: no training data")
    res = cli("run")
    assert isinstance(res.exception, StageError) and isinstance(res.exception, FacepipeError)
    assert "failed" in res.output and toy.calls["teacher"] == 1


def test_module_imports_no_heavy_libraries():
    import subprocess

    code = ("import sys, facepipe.pipeline.commands.run, facepipe.pipeline.runner; "
            "print(sorted(m for m in ('torch', 'onnxruntime', 'openvino', 'cv2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
