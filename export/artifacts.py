"""One loader for every artifact format: `load_artifact(path)` -> Embedder, from the artifact's own metadata.

The format comes from the file name (FORMATS suffixes, longest first) or `fmt`; .pt files are told apart by
content (a distilled student.pt or a quantized qstudent.pt). Missing or inconsistent metadata is a ModelError
naming the file and what is wrong: an artifact is never run with guessed preprocessing.
"""

from __future__ import annotations

import os
from pathlib import Path

from facepipe.pipeline.embedder import Embedder
from facepipe.pipeline.errors import ModelError
from facepipe.pipeline.io import sha256_file, sha256_json

from .formats import FORMATS, Format, check_formats, family_of, get_format

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
        from .torchfile import checkpoint_format

        return FORMATS[checkpoint_format(path)]
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
    if f.family == "torchfile":  # content decides: a renamed file still loads correctly
        from .torchfile import checkpoint_format

        f = FORMATS[checkpoint_format(path)]
    check_formats([f.key], device)
    emb = family_of(f).load(path, f, device, threads)
    emb.format, emb.artifact = f.key, str(path)
    return emb


def loader_for(key: str):
    """The load function of a format key: its family's (every FORMATS key has one)."""
    return family_of(get_format(key)).load
