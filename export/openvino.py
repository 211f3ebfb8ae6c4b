"""ONNX -> OpenVINO IR (.xml + .bin, fp32 weights kept) and the OpenVINO embedder.

An int8 IR is converted from the QDQ ONNX: OpenVINO turns Q/DQ pairs into FakeQuantize and runs them as
real int8. facepipe metadata lives in the IR's rt_info under "facepipe".
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import numpy as np

from facepipe.pipeline.embedder import EMBEDDER_BACKENDS, Embedder
from facepipe.pipeline.errors import BackendUnavailable, ModelError, first_line

from .formats import register_family
from .metadata import ArtifactMeta, check_output_dim

RT_ROOT = "facepipe"
RT_KEYS = ("preprocess", "embedding_size", "fingerprint", "format", "source_sha256", "arch")


def import_openvino():
    try:
        import openvino
    except ImportError:
        raise BackendUnavailable("OpenVINO is not installed: pip install 'facepipe[openvino]' "
                                 "(or pip install openvino)") from None
    return openvino


_GENERATED_NAME = re.compile(r"([A-Za-z]+)_\d+")


def _number_generated_names(model) -> None:
    """convert_model names the nodes it creates from a process-wide counter (Range_8, then Range_2550 on
    the next conversion in one process), so one ONNX gave other IR bytes; number such names by position."""
    for i, op in enumerate(model.get_ordered_ops()):
        if op.get_type_name() in ("Parameter", "Result"):
            continue
        m = _GENERATED_NAME.fullmatch(op.get_friendly_name())
        if m:
            op.set_friendly_name(f"{m.group(1)}_{i}")


def onnx_to_ir(onnx_path: str | os.PathLike, xml_path: str | os.PathLike, meta: ArtifactMeta) -> Path:
    """Convert an ONNX file to IR at xml_path (+ .bin beside it) with `meta` in rt_info; returns xml_path."""
    ov = import_openvino()
    xml_path = Path(xml_path)
    model = ov.convert_model(str(onnx_path))
    _number_generated_names(model)
    props = meta.to_props()
    for key in RT_KEYS:
        model.set_rt_info(props[f"facepipe.{key}"], [RT_ROOT, key])
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".tmp-{xml_path.stem}.", dir=xml_path.parent) as tmp:
        tmp_xml = Path(tmp) / xml_path.name
        ov.save_model(model, str(tmp_xml), compress_to_fp16=False)
        # weights first, the .xml (what loaders open) last
        os.replace(tmp_xml.with_suffix(".bin"), xml_path.with_suffix(".bin"))
        os.replace(tmp_xml, xml_path)
    return xml_path


def read_ir_meta(model, where: str) -> ArtifactMeta:
    """facepipe metadata from an ov.Model's rt_info; ModelError naming what is missing."""
    props = {}
    for key in RT_KEYS:
        if model.has_rt_info([RT_ROOT, key]):
            props[f"facepipe.{key}"] = model.get_rt_info([RT_ROOT, key]).astype(str)
    return ArtifactMeta.from_props(props, where)


def ov_device(device: str) -> str:
    """facepipe device string -> OpenVINO device name (CPU, GPU, GPU.N, AUTO)."""
    d = str(device).strip()
    if d.lower() == "cpu" or d.upper() in ("CPU", "AUTO", "NPU") or d.upper().startswith("GPU"):
        return d.upper()
    raise BackendUnavailable(f"device {device!r}: OpenVINO runs on cpu, GPU[.N] (Intel) or AUTO; "
                             "use tensorrt / onnxruntime for NVIDIA GPUs")


class OpenVINOEmbedder(Embedder):
    """An OpenVINO IR (or ONNX) compiled for a device. Preprocessing and embedding size come from the IR's
    facepipe rt_info. precision is INFERENCE_PRECISION_HINT: f32 by default, because this CPU's default (bf16)
    moves embeddings by up to 0.5."""

    runtime = "openvino"

    def __init__(self, path: str | os.PathLike, device: str = "cpu", threads: int | None = None,
                 precision: str | None = "f32", name: str | None = None):
        ov = import_openvino()
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(f"OpenVINO model {self.path} not found")
        if self.path.suffix == ".xml" and not self.path.with_suffix(".bin").is_file():
            raise ModelError(f"{self.path}: its weights {self.path.with_suffix('.bin').name} are missing beside it")
        core = ov.Core()
        self.device = ov_device(device)
        base = self.device.split(".")[0]
        if base not in ("AUTO",) and not any(d.split(".")[0] == base for d in core.available_devices):
            raise BackendUnavailable(f"OpenVINO device {self.device} not available here "
                                     f"(available: {core.available_devices})")
        try:
            model = core.read_model(str(self.path))
        except RuntimeError as e:
            raise ModelError(f"OpenVINO cannot read {self.path}: {first_line(e)}") from None
        meta = read_ir_meta(model, str(self.path))
        if len(model.inputs) != 1:
            raise ModelError(f"{self.path}: expected one image input, found {len(model.inputs)}")
        out_shape = model.outputs[0].get_partial_shape()
        static = out_shape[-1].get_length() if out_shape.rank.is_static and out_shape[-1].is_static else None
        check_output_dim(meta, static, str(self.path))
        config: dict = {}
        if precision:
            config["INFERENCE_PRECISION_HINT"] = precision
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.meta, self.precision, self.threads = meta, precision, threads
        self.fingerprint = meta.fingerprint
        self.compiled = core.compile_model(model, self.device, config)
        self.request = self.compiled.create_infer_request()
        super().__init__(name or self.path.stem, meta.preprocess, meta.embedding_size)

    def _forward(self, batch_nchw: np.ndarray) -> np.ndarray:
        self.request.infer({0: batch_nchw})
        return self.request.get_output_tensor(0).data.copy()

    def describe(self) -> dict:
        d = super().describe()
        d.update(path=str(self.path), device=self.device, precision_hint=self.precision, threads=self.threads,
                 fingerprint=self.fingerprint, format=self.meta.format)
        return d


EMBEDDER_BACKENDS.register("openvino", OpenVINOEmbedder)


# --- the OpenVINO family -----------------------------------------------------------------------------
def _build(ex, fmt, kind: str) -> Path:
    return onnx_to_ir(ex.onnx_for(kind), ex.path_for(fmt), ex.source(kind).meta(fmt.key))


def _load(path: Path, fmt, device: str, threads: int | None) -> Embedder:
    return OpenVINOEmbedder(path, device=device, threads=threads)


register_family("openvino", _build, _load)
