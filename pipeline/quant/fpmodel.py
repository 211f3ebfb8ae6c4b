"""The full-precision model a quantization run starts from: a facepipe student.pt, or any face model facepipe
can load as a teacher (`quantize.model` / `facepipe quantize --model`): an ONNX file, an insightface pack or a
packaged model (imported into torch by models/onnx_graph.py and checked against ONNX Runtime on real faces
before anything is quantized), or a checkpoint of a registered / importable architecture.

TorchScript is refused: torch.fx cannot trace a ScriptModule, and quantization needs the graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from ..embedder import Preprocess
from ..errors import ModelError, ParityError

IMPORT_COS_FLOOR = 0.99999  # imported graph vs ONNX Runtime: the same float32 arithmetic, up to op order
IMPORT_ATOL = 1e-3
IMPORTED_KINDS = ("onnx", "insightface", "package")


@dataclass
class Student:
    """The fp32 model: module (eval, frozen), its preprocessing, and how to rebuild and name it."""

    module: nn.Module
    preprocess: Preprocess
    arch: str
    embedding_size: int
    path: Path
    sha256: str  # what the quantized artifacts are tied to: the checkpoint's sha256, or the source fingerprint
    arch_kwargs: dict | None = None  # rebuilds `arch` (an imported ONNX graph's spec)
    origin: str = "facepipe student"
    import_parity: dict | None = field(default=None)  # imported models: torch vs ONNX Runtime on real faces


def _frozen(module: nn.Module) -> nn.Module:
    module = module.float().eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def load_student(path: str | Path) -> Student:
    """Load a facepipe student.pt (or any checkpoint declaring arch + embedding_size) as an fp32 module."""
    from ..config import TeacherConfig
    from ..errors import ConfigError
    from ..io import sha256_file
    from ..teachers import CheckpointTeacher

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"student checkpoint {path} not found (a distill stage's student.pt)")
    try:
        src = CheckpointTeacher.from_config(TeacherConfig(source=str(path), kind="checkpoint"), path)
    except ConfigError:  # it names teacher.arch, which means nothing here
        raise ModelError(f"{path} declares no architecture ('arch'); quantize a facepipe student.pt, or name the "
                         "model with quantize.model / --model (an .onnx, a model pack, sface, ...)") from None
    module = _frozen(src.load().module)
    return Student(module, src.preprocess, src.cfg.arch, src.cfg.embedding_size, path, sha256_file(path),
                   arch_kwargs=src.cfg.arch_kwargs or None)


def load_fp_model(source: str, base_dir: Path | None = None, *, parity: tuple[np.ndarray, str] | None = None,
                  say=print) -> Student:
    """The model named by `source` (a teacher.source string: path, pack, packaged name) as a Student.

    ONNX models are imported and must match ONNX Runtime on `parity` (faces, where they come from) first:
    a ParityError names the numbers otherwise. A collapsed model (every face one direction) is refused too.
    """
    from ..config import TeacherConfig
    from ..teachers import resolve_teacher

    src = resolve_teacher(TeacherConfig(source=str(source), kind="auto"), base_dir)
    if src.warning():
        say(src.warning())
    if src.kind == "checkpoint":
        emb = src.load()
        return Student(_frozen(emb.module), src.preprocess, src.cfg.arch, src.cfg.embedding_size, src.files[0],
                       src.fingerprint(), arch_kwargs=src.cfg.arch_kwargs or None, origin=f"checkpoint {src.name}")
    if src.kind not in IMPORTED_KINDS:
        raise ModelError(f"quantize.model {source!r} is a {src.kind} model: quantization needs the network's graph "
                         "(torch.fx), which facepipe gets from an ONNX file or a checkpoint of a known architecture; "
                         "export it to ONNX (torch.onnx.export) and quantize the .onnx")
    from facepipe.models.onnx_graph import ARCH, import_onnx

    net = _frozen(import_onnx(src.files[0]))
    reference = src.load()
    if parity is None:
        from facepipe.export.parity import synthetic_faces

        parity = (synthetic_faces(32), "synthetic (no parity faces given)")
    report = check_import(reference, net, src.preprocess, *parity)
    kind = "real" if report["source"].startswith("real") else "synthetic"
    say(f"quantize: imported {src.files[0].name} into torch ({len(net.layers)} layers); vs ONNX Runtime on "
        f"{report['faces']} {kind} faces: cosine min {report['cos_min']:.7f}, max abs {report['max_abs']:.2g}")
    dim = int(net.embedding_size or reference.dim)
    return Student(net, src.preprocess, ARCH, dim, src.files[0], src.fingerprint(), arch_kwargs=net.arch_kwargs,
                   origin=f"{src.kind} {src.name}", import_parity=report)


def check_import(reference, net: nn.Module, preprocess: Preprocess, faces: np.ndarray, source: str) -> dict:
    """The imported module vs its ONNX Runtime reference on `faces` (export's parity gate, import floors)."""
    from facepipe.export.formats import FORMATS
    from facepipe.export.parity import check_parity

    from ..embedder import TorchEmbedder

    candidate = TorchEmbedder(net, preprocess, name=f"{reference.name} (imported)")
    try:
        result = check_parity(reference, candidate, faces, FORMATS["onnx"], atol=IMPORT_ATOL,
                              cos_floor=IMPORT_COS_FLOOR, artifact=f"{reference.name} imported into torch")
    except ParityError as e:
        raise ParityError(f"{e} - the ONNX import is wrong for this graph: nothing was quantized") from None
    return {**result, "source": source}


def write_fp32_checkpoint(path: Path, student: Student) -> Path:
    """The fp32 model as a facepipe student.pt-format checkpoint (arch, arch_kwargs, preprocess, weights), so
    `facepipe export --model` builds its fp32 formats (dynamic batch) beside the quantized ones."""
    from ..train.checkpoint import STUDENT_KIND, save_checkpoint

    state = {k: v.detach().cpu().contiguous() for k, v in student.module.state_dict().items()}
    return save_checkpoint(path, {"state_dict": state, "arch": student.arch, "embedding_size": student.embedding_size,
                                  "arch_kwargs": student.arch_kwargs or {}, "preprocess": student.preprocess.to_dict(),
                                  "fingerprint": student.sha256, "source": str(student.path)}, STUDENT_KIND)
