"""The FORMATS table: every artifact facepipe exports, benchmarks and loads, in one place.

Export, the parity gate, `load_artifact`, the bench and the tests all read this table (Ultralytics habit).
Each row names its family: the export/ module that builds and loads it and registers both here
(`register_family`). Adding a format is one row here, plus one module when it is a new runtime.
"""

from __future__ import annotations

import difflib
import importlib.util
from dataclasses import dataclass
from typing import Callable, Iterable

from facepipe.pipeline.errors import BackendUnavailable, ConfigError
from facepipe.pipeline.registry import Registry

FP32_COS, INT8_COS, FP16_COS = 0.9999, 0.999, 0.999
# An int8 artifact with no fake-quant twin (NNCF's ONNX) can only be compared with the fp32 student: the gate
# then bounds the quantization error itself, not the runtime's fidelity.
INT8_VS_FP32_COS = 0.99


@dataclass(frozen=True)
class Format:
    """One exportable artifact type.

    source: "fp32" (built from the distilled student.pt) or "quantized" (from the quantize stage's qstudent.pt).
    cos_floor / atol: the parity gate against the reference (PyTorch fp32 for fp32 sources, the fake-quant
    model for quantized ones): minimum per-face cosine and maximum absolute embedding difference.
    companions: other files that belong to the artifact (same stem, these suffixes).
    family: the export/ module that builds and loads it (FAMILIES). reference: the file is the parity reference
    itself (nothing is built). from_int8_onnx: buildable from an int8 ONNX alone (NNCF's, no fake-quant model).
    """

    key: str
    suffix: str
    runtime: str  # EMBEDDER_BACKENDS name
    precision: str  # fp32 | fp16 | int8
    needs_gpu: bool
    source: str  # fp32 | quantized
    modules: tuple[str, ...]
    cos_floor: float
    atol: float
    description: str
    companions: tuple[str, ...] = ()
    family: str = ""
    reference: bool = False
    from_int8_onnx: bool = False

    @property
    def int8(self) -> bool:
        return self.precision == "int8"

    def missing_modules(self) -> list[str]:
        """Python modules this format needs that are not importable here."""
        return [m for m in self.modules if importlib.util.find_spec(m) is None]


# atol: max abs embedding difference. Measured on the distilled MobileFaceNet (embedding norm ~11), LFW faces:
# fp32 ONNX 2.4e-6, OpenVINO f32 4.1e-6; int8 vs the fake-quant model 0.08 (ORT) / 0.10 (OpenVINO), because
# real int8 kernels round differently from the fake-quant formulas and single steps propagate.
FORMATS: dict[str, Format] = {f.key: f for f in (
    Format("torch", ".pt", "torch", "fp32", False, "fp32", ("torch",), FP32_COS, 0.0,
           "distilled student.pt in PyTorch eager (the fp32 reference)", family="torchfile", reference=True),
    Format("torch_int8", ".pt", "torch", "int8", False, "quantized", ("torch",), INT8_COS, 0.0,
           "quantized qstudent.pt as fake-quant PyTorch (the int8 reference)", family="torchfile", reference=True),
    Format("onnx", ".onnx", "onnxruntime", "fp32", False, "fp32", ("onnx", "onnxruntime"), FP32_COS, 1e-3,
           "ONNX opset 17, dynamic batch, ONNX Runtime", family="onnx"),
    Format("onnx_int8", ".int8.onnx", "onnxruntime", "int8", False, "quantized", ("onnx", "onnxruntime"),
           INT8_COS, 0.5, "QDQ int8 ONNX (symmetric weights), ONNX Runtime", family="onnx", from_int8_onnx=True),
    Format("openvino", ".xml", "openvino", "fp32", False, "fp32", ("openvino",), FP32_COS, 1e-3,
           "OpenVINO IR fp32 (weights not compressed)", (".bin",), family="openvino"),
    Format("openvino_int8", ".int8.xml", "openvino", "int8", False, "quantized", ("openvino",), INT8_COS, 0.5,
           "OpenVINO IR from the QDQ ONNX (runs as real int8)", (".bin",), family="openvino", from_int8_onnx=True),
    Format("tensorrt", ".engine", "tensorrt", "fp16", True, "fp32", ("tensorrt", "torch"), FP16_COS, 5e-2,
           "TensorRT engine (fp32 | fp16 | int8 from the QDQ ONNX), NVIDIA GPU", (".engine.json",),
           family="tensorrt", from_int8_onnx=True),
    Format("torch_tensorrt", ".ts", "torch_tensorrt", "fp16", True, "fp32", ("torch_tensorrt", "torch"),
           FP16_COS, 5e-2, "Torch-TensorRT TorchScript module, NVIDIA GPU", family="torch_tensorrt"),
)}


