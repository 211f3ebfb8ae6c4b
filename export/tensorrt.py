"""ONNX -> TensorRT engine (TensorRT Python API, imported lazily) and the TensorRT embedder.

An engine only runs on the TensorRT version and GPU it was built for, so every engine has a sidecar JSON
(`<name>.engine.json`) recording both plus the source ONNX's path and sha256. Loading an engine whose sidecar
does not match this machine rebuilds it from that ONNX when it is still there and unchanged, else refuses.
int8 engines come from the QDQ ONNX (explicit quantization); TensorRT needs every zero point to be 0.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from facepipe.pipeline.embedder import EMBEDDER_BACKENDS, Embedder
from facepipe.pipeline.errors import BackendUnavailable, ConfigError, ModelError
from facepipe.pipeline.io import atomic_path, atomic_write_bytes, atomic_write_json, sha256_file

from .formats import register_family
from .metadata import ArtifactMeta
from .onnx import INPUT

SIDECAR_SUFFIX = ".json"  # student.engine -> student.engine.json
NOT_INSTALLED = ("TensorRT is not installed (the `tensorrt` Python module cannot be imported): `pip install "
                 "tensorrt` on a machine with an NVIDIA GPU; the other formats were exported")


def import_tensorrt():
    """The tensorrt module, or BackendUnavailable saying how to get it."""
    try:
        import tensorrt
    except ImportError:
        raise BackendUnavailable(NOT_INSTALLED) from None
    return tensorrt


def sidecar_path(engine_path: str | os.PathLike) -> Path:
    p = Path(engine_path)
    return p.with_name(p.name + SIDECAR_SUFFIX)


@dataclass(frozen=True)
class BuildSettings:
    """How to build an engine (export.tensorrt)."""

    precision: str = "fp16"  # fp32 | fp16 | int8
    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 32
    workspace_mb: int = 1024
    timing_cache: str | None = None
    dla_core: int | None = None

    def __post_init__(self):
        if self.precision not in ("fp32", "fp16", "int8"):
            raise ConfigError(f"export.tensorrt.precision={self.precision!r}: expected fp32, fp16 or int8")
        if not self.min_batch <= self.opt_batch <= self.max_batch:
            raise ConfigError(f"export.tensorrt: need min_batch <= opt_batch <= max_batch, got "
                              f"{self.min_batch} / {self.opt_batch} / {self.max_batch}")

    @classmethod
    def from_config(cls, trt_cfg, **changes) -> "BuildSettings":
        d = {k: getattr(trt_cfg, k) for k in cls.__dataclass_fields__}
        return cls(**{**d, **changes})

    def timing_cache_path(self) -> Path:
        if self.timing_cache:
            return Path(self.timing_cache).expanduser()
        from facepipe.pipeline.assets import cache_dir

        return cache_dir().parent / "tensorrt" / "timing.cache"


# --- device description and the sidecar check (pure Python) ----------------------------------------
def current_device(device: str = "cuda:0") -> dict:
    """TensorRT version, GPU name and compute capability of this machine's `device`."""
    trt = import_tensorrt()
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailable(f"TensorRT needs a CUDA GPU, but torch {torch.__version__} sees none here")
    index = torch.device(device).index or 0
    p = torch.cuda.get_device_properties(index)
    return {"tensorrt": trt.__version__, "gpu": p.name, "compute_capability": f"{p.major}.{p.minor}"}


def compatibility_problems(sidecar: dict, current: dict) -> list[str]:
    """Why an engine built as `sidecar` says cannot run on `current` (empty when it can)."""
    built = sidecar.get("device") or {}
    labels = {"tensorrt": "TensorRT", "gpu": "GPU", "compute_capability": "compute capability"}
    return [f"{labels[k]} {built.get(k)!s} (engine) vs {current.get(k)!s} (here)"
            for k in labels if str(built.get(k)) != str(current.get(k))]


