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
ALL_FIELDS = frozenset({"size", "color", "mean", "std", "standardize", "resize"})
SIDECAR_SUFFIX = ".facepipe.json"  # <model stem>.facepipe.json beside a model file, or facepipe.json in its folder
SIDECAR = "facepipe.json"


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


def sidecar_path(model: Path) -> Path | None:
    """The facepipe.json that declares a model file's preprocessing: <stem>.facepipe.json beside it, else
    facepipe.json in its folder (a model pack, or a folder holding one model); None when neither exists."""
    for cand in (model.with_name(model.stem + SIDECAR_SUFFIX), model.parent / SIDECAR):
        if cand.is_file() and cand != model:
            return cand
    return None


def read_sidecar(path: Path) -> Preprocess | None:
    """The preprocessing a facepipe.json declares (None when it has no 'preprocess'); ModelError if bad."""
    import json

    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{path}: not a readable facepipe.json ({e})") from None
    if not isinstance(doc, dict):
        raise ModelError(f"{path}: facepipe.json must be a JSON object with a 'preprocess' mapping")
    unknown = sorted(set(doc) - {"preprocess", "embedding_size", "normalized", "note"})
    if unknown:
        raise ModelError(f"{path}: unknown keys {unknown} (known: preprocess, embedding_size, normalized, note)")
    try:
        return None if doc.get("preprocess") is None else Preprocess.from_dict(doc["preprocess"])
    except ModelError as e:
        raise ModelError(f"{path}: {e}") from None


@dataclass(frozen=True)
class Declared:
    """How a teacher's preprocessing was settled: the spec, which fields are fixed by the model itself, who
    declared it (for messages), and the guess when nothing declared it."""

    preprocess: Preprocess
    fixed: frozenset[str]  # fields the artifact (graph, metadata, checkpoint, sidecar) declares
    by: str  # "ONNX metadata", "model.facepipe.json", "teacher.preprocess", "guess: ..."
    guess: str | None = None  # set when the spec is a guess: what rule it came from
    sidecar: Path | None = None


def declare_preprocess(model: Path | None, artifact: Preprocess | None, artifact_by: str, override,
                       guess: tuple[Preprocess, str, frozenset[str]] | None, where: str) -> Declared:
    """Settle a model's preprocessing: the artifact's own declaration (ONNX metadata, TorchScript extra file,
    checkpoint dict), else a facepipe.json sidecar, else teacher.preprocess, else `guess` (spec, the rule it
    follows, the fields the graph fixes) named as a guess. No guess (None) and nothing declared is a
    ModelError that says how to declare it. teacher.preprocess may fill fields the artifact leaves open."""
    side = sidecar_path(model) if model is not None else None
    if artifact is not None:
        return Declared(resolve_preprocess(artifact, set(ALL_FIELDS), override, where), ALL_FIELDS, artifact_by)
    if side is not None:
        pre = read_sidecar(side)
        if pre is not None:
            return Declared(resolve_preprocess(pre, set(ALL_FIELDS), override, str(side)), ALL_FIELDS, side.name,
                            sidecar=side)
    fixed = guess[2] if guess else frozenset()
    given = {k for k, v in (override.model_dump().items() if override is not None else ()) if v is not None}
    if given:
        base = guess[0] if guess else DEFAULT_PREPROCESS
        return Declared(resolve_preprocess(base, set(fixed), override, where), fixed, "teacher.preprocess",
                        sidecar=side)
    if guess is None:
        stem = model.stem if model is not None else "model"
        raise ModelError(f"{where} declares no preprocessing and there is no honest guess for it (input size, "
                         f"colour order, normalisation): declare it in {stem}{SIDECAR_SUFFIX} beside the model "
                         '(e.g. {"preprocess": {"size": 160, "standardize": true}}) or set teacher.preprocess')
    return Declared(guess[0], fixed, f"guess: {guess[1]}", guess=guess[1], sidecar=side)


# --- sources --------------------------------------------------------------------------------------
@dataclass
class TeacherSource(ABC):
    """A resolved teacher: kind, name, defining files and preprocessing; `load()` gives the Embedder."""

    kind: ClassVar[str] = "abstract"
    claim_order: ClassVar[int] = 50  # teacher.kind=auto asks the kinds in this order (specific ones first)
    loaders: ClassVar[tuple[str, ...]] = ("facepipe",)  # the teacher.loader values this kind accepts

    cfg: TeacherConfig
    name: str
    files: list[Path]
    preprocess: Preprocess
    declared: set[str] = field(default_factory=set)  # preprocess fields fixed by the artifact
    declared_by: str = "the artifact"  # who settled the preprocessing ("guess: ..." when nobody did)
    guess: str | None = None  # the rule a guessed preprocessing follows (None: declared)
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
                            "files": self.file_hashes(), "preprocess": self.preprocess.to_dict(),
                            **self.identity_extra()})

    def identity_extra(self) -> dict:
        """What else defines this teacher beyond kind, files and preprocessing (e.g. a non-default loader and
        its version); empty by default, so the fingerprints of kinds that add nothing never change."""
        return {}

    def describe(self) -> dict:
        """JSON-able summary (no forward pass)."""
        return {"kind": self.kind, "name": self.name, "source": self.cfg.source, "arch": self.cfg.arch,
                "files": [{"path": str(p), "sha256": h, "bytes": p.stat().st_size}
                          for p, h in zip(self.files, self.file_hashes())],
                "preprocess": self.preprocess.to_dict(), "preprocess_declared": sorted(self.declared),
                "preprocess_by": self.declared_by, "preprocess_guess": self.guess,
                "embedding_size": self.cfg.embedding_size, **self.identity_extra(), "fingerprint": self.fingerprint()}

    def with_declared(self, d: "Declared") -> "TeacherSource":
        """Apply a settled preprocessing (and its sidecar, which becomes one of the defining files)."""
        self.preprocess, self.declared, self.declared_by, self.guess = d.preprocess, set(d.fixed), d.by, d.guess
        if d.sidecar is not None and d.sidecar not in self.files:
            self.files = [*self.files, d.sidecar]
            self._hashes = None
        return self

    def warning(self) -> str | None:
        """One line when the preprocessing is a guess (eval and the teacher stage print it); None when declared."""
        if self.guess is None:
            return None
        return (f"warning: teacher {self.name} declares no preprocessing; guessed {self.preprocess.describe()} "
                f"({self.guess}). If that is wrong its numbers are too: declare it in <model>{SIDECAR_SUFFIX}, "
                "ONNX metadata or teacher.preprocess")


TEACHER_SOURCES: Registry[type[TeacherSource]] = Registry("teacher kind")


def source_path(source: str, base_dir: Path | None) -> Path:
    """teacher.source as a path (relative ones against the config's folder)."""
    p = Path(source).expanduser()
    return p if p.is_absolute() or base_dir is None else Path(base_dir) / p


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise ModelError(f"teacher.source {path}: {what} not found")
    return path
