"""Real teacher on real CFP: SFace on the official FF / FP protocols (10 folds) through `facepipe eval`,
against the reference measured with the data (its README: FF 99.30 ± 0.33, FP 94.11 ± 0.98). Slow: about
9 minutes on 2 cores (SFace runs one face at a time)."""

from __future__ import annotations

import json

import pytest

from test_real_lfw import _facepipe, _sface_or_skip

CFP_REFERENCE = {"cfp_ff": 99.30, "cfp_fp": 94.11}


@pytest.mark.slow
def test_sface_on_cfp_matches_the_data_reference(data_root, tmp_path, monkeypatch):
    if not (data_root / "cfp" / "Protocol" / "Split").is_dir():
        pytest.skip(f"CFP not found under {data_root}")
    _sface_or_skip()
    monkeypatch.setenv("FACEPIPE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "cfp.json"
    p = _facepipe("eval", "--model", "sface", "--benchmarks", "cfp_fp,cfp_ff", "--no-cache", "--json", str(out),
                  "--set", f"data.root={data_root}", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    got = json.loads(out.read_text())["benchmarks"]
    for name, ref in CFP_REFERENCE.items():
        assert got[name]["pairs"] == 7000 and got[name]["folds"] == "official"
        assert abs(got[name]["accuracy"] - ref) <= 0.3, (name, got[name]["accuracy"], ref)