def ensure_compatible(engine_path: Path, sidecar: dict, current: dict,
                      rebuild: Callable[[Path, Path, BuildSettings, ArtifactMeta], Path]) -> str:
    """"ok" when the engine matches this machine; "rebuilt" after rebuilding it from its source ONNX.

    ModelError when it does not match and the source ONNX is gone or changed (never a silent wrong number).
    """
    problems = compatibility_problems(sidecar, current)
    if not problems:
        return "ok"
    src = sidecar.get("source_onnx") or {}
    onnx_path = Path(src.get("path") or "")
    if not onnx_path.is_absolute():
        onnx_path = engine_path.parent / onnx_path
    why = "; ".join(problems)
    if not src.get("path") or not onnx_path.is_file():
        raise ModelError(f"{engine_path} was built for another TensorRT / GPU ({why}) and its source ONNX "
                         f"{onnx_path} is not available to rebuild it: re-export with `facepipe export --trt` here")
    if src.get("sha256") and sha256_file(onnx_path) != src["sha256"]:
        raise ModelError(f"{engine_path} was built for another TensorRT / GPU ({why}) and its source ONNX "
                         f"{onnx_path} has changed since: re-export with `facepipe export --trt` here")
    settings = BuildSettings(**sidecar.get("settings") or {})
    meta = ArtifactMeta.from_dict(sidecar.get("facepipe") or {}, str(sidecar_path(engine_path)))
    rebuild(onnx_path, engine_path, settings, meta)
    return "rebuilt"


def read_sidecar(engine_path: Path) -> dict:
    side = sidecar_path(engine_path)
    try:
        return json.loads(side.read_text())
    except FileNotFoundError:
        raise ModelError(f"{engine_path}: its sidecar {side.name} (TensorRT version, GPU, facepipe metadata) is "
                         "missing: re-export the engine with facepipe") from None
    except (OSError, ValueError) as e:
        raise ModelError(f"{side}: unreadable sidecar ({e})") from None


