"""What this machine can run: package versions, CPU, CUDA devices, Jetson/Tegra, and `--device` resolution."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import platform
import re
import sys
from pathlib import Path
from typing import Any, Sequence

from .errors import BackendUnavailable, ConfigError
from .progress import table_console

TEGRA_RELEASE = Path("/etc/nv_tegra_release")
DEVICE_TREE_MODEL = Path("/proc/device-tree/model")

# Import name -> distribution name, for the version when the module has no __version__.
PACKAGES: dict[str, str] = {
    "torch": "torch", "numpy": "numpy", "onnx": "onnx", "onnxruntime": "onnxruntime", "onnxscript": "onnxscript",
    "openvino": "openvino", "nncf": "nncf", "torchao": "torchao", "tensorrt": "tensorrt",
    "torch_tensorrt": "torch-tensorrt", "insightface": "insightface", "huggingface_hub": "huggingface_hub",
    "safetensors": "safetensors", "cv2": "opencv-python-headless",
}
OPENCV_DISTRIBUTIONS = ("opencv-python", "opencv-python-headless", "opencv-contrib-python",
                        "opencv-contrib-python-headless")

# JetPack release for each L4T release (NVIDIA's JetPack archive). Unlisted L4T versions report no JetPack.
L4T_TO_JETPACK: dict[str, str] = {
    "32.4.3": "4.4", "32.4.4": "4.4.1", "32.5.0": "4.5", "32.5.1": "4.5.1", "32.6.1": "4.6", "32.7.1": "4.6.1",
    "32.7.2": "4.6.2", "32.7.3": "4.6.3", "32.7.4": "4.6.4", "32.7.5": "4.6.5", "32.7.6": "4.6.6",
    "35.1.0": "5.0.2", "35.2.1": "5.1", "35.3.1": "5.1.1", "35.4.1": "5.1.2", "35.5.0": "5.1.3", "35.6.0": "5.1.4",
    "35.6.1": "5.1.5", "36.3.0": "6.0", "36.4.0": "6.1", "36.4.3": "6.2", "36.4.4": "6.2.1",
}

_RELEASE_RE = re.compile(r"#\s*R(?P<major>\d+)\s*\((?P<kind>[^)]*)\)\s*,\s*REVISION:\s*(?P<revision>[\d.]+)")


def package_version(module: str, distribution: str | None = None) -> str:
    """Version of an importable module, "not installed", or "import failed: <error>" when it is broken."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        return "not installed"
    try:
        mod = importlib.import_module(module)
    except Exception as e:  # a broken install is a finding to report, not a crash
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return f"import failed: {type(e).__name__}: {msg}"[:200]
    version = getattr(mod, "__version__", None)
    if version is None:
        try:
            version = importlib.metadata.version(distribution or module)
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
    return str(version)


def parse_tegra_release(text: str) -> dict[str, str] | None:
    """Parse /etc/nv_tegra_release ("# R36 (release), REVISION: 3.0, GCID: ..., BOARD: ...") into fields.

    Returns {"l4t": "36.3.0", "release": "R36", "revision": "3.0", plus lower-cased extra keys such as
    "board", "gcid", "date"} or None when the first line does not have that shape.
    """
    first = text.strip().splitlines()[0] if text.strip() else ""
    m = _RELEASE_RE.match(first)
    if not m:
        return None
    revision = m["revision"]
    parts = revision.split(".") + ["0"] * 2
    out = {"release": f"R{m['major']}", "revision": revision, "l4t": ".".join([m["major"], *parts[:2]])}
    for field in first.split(",")[2:]:
        key, sep, value = field.partition(":")
        if sep:
            out[key.strip().lower()] = value.strip()
    return out


