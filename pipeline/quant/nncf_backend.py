"""quantize.backend=nncf: 8-bit PTQ with nncf.quantize (optionally followed by the same QAT fine-tuning as the
own backend, see qat.run_qat), exported as an int8 QDQ ONNX (QuantizeLinear / DequantizeLinear pairs that
ONNX Runtime, OpenVINO and TensorRT all read), not OpenVINO's FakeQuantize op.

NNCF's first use compiles a C++ extension under ~/.cache/torch_extensions (about 80 s on this CPU).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import BackendUnavailable
from .qat import Student, face_batches


def _nncf():
    # NNCF gives its first-use compile 60 s, less than it takes on a 2-core CPU; a user setting wins.
    os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "900")
    try:
        import nncf
    except ImportError as e:
        raise BackendUnavailable(f"quantize.backend=nncf needs the nncf package ({e}): pip install "
                                 "'facepipe[openvino]', or use quantize.backend=own") from None
    return nncf


def nncf_ptq(student: Student, faces: np.ndarray, *, calib_images: int, batch_size: int, overflow_fix: bool = False):
    """nncf.quantize of a copy of the fp32 student (int8 weights and activations, BN folded by NNCF);
    overflow_fix: 7-bit weights everywhere (for x86 CPUs without VNNI, see models/quant/overflow.py)."""
    nncf = _nncf()
    calib = list(face_batches(faces[:calib_images], batch_size, student.preprocess))
    model = copy.deepcopy(student.module).eval()
    for p in model.parameters():  # the fp32 student is frozen; QAT fine-tunes this copy
        p.requires_grad_(True)
    dataset = nncf.Dataset(calib)
    return nncf.quantize(model, dataset, subset_size=min(calib_images, sum(len(b) for b in calib)),
                         preset=nncf.QuantizationPreset.MIXED,
                         advanced_parameters=nncf.AdvancedQuantizationParameters(
                             overflow_fix=nncf.OverflowFix.ENABLE if overflow_fix else nncf.OverflowFix.DISABLE))


def export_int8_onnx(qmodel, path: Path, student: Student, meta: dict, opset: int = 17) -> Path:
    """Strip NNCF's quantizers to torch fake-quantize ops and export them as ONNX QDQ pairs (atomic)."""
    import onnx

    from ..embedder import write_onnx_metadata
    from ..io import atomic_path

    nncf = _nncf()
    size = student.preprocess.size
    example = torch.zeros(1, 3, size, size)
    stripped = nncf.strip(qmodel, do_copy=True, strip_format=nncf.StripFormat.NATIVE, example_input=example).eval()
    with atomic_path(path) as tmp:
        torch.onnx.export(stripped, (example,), str(tmp), opset_version=opset, input_names=["input"],
                          output_names=["embedding"], dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}},
                          dynamo=False)
        proto = onnx.load(str(tmp))
        write_onnx_metadata(proto, student.preprocess, student.embedding_size, meta["student_sha256"])
        onnx.save(proto, str(tmp))
    return Path(path)
