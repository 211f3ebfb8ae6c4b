"""One loader for every artifact format: `load_artifact(path)` -> Embedder, from the artifact's own metadata.

The format comes from the file name (FORMATS suffixes, longest first) or `fmt`; .pt files are told apart by
content (a distilled student.pt or a quantized qstudent.pt). Missing or inconsistent metadata is a ModelError
naming the file and what is wrong: an artifact is never run with guessed preprocessing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from facepipe.pipeline.embedder import Embedder, Preprocess, TorchEmbedder
from facepipe.pipeline.errors import ModelError
from facepipe.pipeline.io import sha256_file, sha256_json

from .formats import FORMATS, Format, check_formats, get_format

STUDENT_KIND = "facepipe.student"


def format_for_path(path: str | os.PathLike) -> Format:
    """The Format of a file by its name (longest matching suffix); .pt by content (student or quantized)."""
    path = Path(path)
    name = path.name.lower()
    matches = [f for f in FORMATS.values() if name.endswith(f.suffix)]
    if not matches:
        suffixes = sorted({f.suffix for f in FORMATS.values()})
        raise ModelError(f"{path}: unknown artifact type (known suffixes: {', '.join(suffixes)})")
    best = max(len(f.suffix) for f in matches)
    matches = [f for f in matches if len(f.suffix) == best]
    if len(matches) > 1:  # .pt: fp32 student or quantized student
        return FORMATS["torch_int8" if _is_quantized_checkpoint(path) else "torch"]
    return matches[0]


def artifact_files(path: str | os.PathLike, fmt: Format | str | None = None) -> list[Path]:
    """The artifact's file and its companions (OpenVINO .bin, TensorRT sidecar, ONNX external data)."""
    path = Path(path)
    fmt = get_format(fmt) if isinstance(fmt, str) else (fmt or format_for_path(path))
    files = [path] + [path.with_suffix(c) for c in fmt.companions]
    if fmt.suffix.endswith(".onnx") and path.is_file():
        from facepipe.pipeline.embedder import onnx_external_files

        files += onnx_external_files(path)
    return files


def artifact_fingerprint(path: str | os.PathLike, fmt: Format | str | None = None) -> str:
    """sha256 over the format key and every file of the artifact (a cache key for its embeddings)."""
    fmt = get_format(fmt) if isinstance(fmt, str) else (fmt or format_for_path(path))
    files = artifact_files(path, fmt)
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise ModelError(f"artifact {path}: file(s) {', '.join(missing)} not found")
    return sha256_json({"format": fmt.key, "files": [[p.name, sha256_file(p)] for p in files]})


def load_artifact(path: str | os.PathLike, device: str = "cpu", threads: int | None = None,
                  fmt: str | None = None) -> Embedder:
    """Load any exported artifact (or student.pt / qstudent.pt) as an Embedder on `device`.

    threads: intra-op threads for ONNX Runtime / OpenVINO (PyTorch's is process-wide: set it yourself).
    The returned embedder has `.format` (the key) and `.artifact` (the path).
    """
    path = Path(path)
    if not path.exists():
        raise ModelError(f"artifact {path} not found")
    f = get_format(fmt) if fmt else format_for_path(path)
    if f.key in ("torch", "torch_int8"):  # content decides: a renamed file still loads correctly
        f = FORMATS["torch_int8" if _is_quantized_checkpoint(path) else "torch"]
    check_formats([f.key], device)
    emb = _LOADERS[f.key](path, device, threads)
    emb.format, emb.artifact = f.key, str(path)
    return emb


# --- loaders -------------------------------------------------------------------------------------------
def _is_quantized_checkpoint(path: Path) -> bool:
    if path.name.lower().endswith("qstudent.pt"):
        return True
    obj = _checkpoint(path)
    tag = f"{obj.get('kind', '')} {obj.get('format', '')}"
    return "quant" in tag or isinstance(obj.get("settings"), dict)