def detect_jetson(tegra_release: str | os.PathLike = TEGRA_RELEASE,
                  device_tree_model: str | os.PathLike = DEVICE_TREE_MODEL) -> dict[str, Any] | None:
    """Jetson/Tegra facts, or None when this is not a Jetson.

    A machine is a Jetson when `tegra_release` exists or the device-tree model names Jetson/Tegra.
    Keys: model, l4t, release, revision, jetpack (inferred from L4T, None when unknown), board, source files.
    """
    tegra_release, device_tree_model = Path(tegra_release), Path(device_tree_model)
    release_text = _read_text(tegra_release)
    model = _read_text(device_tree_model)
    model = model.replace("\x00", "").strip() if model is not None else None
    if release_text is None and not (model and re.search(r"jetson|tegra", model, re.I)):
        return None
    info: dict[str, Any] = {"model": model, "l4t": None, "jetpack": None}
    if release_text is not None:
        info["tegra_release_file"] = str(tegra_release)
        parsed = parse_tegra_release(release_text)
        if parsed is None:
            info["l4t"] = f"unparsed: {release_text.strip().splitlines()[0][:80] if release_text.strip() else ''}"
        else:
            info.update(parsed)
            info["jetpack"] = L4T_TO_JETPACK.get(parsed["l4t"])
    return info


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


# /proc/cpuinfo flags that change which kernels run (x86: "flags", Arm: "Features"), by what they enable.
ISA_FLAGS: dict[str, tuple[str, ...]] = {
    "avx2": ("avx2",), "fma": ("fma",), "avx512": ("avx512f",), "avx512_vnni": ("avx512_vnni",),
    "avx_vnni": ("avx_vnni",), "avx512_bf16": ("avx512_bf16",), "amx_bf16": ("amx_bf16",),
    "amx_int8": ("amx_int8",), "neon": ("asimd", "neon"), "dotprod": ("asimddp",), "i8mm": ("i8mm",),
    "sve": ("sve",), "arm_bf16": ("bf16",),
}


def parse_isa(flags: Sequence[str]) -> dict[str, Any]:
    """The instruction-set features that decide int8 / bf16 / fp32 kernels, from a CPU flag list.

    vnni: an int8 dot product that accumulates u8 x s8 products in 32 bits (AVX-512 VNNI, AVX-VNNI, AMX or
    Arm dotprod). Without it x86 int8 kernels use vpmaddubsw, whose pairwise 16-bit sums saturate unless the
    weights keep to 7 bits. bf16: native bf16 arithmetic (else bf16 is emulated and slower than fp32).
    """
    have = set(flags)
    isa = {name: any(f in have for f in names) for name, names in ISA_FLAGS.items()}
    isa["vnni"] = isa["avx512_vnni"] or isa["avx_vnni"] or isa["amx_int8"] or isa["dotprod"]
    isa["bf16"] = isa["avx512_bf16"] or isa["amx_bf16"] or isa["arm_bf16"]
    parts = [p for p, on in (("AVX-512", isa["avx512"]), ("AVX2", isa["avx2"] and not isa["avx512"]),
                             ("NEON", isa["neon"]), ("VNNI", isa["vnni"] and not isa["dotprod"]),
                             ("dotprod", isa["dotprod"]), ("BF16", isa["bf16"]),
                             ("AMX", isa["amx_int8"] or isa["amx_bf16"])) if on]
    isa["summary"] = " + ".join(parts) or "baseline (no AVX2 / NEON)"
    return isa


# oneDNN (inside torch and OpenVINO) runs no VNNI kernel when ONEDNN_MAX_CPU_ISA caps it at one of these
ONEDNN_ISAS_WITHOUT_VNNI = ("SSE41", "AVX", "AVX2", "AVX512_CORE")


def x86_without_vnni(isa: dict | None = None) -> bool:
    """True on an x86 CPU whose int8 kernels add u8 x s8 product pairs in saturating 16-bit sums (no VNNI /
    AMX int8, or oneDNN capped below VNNI by ONEDNN_MAX_CPU_ISA): full-range 8-bit weights can overflow
    there (models/quant/overflow.py)."""
    isa = cpu_info()["isa"] if isa is None else isa
    capped = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in ONEDNN_ISAS_WITHOUT_VNNI
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686") and (capped or not isa.get("vnni"))