# --- QDQ check -------------------------------------------------------------------------------------
def asymmetric_qdq(onnx_path: str | os.PathLike) -> list[str]:
    """Q/DQ nodes whose zero point is not all zeros (TensorRT's explicit quantization refuses them)."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(onnx_path))
    inits = {t.name: t for t in proto.graph.initializer}
    consts = {n.output[0]: n.attribute[0].t for n in proto.graph.node if n.op_type == "Constant" and n.attribute}
    bad = []
    for node in proto.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3 or not node.input[2]:
            continue
        t = inits.get(node.input[2]) or consts.get(node.input[2])
        if t is not None and np.any(numpy_helper.to_array(t) != 0):
            bad.append(node.name or node.input[0])
    return bad


# --- build ----------------------------------------------------------------------------------------
def _check_dla(settings: BuildSettings) -> None:
    if settings.dla_core is None:
        return
    from facepipe.pipeline.device import detect_jetson

    if detect_jetson() is None:
        raise ConfigError(f"export.tensorrt.dla_core={settings.dla_core}: DLA cores exist on Jetson only; "
                          "set it to null on this machine")


def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, settings: BuildSettings,
                 meta: ArtifactMeta, device: str = "cuda:0") -> Path:
    """Build a serialized engine from an ONNX file; write it and its sidecar atomically; returns the path."""
    trt = import_tensorrt()
    here = current_device(device)
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    _check_dla(settings)
    if settings.precision == "int8":
        bad = asymmetric_qdq(onnx_path)
        if bad:
            raise ModelError(f"{onnx_path}: {len(bad)} Q/DQ node(s) have non-zero zero points (e.g. {bad[0]}); "
                             "TensorRT needs symmetric int8: quantize with quantize.weight_symmetric=true and "
                             "quantize.act_symmetric=true")

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flag = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)  # the default from TensorRT 10
    network = builder.create_network(1 << int(flag) if flag is not None else 0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ModelError(f"TensorRT cannot parse {onnx_path}: {'; '.join(errors[:3]) or 'unknown error'}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mb << 20)
    if settings.precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif settings.precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # the Q/DQ nodes carry the scales: no calibrator
        config.set_flag(trt.BuilderFlag.FP16)  # layers left unquantized may use fp16
    if settings.dla_core is not None:
        if builder.num_DLA_cores <= settings.dla_core:
            raise BackendUnavailable(f"export.tensorrt.dla_core={settings.dla_core}: this device has "
                                     f"{builder.num_DLA_cores} DLA core(s)")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = settings.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)

    size = meta.preprocess.size
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT, (settings.min_batch, 3, size, size), (settings.opt_batch, 3, size, size),
                      (settings.max_batch, 3, size, size))
    config.add_optimization_profile(profile)

    cache_path = settings.timing_cache_path()
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ModelError(f"TensorRT failed to build an engine from {onnx_path} (precision {settings.precision}); "
                         "see the TensorRT log above")
    atomic_write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(bytes(serialized))
    atomic_write_json(sidecar_path(engine_path), {
        "device": here, "settings": asdict(settings),
        "source_onnx": {"path": os.path.relpath(onnx_path, engine_path.parent), "sha256": sha256_file(onnx_path)},
        "engine_sha256": sha256_file(engine_path), "facepipe": {**meta.to_dict(), "format": "tensorrt"}})
    return engine_path


# --- runtime ----------------------------------------------------------------------------------------
class TensorRTEmbedder(Embedder):
    """A TensorRT engine on a CUDA device; buffers are torch CUDA tensors (no pycuda). Batches larger than
    the engine's profile are run in chunks."""

    runtime = "tensorrt"

    def __init__(self, path: str | os.PathLike, device: str = "cuda:0", name: str | None = None,
                 rebuild: bool = True):
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(f"TensorRT engine {self.path} not found")
        sidecar = read_sidecar(self.path)
        meta = ArtifactMeta.from_dict(sidecar.get("facepipe") or {}, str(sidecar_path(self.path)))
        trt = import_tensorrt()
        import torch

        here = current_device(device)

        def refuse(*_):
            why = "; ".join(compatibility_problems(sidecar, here))
            raise ModelError(f"{self.path} does not match this machine ({why}) and rebuilding is off")

        self.status = ensure_compatible(self.path, sidecar, here,
                                        (lambda o, e, s, m: build_engine(o, e, s, m, device)) if rebuild else refuse)
        if self.status == "rebuilt":
            sidecar = read_sidecar(self.path)
        self.device = torch.device(device if device.startswith("cuda") else "cuda:0")
        self.max_batch = int(sidecar["settings"]["max_batch"])
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise ModelError(f"TensorRT cannot deserialize {self.path}")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        ins = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(ins) != 1 or not outs:
            raise ModelError(f"{self.path}: expected one input and an output, found {ins} -> {outs}")
        self.input, self.output = ins[0], outs[0]
        half = trt.DataType.HALF
        self._in_half = self.engine.get_tensor_dtype(self.input) == half
        self._out_half = self.engine.get_tensor_dtype(self.output) == half
        self.meta, self.sidecar, self.fingerprint = meta, sidecar, meta.fingerprint
        super().__init__(name or self.path.stem, meta.preprocess, meta.embedding_size)

    def _forward(self, batch_nchw: np.ndarray) -> np.ndarray:
        return np.concatenate([self._chunk(batch_nchw[i:i + self.max_batch])
                               for i in range(0, len(batch_nchw), self.max_batch)])

    def _chunk(self, x: np.ndarray) -> np.ndarray:
        import torch

        t = torch.from_numpy(np.ascontiguousarray(x)).to(self.device)
        t = t.half() if self._in_half else t
        self.context.set_input_shape(self.input, tuple(t.shape))
        y = torch.empty(tuple(self.context.get_tensor_shape(self.output)),
                        dtype=torch.float16 if self._out_half else torch.float32, device=self.device)
        self.context.set_tensor_address(self.input, t.data_ptr())
        self.context.set_tensor_address(self.output, y.data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise ModelError(f"TensorRT inference failed for {self.path}")
        stream.synchronize()
        return y.float().cpu().numpy()

    def describe(self) -> dict:
        d = super().describe()
        d.update(path=str(self.path), device=str(self.device), engine=self.sidecar.get("device"),
                 settings=self.sidecar.get("settings"), status=self.status, fingerprint=self.fingerprint)
        return d


EMBEDDER_BACKENDS.register("tensorrt", TensorRTEmbedder)


# --- the TensorRT family -----------------------------------------------------------------------------
def _build(ex, fmt, kind: str) -> Path:
    return build_engine(ex.onnx_for(kind), ex.path_for(fmt), ex.plan.trt, ex.source(kind).meta(fmt.key),
                        ex.plan.device)


def _load(path: Path, fmt, device: str, threads: int | None) -> Embedder:
    return TensorRTEmbedder(path, device=device if device.startswith("cuda") else "cuda:0")


register_family("tensorrt", _build, _load)