def _checkpoint(path: Path) -> dict:
    from facepipe.pipeline.teachers import safe_torch_load

    obj = safe_torch_load(path)
    if not isinstance(obj, dict):
        raise ModelError(f"{path}: expected a facepipe checkpoint (a dict), found {type(obj).__name__}")
    return obj


def _require(meta: dict[str, Any], keys: tuple[str, ...], path: Path) -> None:
    missing = [k for k in keys if meta.get(k) in (None, "", {})]
    if missing:
        raise ModelError(f"{path}: checkpoint metadata {', '.join(missing)} missing; facepipe needs arch, "
                         "embedding_size and preprocess beside the weights (re-save it through `facepipe distill`)")


def load_student(path: Path, device: str = "cpu", threads: int | None = None) -> TorchEmbedder:
    """A distilled student.pt through the checkpoint-teacher path (weights_only loading)."""
    from facepipe.pipeline.config import TeacherConfig
    from facepipe.pipeline.teachers import CheckpointTeacher

    ck = _checkpoint(path)
    _require(ck, ("arch", "embedding_size", "preprocess"), path)
    src = CheckpointTeacher.from_config(TeacherConfig(source=str(path), kind="checkpoint"), path)
    emb = src.load(device=device)
    emb._dim = src.cfg.embedding_size
    emb.fingerprint = str(ck.get("fingerprint") or src.fingerprint())
    emb.arch = str(ck["arch"])
    return emb


def load_quantized_student(path: Path, device: str = "cpu", threads: int | None = None) -> TorchEmbedder:
    """A quantized qstudent.pt as its fake-quant PyTorch model (the int8 parity reference)."""
    from facepipe.models.quant import load_quantized

    qmodel, extra = load_quantized(path)
    # the checkpoint's own identity (rebuilt into the model) wins over the free-form meta saved beside it
    meta = {**(extra or {}), **{k: getattr(qmodel, k, None) for k in ("arch", "embedding_size", "preprocess")
                                 if getattr(qmodel, k, None) is not None}}
    _require(meta, ("arch", "embedding_size", "preprocess"), path)
    pre = meta["preprocess"] if isinstance(meta["preprocess"], Preprocess) else Preprocess.from_dict(meta["preprocess"])
    emb = TorchEmbedder(qmodel, pre, name=path.stem, device=device, dim=int(meta["embedding_size"]))
    emb.fingerprint = meta.get("fingerprint") or meta.get("student_sha256")
    emb.arch = str(meta["arch"])
    return emb


def _onnx(path: Path, device: str, threads: int | None) -> Embedder:
    import onnx

    from facepipe.pipeline.embedder import OnnxRuntimeEmbedder, ort_providers

    from .metadata import ArtifactMeta, check_output_dim
    from .onnx import graph_output_dim

    proto = onnx.load(str(path), load_external_data=False)
    meta = ArtifactMeta.from_props({p.key: p.value for p in proto.metadata_props}, str(path))
    check_output_dim(meta, graph_output_dim(proto), str(path))
    del proto
    return OnnxRuntimeEmbedder(path, providers=ort_providers(device), threads=threads)


def _openvino(path: Path, device: str, threads: int | None) -> Embedder:
    from .openvino import OpenVINOEmbedder

    return OpenVINOEmbedder(path, device=device, threads=threads)


def _tensorrt(path: Path, device: str, threads: int | None) -> Embedder:
    from .tensorrt import TensorRTEmbedder

    return TensorRTEmbedder(path, device=device if device.startswith("cuda") else "cuda:0")


def _torch_tensorrt(path: Path, device: str, threads: int | None) -> Embedder:
    from .torch_tensorrt import TorchTensorRTEmbedder

    return TorchTensorRTEmbedder(path, device=device if device.startswith("cuda") else "cuda:0")


_LOADERS = {"torch": load_student, "torch_int8": load_quantized_student, "onnx": _onnx, "onnx_int8": _onnx,
            "openvino": _openvino, "openvino_int8": _openvino, "tensorrt": _tensorrt,
            "torch_tensorrt": _torch_tensorrt}


def loader_for(key: str):
    """The loader function of a format key (every FORMATS key has one)."""
    return _LOADERS[get_format(key).key]