def cpu_flags(cpuinfo: str | None = None) -> list[str]:
    """The CPU's feature flags from /proc/cpuinfo (first processor); [] where there is no such file."""
    text = _read_text(Path("/proc/cpuinfo")) if cpuinfo is None else cpuinfo
    for line in (text or "").splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            return value.split()
    return []


def cpu_info() -> dict[str, Any]:
    """CPU model name (from /proc/cpuinfo when present), logical count, the cores this process may use and
    the instruction-set features that change the numbers (`parse_isa`)."""
    name = None
    text = _read_text(Path("/proc/cpuinfo")) or ""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("model name", "Hardware", "Model", "cpu model"):
            name = value.strip()
            break
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"model": name or platform.processor() or platform.machine(), "count": os.cpu_count(),
            "usable": usable, "machine": platform.machine(), "isa": parse_isa(cpu_flags(text))}


def cuda_info() -> dict[str, Any]:
    """torch's CUDA build, cuDNN and the visible devices (name, compute capability, memory in MiB)."""
    try:
        import torch
    except Exception as e:
        return {"available": False, "error": f"torch: {type(e).__name__}: {e}", "devices": []}
    info: dict[str, Any] = {"available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda,
                            "cudnn": None, "devices": []}
    if info["available"]:
        info["cudnn"] = torch.backends.cudnn.version()
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            info["devices"].append({"index": i, "name": p.name, "capability": f"{p.major}.{p.minor}",
                                    "memory_mib": p.total_memory // 2**20})
    return info


def environment_report(packages: Sequence[str] | None = None,
                       tegra_release: str | os.PathLike = TEGRA_RELEASE,
                       device_tree_model: str | os.PathLike = DEVICE_TREE_MODEL) -> dict[str, Any]:
    """Everything `facepipe env` prints, as a JSON-serialisable dict.

    `packages` restricts which import names are probed (default: PACKAGES); each is imported, so a broken
    install shows up as "import failed: ...".
    """
    from facepipe.pipeline import __version__

    names = list(PACKAGES) if packages is None else list(packages)
    versions = {name: package_version(name, PACKAGES.get(name)) for name in names}
    report: dict[str, Any] = {
        "facepipe": __version__,
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "platform": platform.platform(),
        "packages": versions,
        "cpu": cpu_info(),
        "warnings": [],
    }
    if "onnxruntime" in versions and not versions["onnxruntime"].startswith(("not installed", "import failed")):
        import onnxruntime

        report["onnxruntime_providers"] = list(onnxruntime.get_available_providers())
    if "torch" in versions and not versions["torch"].startswith(("not installed", "import failed")):
        import torch

        report["cpu"]["torch_threads"] = torch.get_num_threads()
        report["cuda"] = cuda_info()
    report["jetson"] = detect_jetson(tegra_release, device_tree_model)
    opencv = [d for d in OPENCV_DISTRIBUTIONS if _distribution_installed(d)]
    if len(opencv) > 1:
        report["warnings"].append(f"several OpenCV distributions installed ({', '.join(opencv)}): they share "
                                  "the cv2 module and overwrite each other; keep only opencv-python-headless")
    return report


def _distribution_installed(name: str) -> bool:
    try:
        importlib.metadata.version(name)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def print_environment(report: dict[str, Any], console=None) -> None:
    """Render an `environment_report()` dict as Rich tables (system, packages, devices)."""
    from rich.table import Table

    console = console or table_console()
    system = Table(title="system", show_header=False)
    system.add_column(style="bold")
    system.add_column()
    cpu = report.get("cpu", {})
    rows = [("facepipe", report.get("facepipe")), ("python", report.get("python")),
            ("platform", report.get("platform")), ("cpu", cpu.get("model")),
            ("cpu isa", (cpu.get("isa") or {}).get("summary")),
            ("cpu count", f"{cpu.get('count')} ({cpu.get('usable')} usable)"),
            ("torch threads", cpu.get("torch_threads"))]
    if "onnxruntime_providers" in report:
        rows.append(("onnxruntime providers", ", ".join(report["onnxruntime_providers"])))
    for key, value in rows:
        system.add_row(key, "-" if value is None else str(value))
    console.print(system)

    packages = Table(title="packages")
    packages.add_column("package", style="bold")
    packages.add_column("version")
    for name, version in report.get("packages", {}).items():
        style = "red" if version.startswith("import failed") else "dim" if version == "not installed" else ""
        packages.add_row(name, f"[{style}]{version}[/]" if style else version)
    console.print(packages)

    devices = Table(title="devices")
    for col in ("device", "name", "details"):
        devices.add_column(col)
    devices.add_row("cpu", str(cpu.get("model")), f"{cpu.get('machine')}, {(cpu.get('isa') or {}).get('summary')}")
    cuda = report.get("cuda") or {}
    for d in cuda.get("devices", []):
        devices.add_row(f"cuda:{d['index']}", d["name"], f"sm {d['capability']}, {d['memory_mib']} MiB, "
                                                          f"CUDA {cuda.get('torch_cuda')}, cuDNN {cuda.get('cudnn')}")
    if cuda and not cuda.get("devices"):
        devices.add_row("cuda", "-", f"none visible (torch CUDA build: {cuda.get('torch_cuda')})")
    jetson = report.get("jetson")
    if jetson:
        devices.add_row("jetson", str(jetson.get("model") or "Jetson/Tegra"),
                        f"L4T {jetson.get('l4t')}, JetPack {jetson.get('jetpack') or 'unknown'}")
    else:
        devices.add_row("jetson", "-", "not a Jetson")
    console.print(devices)
    for warning in report.get("warnings", []):
        console.print(f"[yellow]warning:[/] {warning}")


def resolve_device(spec: str, tegra_release: str | os.PathLike = TEGRA_RELEASE,
                   device_tree_model: str | os.PathLike = DEVICE_TREE_MODEL) -> str:
    """Turn a `--device` value (cpu | cuda | cuda:N | jetson | auto) into a torch device string.

    cuda -> "cuda:0"; jetson -> "cuda:0" after checking this is a Jetson with a CUDA-enabled torch (use
    `detect_jetson()` for L4T/JetPack facts); auto -> "cuda:0" when CUDA is usable, else "cpu".
    Raises BackendUnavailable when the device is absent, ConfigError when the spec is malformed.
    """
    s = str(spec).strip().lower()
    if s == "cpu":
        return "cpu"
    m = re.fullmatch(r"cuda(?::(\d+))?", s)
    if s not in ("auto", "jetson") and not m:
        raise ConfigError(f"--device {spec!r}: expected cpu, cuda, cuda:N, jetson or auto")

    import torch

    available = torch.cuda.is_available()
    count = torch.cuda.device_count() if available else 0
    if s == "auto":
        return "cuda:0" if count else "cpu"
    if s == "jetson":
        jetson = detect_jetson(tegra_release, device_tree_model)
        if jetson is None:
            raise BackendUnavailable(f"--device jetson: this machine is not a Jetson (no {tegra_release}); "
                                     "use --device cpu or cuda")
        if not count:
            raise BackendUnavailable(f"--device jetson: Jetson found (L4T {jetson.get('l4t')}) but torch "
                                     f"{torch.__version__} has no CUDA; install NVIDIA's PyTorch wheel for "
                                     f"JetPack {jetson.get('jetpack') or 'of this L4T'}")
        return "cuda:0"
    index = int(m.group(1) or 0)
    if not count:
        why = "torch is a CPU-only build" if torch.version.cuda is None else "no NVIDIA GPU/driver is visible"
        raise BackendUnavailable(f"--device {spec}: CUDA is not available ({why}, torch {torch.__version__}); "
                                 "use --device cpu")
    if index >= count:
        raise BackendUnavailable(f"--device {spec}: only {count} CUDA device(s) visible (cuda:0..cuda:{count - 1})")
    return f"cuda:{index}"
