"""The PyTorch family: student.pt (fp32) and qstudent.pt (fake-quant), the parity references themselves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from facepipe.pipeline.embedder import Preprocess, TorchEmbedder
from facepipe.pipeline.errors import ModelError

from .formats import register_family


def checkpoint_format(path: Path) -> str:
    """"torch_int8" for a quantized checkpoint, else "torch" (by content: a renamed file still loads)."""
    return "torch_int8" if _is_quantized_checkpoint(path) else "torch"


def _is_quantized_checkpoint(path: Path) -> bool:
    if path.name.lower().endswith("qstudent.pt"):
        return True
    obj = _checkpoint(path)
    tag = f"{obj.get('kind', '')} {obj.get('format', '')}"
    return "quant" in tag or isinstance(obj.get("settings"), dict)


def _checkpoint(path: Path) -> dict:
    from facepipe.pipeline.io import safe_torch_load

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
    from facepipe.pipeline.quant.storage import load_quantized

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



def _build(ex, fmt, kind: str) -> Path:
    return ex.source(kind).path  # nothing to build: the checkpoint is the artifact


def _load(path: Path, fmt, device: str, threads: int | None):
    return (load_quantized_student if fmt.source == "quantized" else load_student)(path, device, threads)


register_family("torchfile", _build, _load)