@dataclass(frozen=True)
class Family:
    """How one export/ module makes and opens its formats.

    build(exporter, fmt, kind) -> Path: write the artifact of `fmt` from source `kind` ("fp32" | "quantized")
    through the Exporter's sources and shared ONNX; load(path, fmt, device, threads) -> Embedder.
    """

    build: Callable
    load: Callable


FAMILIES: Registry[Family] = Registry("export format family")


def register_family(name: str, build: Callable, load: Callable) -> Family:
    """Called by each family module at import (export/__init__.py imports them all)."""
    return FAMILIES.register(name, Family(build, load))


def family_of(fmt: "Format") -> Family:
    import facepipe.export  # noqa: F401  (its __init__ imports every family module, which registers itself)

    return FAMILIES.get(fmt.family)

# Parity gate of a format built at another precision (TensorRT: export.tensorrt.precision).
PRECISION_TOLERANCE = {"fp32": (FP32_COS, 1e-3), "fp16": (FP16_COS, 5e-2), "int8": (INT8_COS, 0.5)}


def get_format(key: str) -> Format:
    """The Format for a key; ConfigError with a did-you-mean otherwise."""
    try:
        return FORMATS[key]
    except KeyError:
        hint = difflib.get_close_matches(str(key), list(FORMATS), n=1)
        tip = f"did you mean {hint[0]!r}?" if hint else f"known: {', '.join(FORMATS)}"
        raise ConfigError(f"unknown export format {key!r} ({tip})") from None


def available(key: str) -> bool:
    """True when every Python module the format needs is importable."""
    return not get_format(key).missing_modules()


def is_gpu_device(device: str) -> bool:
    d = str(device).strip().lower()
    return d.startswith("cuda") or d in ("jetson", "gpu")


def install_hint(f: "Format") -> str:
    """What installs the runtime of a format ('' when it comes with the base install)."""
    if f.needs_gpu:
        return "pip install tensorrt on a machine with an NVIDIA GPU"
    return "pip install 'facepipe[openvino]'" if f.runtime == "openvino" else ""


def check_formats(keys: Iterable[str], device: str = "cpu") -> list[Format]:
    """Formats for `keys`, checked before any work: known keys, a GPU for GPU-only formats, their modules.

    Raises ConfigError for unknown keys, BackendUnavailable naming every format that cannot be made here.
    """
    formats = [get_format(k) for k in keys]
    problems = []
    for f in formats:
        why = []
        if f.needs_gpu and not is_gpu_device(device):
            why.append(f"needs an NVIDIA GPU but the device is {device!r} (set run.device=cuda on a GPU machine, "
                       f"or drop {f.key} from the formats)")
        if f.missing_modules():
            hint = install_hint(f)
            why.append(f"needs the Python module(s) {', '.join(f.missing_modules())}, not installed here"
                       f"{f' ({hint})' if hint else ''}")
        if why:
            problems.append(f"{f.key} " + " and ".join(why))
    if problems:
        raise BackendUnavailable("cannot export: " + "; ".join(problems))
    return formats


def tolerance(fmt: Format, precision: str | None = None, atol: float | None = None) -> tuple[float, float]:
    """(cosine floor, atol) for a format, at another build precision and/or with an atol override."""
    cos, tol = (fmt.cos_floor, fmt.atol) if precision in (None, fmt.precision) else PRECISION_TOLERANCE[precision]
    return cos, (tol if atol is None else float(atol))
