"""Environment report, Jetson/Tegra detection from fixture files, and --device resolution."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import pytest
import torch
from rich.console import Console

from facepipe.pipeline.device import (cuda_info, detect_jetson, environment_report, package_version,
                                      parse_tegra_release, print_environment, resolve_device)
from facepipe.pipeline.errors import BackendUnavailable, ConfigError

ORIN_RELEASE = ("# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic, EABI: aarch64, "
                "DATE: Mon May  6 17:34:21 UTC 2024\n# KERNEL_VARIANT: oot\nTARGET_USERSPACE_LIB_DIR=nvidia\n")


@pytest.fixture
def orin(tmp_path):
    """Fixture files of a Jetson Orin Nano on JetPack 6.0."""
    release = tmp_path / "nv_tegra_release"
    release.write_text(ORIN_RELEASE)
    model = tmp_path / "model"
    model.write_bytes(b"NVIDIA Jetson Orin Nano Developer Kit\x00")
    return {"tegra_release": release, "device_tree_model": model}


@pytest.fixture
def not_jetson(tmp_path):
    return {"tegra_release": tmp_path / "absent_release", "device_tree_model": tmp_path / "absent_model"}


def fake_cuda(monkeypatch, count: int):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_parse_tegra_release_fields():
    info = parse_tegra_release(ORIN_RELEASE)
    assert info["l4t"] == "36.3.0"
    assert (info["release"], info["revision"]) == ("R36", "3.0")
    assert info["board"] == "generic" and info["eabi"] == "aarch64"
    assert info["date"] == "Mon May  6 17:34:21 UTC 2024"


def test_parse_tegra_release_three_part_revision_and_garbage():
    assert parse_tegra_release("# R35 (release), REVISION: 4.1, GCID: 1, BOARD: t186ref")["l4t"] == "35.4.1"
    assert parse_tegra_release("# R32 (release), REVISION: 7.1")["l4t"] == "32.7.1"
    assert parse_tegra_release("hello world") is None
    assert parse_tegra_release("") is None


def test_detect_jetson_from_fixture_files(orin):
    info = detect_jetson(**orin)
    assert info["model"] == "NVIDIA Jetson Orin Nano Developer Kit"
    assert info["l4t"] == "36.3.0" and info["jetpack"] == "6.0"
    assert info["tegra_release_file"] == str(orin["tegra_release"])


def test_detect_jetson_absent_and_partial(tmp_path, not_jetson):
    assert detect_jetson(**not_jetson) is None
    other = tmp_path / "rpi_model"
    other.write_bytes(b"Raspberry Pi 5 Model B Rev 1.0\x00")
    assert detect_jetson(not_jetson["tegra_release"], other) is None
    only_model = tmp_path / "jetson_model"
    only_model.write_bytes(b"NVIDIA Jetson AGX Xavier\x00")
    info = detect_jetson(not_jetson["tegra_release"], only_model)
    assert info["model"] == "NVIDIA Jetson AGX Xavier" and info["l4t"] is None
    future = tmp_path / "future_release"
    future.write_text("# R99 (release), REVISION: 1.0")
    assert detect_jetson(future, not_jetson["device_tree_model"])["jetpack"] is None
    odd = tmp_path / "odd_release"
    odd.write_text("something else\n")
    assert detect_jetson(odd, not_jetson["device_tree_model"])["l4t"].startswith("unparsed")


def test_resolve_device_cpu_and_bad_spec():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device(" CPU ") == "cpu"
    for bad in ("gpu", "cuda:", "cuda:x", "tpu:0"):
        with pytest.raises(ConfigError, match="expected cpu, cuda, cuda:N, jetson or auto"):
            resolve_device(bad)


def test_resolve_device_without_cuda(monkeypatch, not_jetson):
    fake_cuda(monkeypatch, 0)
    assert resolve_device("auto") == "cpu"
    for spec in ("cuda", "cuda:0", "cuda:1"):
        with pytest.raises(BackendUnavailable, match=f"--device {spec}: CUDA is not available"):
            resolve_device(spec)
    with pytest.raises(BackendUnavailable, match="this machine is not a Jetson") as e:
        resolve_device("jetson", **not_jetson)
    assert str(not_jetson["tegra_release"]) in str(e.value)


def test_resolve_device_with_cuda(monkeypatch, not_jetson):
    fake_cuda(monkeypatch, 2)
    assert resolve_device("auto") == "cuda:0"
    assert resolve_device("cuda") == "cuda:0"
    assert resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(BackendUnavailable, match="only 2 CUDA device"):
        resolve_device("cuda:2")
    with pytest.raises(BackendUnavailable, match="not a Jetson"):
        resolve_device("jetson", **not_jetson)


def test_resolve_device_jetson(monkeypatch, orin):
    fake_cuda(monkeypatch, 1)
    assert resolve_device("jetson", **orin) == "cuda:0"
    fake_cuda(monkeypatch, 0)
    with pytest.raises(BackendUnavailable, match="Jetson found \\(L4T 36.3.0\\).*JetPack 6.0"):
        resolve_device("jetson", **orin)


def test_cuda_info_lists_devices(monkeypatch):
    fake_cuda(monkeypatch, 1)
    props = SimpleNamespace(name="Orin", major=8, minor=7, total_memory=7 * 2**30)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 90300)
    info = cuda_info()
    assert info["devices"] == [{"index": 0, "name": "Orin", "capability": "8.7", "memory_mib": 7 * 1024}]
    assert info["cudnn"] == 90300


def test_package_version_states(tmp_path, monkeypatch):
    import numpy

    assert package_version("numpy") == numpy.__version__
    assert package_version("facepipe_no_such_package_xyz") == "not installed"
    (tmp_path / "facepipe_broken_pkg_xyz.py").write_text("raise RuntimeError('libnvinfer.so.10: not found')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert package_version("facepipe_broken_pkg_xyz") == "import failed: RuntimeError: libnvinfer.so.10: not found"


def test_environment_report_and_print(orin):
    from facepipe.pipeline import __version__

    report = environment_report(packages=["torch", "numpy", "onnxruntime", "facepipe_no_such_package_xyz"], **orin)
    json.dumps(report)  # the --json output must serialise
    assert report["facepipe"] == __version__
    assert report["packages"]["torch"] == torch.__version__
    assert report["packages"]["facepipe_no_such_package_xyz"] == "not installed"
    assert "CPUExecutionProvider" in report["onnxruntime_providers"]
    assert report["cpu"]["count"] >= 1 and report["cpu"]["torch_threads"] >= 1
    assert report["cuda"]["available"] == torch.cuda.is_available()
    assert report["jetson"]["l4t"] == "36.3.0"

    buf = io.StringIO()
    print_environment(report, console=Console(file=buf, width=200))
    text = buf.getvalue()
    assert "numpy" in text and "not installed" in text
    assert "NVIDIA Jetson Orin Nano Developer Kit" in text and "L4T 36.3.0, JetPack 6.0" in text



ZEN3_FLAGS = ("fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi1 bmi2 sha_ni vaes vpclmulqdq").split()
ZEN5_FLAGS = ("fpu sse2 fma avx f16c avx2 avx512f avx512dq avx512bw avx512vl avx_vnni avx512_bf16 avx512_vnni "
              "avx512_vp2intersect").split()
SAPPHIRE_RAPIDS_FLAGS = "avx2 fma avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8".split()
ORIN_FEATURES = "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp".split()


@pytest.mark.parametrize("flags, summary, vnni, bf16", [
    (ZEN3_FLAGS, "AVX2", False, False),
    (ZEN5_FLAGS, "AVX-512 + VNNI + BF16", True, True),
    (SAPPHIRE_RAPIDS_FLAGS, "AVX-512 + VNNI + BF16 + AMX", True, True),
    (ORIN_FEATURES, "NEON + dotprod", True, False),
    ([], "baseline (no AVX2 / NEON)", False, False),
])
def test_isa_summary_names_what_changes_the_kernels(flags, summary, vnni, bf16):
    from facepipe.pipeline.device import parse_isa

    isa = parse_isa(flags)
    assert (isa["summary"], isa["vnni"], isa["bf16"]) == (summary, vnni, bf16)


def test_cpu_flags_read_x86_and_arm_cpuinfo():
    from facepipe.pipeline.device import cpu_flags

    assert cpu_flags("processor\t: 0\nflags\t\t: fpu avx2 avx512f\n\nprocessor\t: 1\nflags\t: fpu\n") == \
        ["fpu", "avx2", "avx512f"]
    assert cpu_flags("processor\t: 0\nFeatures\t: fp asimd asimddp\n") == ["fp", "asimd", "asimddp"]
    assert cpu_flags("") == []


def test_environment_and_manifests_record_the_isa_of_this_machine():
    from facepipe.pipeline.device import cpu_flags, environment_report, parse_isa
    from facepipe.pipeline.manifest import env_info

    expected = parse_isa(cpu_flags())["summary"]
    assert environment_report(packages=[])["cpu"]["isa"]["summary"] == expected
    assert env_info("cpu")["cpu_isa"] == expected


def test_the_bench_report_names_the_cpu_isa():
    from facepipe.pipeline.bench.report import environment_lines
    from facepipe.pipeline.device import environment_report

    env = environment_report(packages=["torch"])
    cpu_line = next(line for line in environment_lines(env) if line.startswith("- CPU:"))
    assert env["cpu"]["isa"]["summary"] in cpu_line
