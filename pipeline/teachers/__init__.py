"""Teacher sources: where a teacher comes from, what defines it (file hashes, preprocessing) and how to load
it as an `Embedder`.

`resolve_teacher(cfg)` picks a `TeacherSource` from `TEACHER_SOURCES` by `teacher.kind` (or guesses it from
the source string when kind is "auto") without running the network; `.load()` builds the Embedder;
`load_teacher(cfg)` does both and checks the embedding size with one forward pass.

Preprocessing: what the artifact declares (ONNX facepipe metadata, input size, model.yaml, packaged
knowledge) is fixed; `teacher.preprocess` may set only what it does not declare (a conflicting override is
a ModelError). Nothing is unpickled beyond plain tensors: checkpoints go through torch.load(weights_only=True).
"""


from __future__ import annotations

from pathlib import Path

from ..config import TeacherConfig
from ..embedder import Embedder
from ..errors import ConfigError, ModelError
from ..weights import load_weights, strip_prefixes, unwrap_checkpoint
from .base import TEACHER_SOURCES, TeacherSource, resolve_preprocess, source_path
# The kinds: importing a module registers its kinds. A new kind is one module here and its line below.
from .checkpoint import CHECKPOINT_SUFFIXES, TORCHSCRIPT_META, CheckpointTeacher, TorchScriptTeacher, is_torchscript
from .hf import HF_FILES, HF_PREFIX, HfTeacher, hf_snapshot, is_cvlface_dir, read_cvlface_conf
from .onnxmodel import InsightFaceTeacher, OnnxTeacher, insightface_mean_std, is_recognition_onnx
from .packaged import PACKAGED_TEACHERS, PackagedTeacher, PackageTeacher

__all__ = ["CHECKPOINT_SUFFIXES", "HF_FILES", "HF_PREFIX", "PACKAGED_TEACHERS", "TEACHER_SOURCES", "TORCHSCRIPT_META",
           "CheckpointTeacher", "HfTeacher", "InsightFaceTeacher", "OnnxTeacher", "PackageTeacher", "PackagedTeacher",
           "TeacherSource", "TorchScriptTeacher", "check_teacher_dim", "guess_kind", "hf_snapshot",
           "insightface_mean_std", "is_cvlface_dir", "is_recognition_onnx", "is_torchscript", "load_teacher",
           "load_weights", "read_cvlface_conf", "resolve_preprocess", "resolve_teacher", "strip_prefixes",
           "unwrap_checkpoint"]


# --- resolution ------------------------------------------------------------------------------------
def guess_kind(source: str, base_dir: Path | None = None) -> str:
    """The teacher kind "auto" stands for: the first registered kind (by claim_order) that claims the source
    string, file or folder."""
    path = source_path(source, base_dir)
    for kind, cls in sorted(TEACHER_SOURCES.items(), key=lambda kv: kv[1].claim_order):
        if cls.claims(source, path):
            return kind
    if path.is_dir():
        raise ModelError(f"teacher.source {path}: directory is neither a CVLFace snapshot (config.json + "
                         "pretrained_model/model.yaml) nor an insightface pack (*.onnx)")
    if not path.exists():
        raise ModelError(f"teacher.source {source!r}: no such file or directory, and not a packaged teacher "
                         f"({', '.join(sorted(PACKAGED_TEACHERS))}) or hf:<org>/<repo>")
    raise ModelError(f"teacher.source {path}: cannot tell the format from {path.suffix!r}; "
                     f"set teacher.kind ({', '.join(k for k in TEACHER_SOURCES.names())})")


def resolve_teacher(cfg: TeacherConfig, base_dir: Path | None = None) -> TeacherSource:
    """The TeacherSource for the teacher config (relative paths against base_dir); no forward pass."""
    kind = guess_kind(cfg.source, base_dir) if cfg.kind == "auto" else cfg.kind
    if kind not in TEACHER_SOURCES.names():  # the registry is the list: a new kind needs no edit elsewhere
        raise ConfigError(f"teacher.kind={kind!r}: choose auto or one of {', '.join(TEACHER_SOURCES.names())}")
    cls = TEACHER_SOURCES.get(kind)
    if cfg.loader not in cls.loaders:
        able = [k for k, c in TEACHER_SOURCES.items() if cfg.loader in c.loaders]
        raise ConfigError(f"teacher.loader={cfg.loader!r} applies to teacher kinds {', '.join(able)}, and "
                          f"teacher.source {cfg.source!r} is kind {kind}: set teacher.loader: facepipe")
    return cls.from_config(cfg, cls.source_arg(cfg.source, base_dir))


def check_teacher_dim(embedder: Embedder, cfg: TeacherConfig) -> None:
    """ModelError when the teacher's output size differs from teacher.embedding_size (one forward pass)."""
    dim = embedder.dim
    if dim != cfg.embedding_size:
        raise ModelError(f"teacher {embedder.name} gives {dim}-d embeddings but teacher.embedding_size is "
                         f"{cfg.embedding_size}: set teacher.embedding_size={dim} (and the student's to match)")


def load_teacher(cfg: TeacherConfig, base_dir: Path | None = None, device: str = "cpu",
                 threads: int | None = None) -> Embedder:
    """Resolve, load and check the teacher: the Embedder the pipeline distils from."""
    embedder = resolve_teacher(cfg, base_dir).load(device=device, threads=threads)
    check_teacher_dim(embedder, cfg)
    return embedder
