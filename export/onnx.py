"""PyTorch student -> ONNX (legacy exporter: measured parity 2e-5 here), and the QDQ int8 ONNX.

Both files get input "input" (N, 3, S, S) float, output "embedding" (N, D), a dynamic batch axis and
facepipe metadata; they are written atomically.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

from facepipe.pipeline.embedder import Preprocess
from facepipe.pipeline.errors import ModelError
from facepipe.pipeline.io import atomic_path

from .formats import register_family
from .metadata import ArtifactMeta, stamp_onnx

INPUT, OUTPUT = "input", "embedding"


def export_onnx(module, path: str | os.PathLike, preprocess: Preprocess, embedding_size: int, fingerprint: str,
                opset: int = 17, *, source_sha256: str = "", arch: str = "", fmt: str = "onnx") -> Path:
    """Export an fp32 nn.Module to ONNX with facepipe metadata; returns the path."""
    import onnx
    import torch

    meta = ArtifactMeta(preprocess, int(embedding_size), fingerprint, fmt, source_sha256, arch)
    was_training = module.training
    module = module.eval()
    dummy = torch.zeros(2, 3, preprocess.size, preprocess.size)
    try:
        with atomic_path(path) as tmp, torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
            torch.onnx.export(module, dummy, str(tmp), input_names=[INPUT], output_names=[OUTPUT],
                              dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}, opset_version=opset,
                              do_constant_folding=True, dynamo=False)
            proto = onnx.load(str(tmp))
            _check_io(proto, embedding_size, path)
            onnx.save(stamp_onnx(proto, meta), str(tmp))
    finally:
        module.train(was_training)
    return Path(path)


def export_qdq(qmodel, path: str | os.PathLike, meta: ArtifactMeta, opset: int = 17) -> Path:
    """Export a quantized model (facepipe.models.quant) to a QDQ int8 ONNX and stamp `meta` on it."""
    import onnx

    from facepipe.export.onnx_qdq import export_qdq_onnx

    with atomic_path(path) as tmp:
        export_qdq_onnx(qmodel, tmp, opset=opset)
        proto = onnx.load(str(tmp))
        _check_io(proto, meta.embedding_size, path)
        onnx.save(stamp_onnx(proto, meta), str(tmp))
    return Path(path)


def stamp_onnx_file(src: str | os.PathLike, path: str | os.PathLike, meta: ArtifactMeta) -> Path:
    """Copy an ONNX made elsewhere (e.g. NNCF's int8 ONNX) to `path` with facepipe metadata."""
    import onnx

    with atomic_path(path) as tmp:
        shutil.copyfile(src, tmp)
        proto = onnx.load(str(tmp))
        _check_io(proto, meta.embedding_size, src)
        onnx.save(stamp_onnx(proto, meta), str(tmp))
    return Path(path)


def graph_output_dim(proto) -> int | None:
    """Static last dimension of the graph's first output (None when dynamic)."""
    dims = proto.graph.output[0].type.tensor_type.shape.dim
    return dims[-1].dim_value if dims and dims[-1].dim_value > 0 else None


def _check_io(proto, embedding_size: int, where) -> None:
    inputs = [i for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer}]
    if len(inputs) != 1 or len(proto.graph.output) != 1:
        raise ModelError(f"{where}: expected one input and one output, found {[i.name for i in inputs]} -> "
                         f"{[o.name for o in proto.graph.output]}")
    dim = graph_output_dim(proto)
    if dim is not None and dim != int(embedding_size):
        raise ModelError(f"{where}: the model outputs {dim}-d embeddings, expected {embedding_size}")


# --- the ONNX family --------------------------------------------------------------------------------
def _build(ex, fmt, kind: str) -> Path:
    return ex.onnx_for(kind)  # written once per source: also the input of OpenVINO and TensorRT


def _load(path: Path, fmt, device: str, threads: int | None):
    import onnx

    from facepipe.pipeline.embedder import OnnxRuntimeEmbedder, ort_providers

    from .metadata import ArtifactMeta, check_output_dim

    proto = onnx.load(str(path), load_external_data=False)
    meta = ArtifactMeta.from_props({p.key: p.value for p in proto.metadata_props}, str(path))
    check_output_dim(meta, graph_output_dim(proto), str(path))
    del proto
    return OnnxRuntimeEmbedder(path, providers=ort_providers(device), threads=threads)


register_family("onnx", _build, _load)
