"""The real `facepipe` console script: user errors exit 2 with exactly one line on stderr, no traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(sys.executable).with_name("facepipe")


def facepipe(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    exe = str(SCRIPT) if SCRIPT.exists() else shutil.which("facepipe")
    assert exe, "the facepipe console script is not installed (pip install -e .)"
    env = {**os.environ, "FACEPIPE_CACHE": str(cwd / ".cache"), "COLUMNS": "200"}
    env.pop("FACEPIPE_DATA", None)
    return subprocess.run([exe, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def assert_user_error(res: subprocess.CompletedProcess, *fragments: str) -> str:
    assert res.returncode == 2, f"exit {res.returncode}\nstdout: {res.stdout}\nstderr: {res.stderr}"
    assert "Traceback" not in res.stderr + res.stdout
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{res.stderr}"
    for f in fragments:
        assert f in lines[0], f"{f!r} not in {lines[0]!r}"
    return lines[0]


@pytest.fixture
def cwd(tmp_path) -> Path:
    (tmp_path / "malformed.yaml").write_text("teacher:\n  flip: [true\n  cache: false\n")
    (tmp_path / "wrongtype.yaml").write_text("teacher:\n  flip: maybe\n")
    (tmp_path / "unknown.yaml").write_text("teacher:\n  embeding_size: 512\n")
    return tmp_path


def test_config_validate_malformed_yaml(cwd):
    assert_user_error(facepipe(cwd, "config", "validate", "malformed.yaml"),
                      "error: malformed.yaml:3:8: YAML syntax error")


def test_run_malformed_yaml(cwd):
    assert_user_error(facepipe(cwd, "run", "-c", "malformed.yaml"), "malformed.yaml:3:8: YAML syntax error")


def test_status_wrong_type(cwd):
    assert_user_error(facepipe(cwd, "status", "-c", "wrongtype.yaml"), "wrongtype.yaml: teacher.flip:",
                      "'maybe'")


@pytest.mark.parametrize("key, fragment", [("teacher.kind=tflite", "teacher.kind='tflite': choose auto or one of"),
                                           ("distill.losses=[{name: arcfase}]",
                                            "distill.losses[0].name='arcfase' is not a registered loss")])
def test_config_validate_checks_names_against_the_registries(cwd, key, fragment):
    (cwd / "ok.yaml").write_text("run:\n  seed: 1\n")
    assert_user_error(facepipe(cwd, "config", "validate", "ok.yaml", "--set", key), "ok.yaml: " + fragment)


def test_config_validate_unknown_key(cwd):
    assert_user_error(facepipe(cwd, "config", "validate", "unknown.yaml"), "unknown key 'teacher.embeding_size'",
                      "did you mean 'teacher.embedding_size'?")


def test_run_missing_config(cwd):
    assert_user_error(facepipe(cwd, "run", "--dry-run", "-c", "missing.yaml"), "config file missing.yaml not found")


def test_bad_set_override(cwd):
    assert_user_error(facepipe(cwd, "run", "--dry-run", "--set", "distill.lr=fast"),
                      "--set distill.lr=fast: distill.lr:")


def test_unknown_stage_name(cwd):
    line = assert_user_error(facepipe(cwd, "run", "--dry-run", "--from", "distil"), "unknown stage")
    assert "did you mean 'distill'?" in line


def test_valid_config_passes(cwd):
    (cwd / "ok.yaml").write_text("teacher:\n  flip: true\n")
    res = facepipe(cwd, "config", "validate", "ok.yaml")  # no data: data-free mode, every stage can run
    assert res.returncode == 0 and res.stderr == "", res.stderr
    assert res.stdout.strip() == "ok.yaml: ok (would run: teacher, distill, quantize, export, bench)"
    assert facepipe(cwd, "config", "validate", "-c", "ok.yaml").returncode == 0  # -c, as every command takes
    res = facepipe(cwd, "status", "--json", "-c", "ok.yaml")
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr


def test_unknown_option_is_a_usage_error_not_a_traceback(cwd):
    res = facepipe(cwd, "config", "validate", "--no-such-flag")
    assert res.returncode == 2
    assert "No such option: --no-such-flag" in res.stderr
    assert "Traceback" not in res.stderr


def test_data_inspect_of_a_set_whose_images_are_all_missing_exits_2_naming_the_expected_layout(cwd):
    """Hostile input 7: "missing images 1221", exit 0, no hint."""
    lfw = cwd / "lfw"
    lfw.mkdir()
    (lfw / "pairs.txt").write_text("1\t2\nAnn\t1\t2\nBob\t1\t2\nAnn\t1\tBob\t1\nBob\t2\tAnn\t2\n")
    line = assert_user_error(facepipe(cwd, "data", "inspect", str(lfw)),
                             "none of the 4 images its pairs.txt names exists")
    assert f"{lfw}/<Name>/<Name>_<NNNN>.jpg" in line and "Ann/Ann_0001.jpg" in line


def test_validate_and_dry_run_refuse_inputs_that_cannot_resolve(cwd):
    """Hostile input 9: `config validate` accepted a missing data root and `run --dry-run` exited 0 while listing
    inputs it could not resolve; both now run the checks `run` does and exit 2 naming the stage and input."""
    (cwd / "ok.yaml").write_text("teacher:\n  flip: true\n")
    empty = cwd / "no-data"
    empty.mkdir()
    for args in (["config", "validate", "ok.yaml"], ["run", "-c", "ok.yaml", "--dry-run"]):
        res = facepipe(cwd, *args, "--set", f"data.root={empty}")
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        err = res.stderr.strip().splitlines()[0]
        assert err.startswith("error: 4 stage(s) cannot run: teacher: cannot resolve its inputs:"), err
        assert "'lfw' not found under data root" in res.stderr
    res = facepipe(cwd, "config", "validate", "ok.yaml", "--set", "data.root=/nonexistent-root")
    assert res.returncode == 2 and "data root /nonexistent-root (data.root / $FACEPIPE_DATA) is not a directory" \
        in res.stderr
