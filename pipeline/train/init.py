"""distill.student.init: start the student from pretrained weights instead of a fresh initialisation.

A facepipe checkpoint or any state dict (torch.load weights_only), or a TorchScript module of the same
architecture (its state dict). An ONNX file is read when its initializers carry the architecture's parameter
names (an export that kept them); exporters that fold BatchNorm into the convolutions rename and merge the
weights, and such a file is refused with what to give instead. Every missing or misshapen key is named.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError, ModelError
from ..io import safe_torch_load
from ..weights import load_weights, strip_prefixes, unwrap_checkpoint


def _onnx_state(path: Path) -> dict:
    import numpy as np
    import onnx
    import torch
    from onnx import numpy_helper

    try:
        proto = onnx.load(str(path))
    except Exception as e:  # DecodeError, OSError
        raise ModelError(f"{path}: not a readable ONNX model ({type(e).__name__})") from None
    return {t.name: torch.from_numpy(np.array(numpy_helper.to_array(t))) for t in proto.graph.initializer}


def pretrained_state(path: Path) -> tuple[dict, dict]:
    """(state dict, metadata) of a pretrained student file, by what the file is."""
    from ..teachers.checkpoint import is_torchscript

    if not path.is_file():
        raise ConfigError(f"distill.student.init: {path} not found")
    if path.suffix.lower() == ".onnx":
        return _onnx_state(path), {"format": "onnx"}
    if is_torchscript(path):
        import torch

        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:
            raise ModelError(f"torch.jit.load cannot read {path}: {type(e).__name__}") from None
        return dict(module.state_dict()), {"format": "torchscript"}
    state, meta = unwrap_checkpoint(safe_torch_load(path), path)
    return strip_prefixes(state), {**meta, "format": "checkpoint"}


def init_student(student, path: Path, arch: str, embedding_size: int) -> dict:
    """Load pretrained weights into the freshly built `student`; returns what was loaded (for the manifest)."""
    state, meta = pretrained_state(Path(path))
    declared = meta.get("arch")
    if isinstance(declared, str) and declared != arch:
        raise ConfigError(f"distill.student.init: {path} holds a {declared!r} but distill.student.arch is "
                          f"{arch!r}: set the arch to match, or give weights of a {arch}")
    hint = f"distill.student.arch={arch} with embedding_size={embedding_size}"
    try:
        load_weights(student, state, str(path), hint)
    except ModelError as e:
        if meta["format"] == "onnx":
            raise ModelError(f"{e}. This ONNX file does not keep the parameter names (exporters fold BatchNorm "
                             "into the convolutions): give the checkpoint (.pt) or a TorchScript of it") from None
        raise
    return {"path": str(path), "format": meta["format"], "tensors": len(state)}
