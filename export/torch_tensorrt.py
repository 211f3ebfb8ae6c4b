"""The Torch-TensorRT alternative (export.tensorrt.builder: torch_tensorrt): a TorchScript module with
TensorRT engines inside, facepipe metadata in its extra file. Imported lazily; absent -> BackendUnavailable."""

from __future__ import annotations

import json
import os
from pathlib import Path

from facepipe.pipeline.embedder import EMBEDDER_BACKENDS, TorchEmbedder
from facepipe.pipeline.errors import BackendUnavailable, ModelError
from facepipe.pipeline.io import atomic_path

from .formats import register_family
from .metadata import ArtifactMeta
from .tensorrt import BuildSettings, current_device

EXTRA = "facepipe.json"
NOT_INSTALLED = ("Torch-TensorRT is not installed (the `torch_tensorrt` module cannot be imported): `pip install "
                 "torch-tensorrt` (it needs TensorRT's libnvinfer) on a machine with an NVIDIA GPU; the other "
                 "formats were exported")


def import_torch_tensorrt():
    try:
        import torch_tensorrt
    except ImportError:
        raise BackendUnavailable(NOT_INSTALLED) from None
    return torch_tensorrt


def compile_module(module, path: str | os.PathLike, settings: BuildSettings, meta: ArtifactMeta,
                   device: str = "cuda:0") -> Path:
    """Compile an fp32 nn.Module (fp32 / fp16) to a TorchScript file with TensorRT engines."""
    tt = import_torch_tensorrt()
    import torch

    here = current_device(device)
    if settings.precision == "int8":
        raise ModelError("Torch-TensorRT int8 is not wired here: use export.tensorrt.builder=tensorrt, which builds "
                         "int8 engines from the QDQ ONNX")
    s = meta.preprocess.size
    shape = lambda b: (b, 3, s, s)  # noqa: E731
    inputs = [tt.Input(min_shape=shape(settings.min_batch), opt_shape=shape(settings.opt_batch),
                       max_shape=shape(settings.max_batch), dtype=torch.float32)]
    precisions = {torch.float32} | ({torch.float16} if settings.precision == "fp16" else set())
    module = module.eval().to(device)
    compiled = tt.compile(module, ir="ts", inputs=inputs, enabled_precisions=precisions,
                          workspace_size=settings.workspace_mb << 20)
    extra = {EXTRA: json.dumps({"facepipe": {**meta.to_dict(), "format": "torch_tensorrt"}, "device": here})}
    with atomic_path(path) as tmp:
        torch.jit.save(compiled, str(tmp), _extra_files=extra)
    return Path(path)


class TorchTensorRTEmbedder(TorchEmbedder):
    """A Torch-TensorRT TorchScript file on a CUDA device."""

    runtime = "torch_tensorrt"

    def __init__(self, path: str | os.PathLike, device: str = "cuda:0", name: str | None = None):
        import_torch_tensorrt()  # registers the TensorRT ops TorchScript needs
        import torch

        path = Path(path)
        if not path.is_file():
            raise ModelError(f"Torch-TensorRT module {path} not found")
        extra = {EXTRA: ""}
        module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
        try:
            info = json.loads(extra[EXTRA] or "{}")
        except ValueError:
            info = {}
        meta = ArtifactMeta.from_dict(info.get("facepipe") or {}, str(path))
        here = current_device(device)
        if info.get("device") and info["device"] != here:
            raise ModelError(f"{path} was compiled for {info['device']} but this machine is {here}: re-export it here")
        self.path, self.meta, self.fingerprint = path, meta, meta.fingerprint
        super().__init__(module, meta.preprocess, name=name or path.stem, device=device, dim=meta.embedding_size)


EMBEDDER_BACKENDS.register("torch_tensorrt", TorchTensorRTEmbedder)


# --- the Torch-TensorRT family -----------------------------------------------------------------------
def _build(ex, fmt, kind: str) -> Path:
    return compile_module(ex.source(kind).reference.module, ex.path_for(fmt), ex.plan.trt,
                          ex.source(kind).meta(fmt.key), ex.plan.device)


def _load(path: Path, fmt, device: str, threads: int | None):
    return TorchTensorRTEmbedder(path, device=device if device.startswith("cuda") else "cuda:0")


register_family("torch_tensorrt", _build, _load)
