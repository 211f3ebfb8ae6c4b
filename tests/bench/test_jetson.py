"""tegrastats and nvpmodel parsing (fixture lines of several boards), and --device jetson elsewhere."""

from __future__ import annotations

import pytest

from facepipe.pipeline.bench.jetson import parse_nvpmodel, parse_tegrastats, require_jetson, summarize
from facepipe.pipeline.errors import BackendUnavailable

NANO = ("RAM 1546/3964MB (lfb 183x4MB) SWAP 0/1982MB (cached 0MB) IRAM 0/252kB(lfb 252kB) CPU [8%@1479,3%@1479,"
        "4%@1479,2%@1479] EMC_FREQ 0%@1600 GR3D_FREQ 12%@921 APE 25 PLL@31C CPU@34C PMIC@100C GPU@33.5C AO@40C "
        "thermal@33.75C POM_5V_IN 2410/2410 POM_5V_GPU 120/110 POM_5V_CPU 445/445")
XAVIER_AGX = ("RAM 2245/7765MB (lfb 1061x4MB) SWAP 0/3882MB (cached 0MB) CPU [12%@1190,3%@1190,5%@1190,4%@1190,off,"
              "off] EMC_FREQ 0% GR3D_FREQ 0% AO@36C GPU@36.5C Tboard@36C Tdiode@38.25C AUX@35.5C CPU@37.5C "
              "thermal@36.9C PMIC@100C GPU 0/0 CPU 310/310 SOC 1242/1242 CV 0/0 VDDRQ 155/155 SYS5V 1434/1434")
XAVIER_NX = ("RAM 3318/7772MB (lfb 7x4MB) SWAP 0/3886MB (cached 0MB) CPU [3%@1190,1%@1190,off,off,off,off] "
             "EMC_FREQ 0% GR3D_FREQ 47% AO@38C GPU@38C PMIC@100C AUX@37.5C CPU@39.5C thermal@38.4C "
             "VDD_IN 4186/4186 VDD_CPU_GPU_CV 543/543 VDD_SOC 1258/1258")
ORIN_AGX = ("11-14-2023 10:19:38 RAM 3142/30593MB (lfb 6329x4MB) SWAP 0/15296MB (cached 0MB) CPU [1%@729,0%@729,"
            "0%@729,0%@729] EMC_FREQ 0%@2133 GR3D_FREQ 63%@[305,305] VIC_FREQ 729 APE 174 CV0@-256C CPU@45.437C "
            "Tboard@34C SOC2@42.062C tj@45.437C VDD_GPU_SOC 2386mW/2386mW VDD_CPU_CV 397mW/397mW "
            "VIN_SYS_5V0 3020mW/3020mW VDDQ_VDD2_1V8AO 503mW/503mW")
ORIN_NANO = ("RAM 2270/7620MB (lfb 2x4MB) SWAP 0/3810MB (cached 0MB) CPU [2%@1510,1%@1510,0%@1510,0%@1510,"
             "0%@1510,0%@1510] GR3D_FREQ 99% cpu@47.5C soc2@46.25C soc0@46.593C gpu@47.156C tj@47.5C "
             "soc1@46.281C VDD_IN 4578mW/4578mW VDD_CPU_GPU_CV 563mW/563mW VDD_SOC 1408mW/1408mW")


@pytest.mark.parametrize("line, ram, gr3d, rails", [
    (NANO, (1546, 3964), 12, {"POM_5V_IN": 2410, "POM_5V_GPU": 120, "POM_5V_CPU": 445}),
    (XAVIER_AGX, (2245, 7765), 0, {"GPU": 0, "CPU": 310, "SOC": 1242, "CV": 0, "VDDRQ": 155, "SYS5V": 1434}),
    (XAVIER_NX, (3318, 7772), 47, {"VDD_IN": 4186, "VDD_CPU_GPU_CV": 543, "VDD_SOC": 1258}),
    (ORIN_AGX, (3142, 30593), 63, {"VDD_GPU_SOC": 2386, "VDD_CPU_CV": 397, "VIN_SYS_5V0": 3020,
                                   "VDDQ_VDD2_1V8AO": 503}),
    (ORIN_NANO, (2270, 7620), 99, {"VDD_IN": 4578, "VDD_CPU_GPU_CV": 563, "VDD_SOC": 1408}),
])
def test_parse_tegrastats_formats(line, ram, gr3d, rails):
    s = parse_tegrastats(line)
    assert (s["ram_used_mb"], s["ram_total_mb"]) == ram
    assert s["gr3d_pct"] == gr3d
    assert s["rails_mw"] == rails  # RAM / SWAP / IRAM and the CPU list are not rails


def test_summary_mean_peak_and_total_rail():
    busy = ORIN_NANO.replace("VDD_IN 4578mW/4578mW", "VDD_IN 6000mW/5289mW").replace("RAM 2270", "RAM 2400")
    lines = [ORIN_NANO, busy]
    s = summarize([parse_tegrastats(ln) for ln in lines])
    assert s["samples"] == 2 and s["power_rail"] == "VDD_IN"
    assert s["power_mw"] == {"mean": 5289.0, "peak": 6000}
    assert s["ram_used_mb"] == {"mean": 2335.0, "peak": 2400} and s["ram_total_mb"] == 7620
    assert summarize([parse_tegrastats(NANO)])["power_rail"] == "POM_5V_IN"
    assert summarize([parse_tegrastats(ORIN_AGX)])["power_rail"] == "VIN_SYS_5V0"
    empty = summarize([])
    assert empty["samples"] == 0 and empty["power_mw"] is None and empty["gr3d_pct"] is None


def test_parse_nvpmodel():
    assert parse_nvpmodel("NV Fan Mode:quiet\nNV Power Mode: MAXN\n0\n") == {"mode": "MAXN", "id": 0}
    assert parse_nvpmodel("NVPM WARN: fan mode is not set!\nNV Power Mode: 15W\n2\n") == {"mode": "15W", "id": 2}
    assert parse_nvpmodel("NV Power Mode: MODE_30W_ALL") == {"mode": "MODE_30W_ALL", "id": None}
    assert parse_nvpmodel("nvpmodel: command not supported") == {}


def test_require_jetson_reads_the_release_file(tmp_path):
    release = tmp_path / "nv_tegra_release"
    with pytest.raises(BackendUnavailable, match="not a Jetson: .*nv_tegra_release not found"):
        require_jetson(release, tmp_path / "model")
    release.write_text("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64\n")
    info = require_jetson(release, tmp_path / "model")
    assert info["l4t"] == "35.4.1" and info["jetpack"] == "5.1.2" and "power_mode" in info


def test_cli_device_jetson_elsewhere_is_one_line_exit_2(capsys):
    from facepipe.pipeline.cli import main
    from facepipe.pipeline.device import detect_jetson

    if detect_jetson() is not None:
        pytest.skip("this machine is a Jetson")
    assert main(["bench", "--device", "jetson", "--benchmarks", "none"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a Jetson: /etc/nv_tegra_release not found" in err
