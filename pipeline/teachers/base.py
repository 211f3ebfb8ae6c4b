"""The teacher-source interface and the helpers every kind shares: preprocessing resolution, weight loading.

A kind is one module of this package: a TeacherSource subclass registered in TEACHER_SOURCES, with
`from_config` (resolve without loading the network), `load` (the Embedder) and `claims` (whether
teacher.kind=auto should pick it for a source string).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from ..config import TeacherConfig
from ..embedder import Embedder, Preprocess
from ..errors import ModelError
from ..io import sha256_file, sha256_json
from ..registry import Registry

DEFAULT_PREPROCESS = Preprocess()


# --- preprocessing resolution ---------------------------------------------------------------------
def resolve_preprocess(base: Preprocess, declared: set[str], override, where: str) -> Preprocess:
    """Apply teacher.preprocess `override` to the fields of `base` that the artifact does not declare."""
    if override is None:
        return base
    changes = {k: v for k, v in override.model_dump().items() if v is not None}
    if not changes:
        return base
    merged = base.replace(**changes)
    for key in sorted(declared & set(changes)):
        if getattr(merged, key) != getattr(base, key):
            raise ModelError(f"teacher.preprocess.{key}={changes[key]!r} conflicts with {where}, which declares "
                             f"{key}={getattr(base, key)!r}: remove the override")
    return merged


# --- sources --------------------------------------------------------------------------------------
@dataclass
class TeacherSource(ABC):
    """A resolved teacher: kind, name, defining files and preprocessing; `load()` gives the Embedder."""

    kind: ClassVar[str] = "abstract"
    claim_order: ClassVar[int] = 50  # teacher.kind=auto asks the kinds in this order (specific ones first)

    cfg: TeacherConfig
    name: str
    files: list[Path]
    preprocess: Preprocess
    declared: set[str] = field(default_factory=set)  # preprocess fields fixed by the artifact
    _hashes: list[str] | None = field(default=None, init=False, repr=False)

    @classmethod
    @abstractmethod
    def from_config(cls, cfg: TeacherConfig, source: Path | str) -> "TeacherSource":
        """Resolve `source` (a path, or the raw string for package / hf names) without loading the network."""

    @classmethod
    def claims(cls, source: str, path: Path) -> bool:
        """Whether teacher.kind=auto means this kind for `source` (`path`: it resolved as a path)."""
        return False

    @classmethod
    def source_arg(cls, source: str, base_dir: Path | None) -> Path | str:
        """What from_config receives: a path against base_dir (kinds named by a string override this)."""
        return source_path(source, base_dir)

    @abstractmethod
    def load(self, device: str = "cpu", threads: int | None = None) -> Embedder:
        """Build the Embedder (loads weights) on `device` ("cpu", "cuda:0"); threads for ONNX Runtime."""

    def file_hashes(self) -> list[str]:
        """sha256 of each defining file (computed once)."""
        if self._hashes is None:
            self._hashes = [sha256_file(p) for p in self.files]
        return self._hashes

    def fingerprint(self) -> str:
        """sha256 over kind, arch (checkpoints), file hashes and preprocessing: what defines the teacher."""
        return sha256_json({"kind": self.kind, "arch": self.cfg.arch if self.kind == "checkpoint" else None,
                            "files": self.file_hashes(), "preprocess": self.preprocess.to_dict()})

    def describe(self) -> dict:
        """JSON-able summary (no forward pass)."""
        return {"kind": self.kind, "name": self.name, "source": self.cfg.source, "arch": self.cfg.arch,
                "files": [{"path": str(p), "sha256": h, "bytes": p.stat().st_size}
                          for p, h in zip(self.files, self.file_hashes())],
                "preprocess": self.preprocess.to_dict(), "preprocess_declared": sorted(self.declared),
                "embedding_size": self.cfg.embedding_size, "fingerprint": self.fingerprint()}


TEACHER_SOURCES: Registry[type[TeacherSource]] = Registry("teacher kind")


def source_path(source: str, base_dir: Path | None) -> Path:
    """teacher.source as a path (relative ones against the config's folder)."""
    p = Path(source).expanduser()
    return p if p.is_absolute() or base_dir is None else Path(base_dir) / p


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise ModelError(f"teacher.source {path}: {what} not found")
    return path
