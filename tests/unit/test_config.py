"""pipeline.yaml loading: precise errors (dotted path, did-you-mean, file:line:col) and --set overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from facepipe.pipeline.config import PipelineConfig, dump_config, load_config
from facepipe.pipeline.errors import ConfigError


def write(tmp_path: Path, text: str, name: str = "pipeline.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def error_of(*args, **kw) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(*args, **kw)
    return str(info.value)


def test_defaults_and_empty_file(tmp_path):
    cfg = load_config(write(tmp_path, ""))
    assert cfg.model_dump() == PipelineConfig().model_dump()
    assert cfg.run_dir() == tmp_path / "runs" / "default"


@pytest.mark.parametrize("yaml_text, bad, hint", [
    ("teacher:\n  embeding_size: 512\n", "teacher.embeding_size", "teacher.embedding_size"),
    ("techer:\n  flip: true\n", "techer", "teacher"),
    ("distill:\n  student:\n    embeding_size: 128\n", "distill.student.embeding_size",
     "distill.student.embedding_size"),
    ("distill:\n  losses:\n    - name: kd\n      wieght: 2\n", "distill.losses.0.wieght", "distill.losses.0.weight"),
    ("teacher:\n  preprocess:\n    colour: BGR\n", "teacher.preprocess.colour", "teacher.preprocess.color"),
])
def test_unknown_key_names_dotted_path_and_suggests(tmp_path, yaml_text, bad, hint):
    p = write(tmp_path, yaml_text)
    msg = error_of(p)
    assert msg == f"{p}: unknown key {bad!r} (did you mean {hint!r}?)"


def test_unknown_key_without_close_match_lists_known_keys(tmp_path):
    msg = error_of(write(tmp_path, "quantize:\n  zzzz: 1\n"))
    assert "unknown key 'quantize.zzzz' (known keys: enabled, model, backend, wbits, abits, mode, data, data_path, images" in msg


def test_base_dir_is_not_a_config_key(tmp_path):
    assert "unknown key 'base_dir'" in error_of(write(tmp_path, "base_dir: /etc\n"))


@pytest.mark.parametrize("yaml_text, field, got", [
    ("teacher:\n  flip: maybe\n", "teacher.flip", "'maybe'"),
    ("run:\n  threads: 0\n", "run.threads", "0"),
    ("distill:\n  epochs: ten\n", "distill.epochs", "'ten'"),
    ("quantize:\n  mode: fast\n", "quantize.mode", "'fast'"),
    ("data:\n  benchmarks: lfw\n", "data.benchmarks", "'lfw'"),
])
def test_wrong_type_names_the_field(tmp_path, yaml_text, field, got):
    p = write(tmp_path, yaml_text)
    msg = error_of(p)
    assert msg.startswith(f"{p}: {field}: ") and msg.endswith(f"(got {got})")


def test_several_errors_are_counted(tmp_path):
    msg = error_of(write(tmp_path, "teacher:\n  flip: maybe\n  cache: 3\n  embedding_size: -1\n"))
    assert "(+2 more:" in msg and msg.count("teacher.") == 3


def test_set_overrides_parse_yaml_values(tmp_path):
    p = write(tmp_path, "teacher:\n  flip: false\ndistill:\n  lr: 0.1\n")
    cfg = load_config(p, ["teacher.flip=true", "distill.lr=5.0e-2", "data.benchmarks=[lfw, cfp_fp]",
                          "distill.losses=[{name: kd, weight: 0.5}]", "run.name=2024", "quantize.steps=0",
                          "teacher.preprocess.size=112", "export.atol=null"])
    assert cfg.teacher.flip is True
    assert cfg.distill.lr == 0.05
    assert cfg.data.benchmarks == ["lfw", "cfp_fp"]
    assert [(t.name, t.weight) for t in cfg.distill.losses] == [("kd", 0.5)]
    assert cfg.run.name == "2024"
    assert cfg.quantize.steps == 0
    assert cfg.teacher.preprocess.size == 112
    assert cfg.export.atol is None
    assert load_config(p, ["distill.lr=0.2", "distill.lr=0.3"]).distill.lr == 0.3, "the last --set wins"


def test_set_errors_blame_the_override(tmp_path):
    p = write(tmp_path, "teacher:\n  flip: true\n")
    assert error_of(p, ["teacher.flp=1"]) == \
        "--set teacher.flp=1: unknown key 'teacher.flp' (did you mean 'teacher.flip'?)"
    assert error_of(p, ["distill.lr=fast"]).startswith("--set distill.lr=fast: distill.lr: ")
    assert error_of(p, ["teacher"]) == "--set 'teacher': expected KEY=VALUE, e.g. --set distill.lr=0.05"
    assert "value is not valid YAML" in error_of(p, ["data.benchmarks=[lfw"])
    assert "'flip' is not a section" in error_of(p, ["teacher.flip.x=1"])


@pytest.mark.parametrize("yaml_text, where, problem", [
    ("teacher:\n  flip: [true\n  cache: false\n", ":3:8:", "expected ',' or ']'"),
    ("teacher:\n\tflip: true\n", ":2:1:", "found character '\\t' that cannot start any token"),
    ("run:\n  name: x\n teacher: 1\n", ":3:2:", "expected <block end>"),
])
def test_malformed_yaml_names_file_line_col(tmp_path, yaml_text, where, problem):
    p = write(tmp_path, yaml_text)
    msg = error_of(p)
    assert msg.startswith(f"{p}{where} YAML syntax error: ") and problem in msg


def test_top_level_must_be_a_mapping(tmp_path):
    p = write(tmp_path, "- teacher\n- distill\n")
    assert error_of(p) == f"{p}: top level must be a mapping of sections (run, data, teacher, distill, quantize, " \
                          "export, bench)"


def test_missing_file(tmp_path):
    p = tmp_path / "nope.yaml"
    assert error_of(p) == f"config file {p} not found (pass -c PATH)"


def test_relative_paths_resolve_against_the_config_file(tmp_path, monkeypatch):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "data").mkdir()
    p = write(tmp_path / "cfg", "run:\n  dir: out\n  name: r1\ndata:\n  root: ../data\n")
    monkeypatch.chdir("/")
    cfg = load_config(p)
    assert cfg.run_dir() == tmp_path / "cfg" / "out" / "r1"
    assert cfg.data_root() == (tmp_path / "cfg" / "../data")


def test_data_root_from_env_or_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("FACEPIPE_DATA", raising=False)
    cfg = load_config(None)
    assert cfg.data_root(required=False) is None
    with pytest.raises(ConfigError, match=r"data.root is not set and \$FACEPIPE_DATA is empty"):
        cfg.data_root()
    monkeypatch.setenv("FACEPIPE_DATA", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="is not a directory"):
        cfg.data_root()
    monkeypatch.setenv("FACEPIPE_DATA", str(tmp_path))
    assert cfg.data_root() == tmp_path


def test_dump_round_trips(tmp_path):
    cfg = load_config(None, ["teacher.flip=true", "distill.losses=[{name: kd, params: {T: 4}}]"])
    again = load_config(write(tmp_path, dump_config(cfg)))
    assert again.model_dump() == cfg.model_dump()


def test_section_dump_is_json_ready():
    sec = load_config(None, ["teacher.preprocess.mean=[0.5, 0.5, 0.5]"]).section("teacher")
    assert sec["preprocess"]["mean"] == [0.5, 0.5, 0.5] and sec["flip"] is False
    assert isinstance(load_config(None).section("run")["dir"], str)


def test_smoke_preset_applies_before_user_overrides():
    from facepipe.pipeline.config import PRESETS, load_config

    cfg = load_config(None, ["distill.steps=4"], preset="smoke")
    assert cfg.run.name == "smoke" and cfg.data.benchmarks == ["lfw@1"]
    assert cfg.distill.steps == 4  # the user's --set wins over the preset
    assert all("=" in o for o in PRESETS["smoke"])


def test_unknown_preset_suggests():
    from facepipe.pipeline.config import load_config

    with pytest.raises(ConfigError, match=r"unknown preset 'smok' \(did you mean 'smoke'\?\)"):
        load_config(None, [], preset="smok")
