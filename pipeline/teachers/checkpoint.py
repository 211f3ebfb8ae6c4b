"""PyTorch teachers: a state-dict checkpoint of a registered architecture, or a TorchScript archive.
Nothing is unpickled beyond plain tensors (pipeline/io.safe_torch_load: torch.load(weights_only=True))."""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from ..embedder import Embedder, Preprocess, TorchEmbedder
from ..errors import ConfigError, ModelError, first_line
from ..io import safe_torch_load
from ..weights import load_weights, strip_prefixes, unwrap_checkpoint
from .base import TEACHER_SOURCES, TeacherSource, declare_preprocess, require_file

TORCHSCRIPT_META = "facepipe.json"  # TorchScript _extra_files entry carrying {"preprocess": ..., ...}
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".tar")


# --- checkpoint ------------------------------------------------------------------------------------
@dataclass
class CheckpointTeacher(TeacherSource):
    kind: ClassVar[str] = "checkpoint"
    claim_order: ClassVar[int] = 60

    @classmethod
    def claims(cls, source, path):
        return path.is_file() and path.suffix.lower() in CHECKPOINT_SUFFIXES
    _state: dict | None = field(default=None, repr=False)

    @classmethod
    def from_config(cls, cfg, source):
        path = require_file(Path(source), "checkpoint file")
        state, meta = unwrap_checkpoint(safe_torch_load(path), path)
        # A checkpoint that declares its architecture (facepipe's student.pt does) needs no teacher.arch.
        declared_arch, declared_dim = meta.get("arch"), meta.get("embedding_size")
        if isinstance(declared_arch, str):
            if cfg.arch and cfg.arch != declared_arch:
                raise ModelError(f"{path} declares arch {declared_arch!r} but teacher.arch is {cfg.arch!r}: "
                                 "drop the override")
            update = {"arch": declared_arch}
            if isinstance(meta.get("arch_kwargs"), dict) and meta["arch_kwargs"]:
                if cfg.arch_kwargs and cfg.arch_kwargs != meta["arch_kwargs"]:
                    raise ModelError(f"{path} declares its arch_kwargs; drop teacher.arch_kwargs")
                update["arch_kwargs"] = meta["arch_kwargs"]
            if isinstance(declared_dim, int):
                update["embedding_size"] = declared_dim
            cfg = cfg.model_copy(update=update)
        if not cfg.arch:
            raise ConfigError(f"teacher.arch is required for the checkpoint teacher {path.name} "
                              "(e.g. --set teacher.arch=iresnet50, or a class: teacher.arch=my_pkg.nets:FaceNet)")
        artifact = Preprocess.from_dict(meta["preprocess"]) if isinstance(meta.get("preprocess"), dict) else None
        # facepipe's own architectures follow insightface's input convention: an honest, named guess. A class
        # of the user's has no convention facepipe could know.
        guess = None if is_class_path(cfg.arch) else (
            Preprocess(), f"the input convention of facepipe's {cfg.arch} (insightface's RGB 112, 127.5 / 127.5)",
            frozenset())
        declared = declare_preprocess(path, artifact, "the checkpoint", cfg.preprocess, guess, str(path))
        src = cls(cfg, path.stem, [path], declared.preprocess).with_declared(declared)
        src._state = strip_prefixes(state)
        return src

    def fingerprint(self) -> str:
        from ..io import sha256_json

        return sha256_json({"base": super().fingerprint(), "arch_kwargs": self.cfg.arch_kwargs})

    def load(self, device: str = "cpu", threads: int | None = None) -> Embedder:
        state = self._state if self._state is not None else \
            strip_prefixes(unwrap_checkpoint(safe_torch_load(self.files[0]), self.files[0])[0])
        model = build_arch(self.cfg.arch, self.cfg.embedding_size, self.cfg.arch_kwargs)
        load_weights(model, state, str(self.files[0]),
                     f"{self.cfg.arch} with teacher.embedding_size={self.cfg.embedding_size}")
        self._state = None  # the module holds the weights now
        return TorchEmbedder(model, self.preprocess, name=self.name, device=device)


TEACHER_SOURCES.register("checkpoint", CheckpointTeacher)


def is_class_path(arch: str) -> bool:
    """'package.module:Class' (an importable class), as opposed to a registered architecture name."""
    return ":" in arch


def build_arch(arch: str, embedding_size: int, kwargs: dict | None = None):
    """A fresh network: a registered architecture (embedding_size passed), or `package.module:Class` built
    with `kwargs` only (teacher.arch_kwargs); its weights come from a state dict (weights_only) afterwards."""
    import importlib

    kwargs = dict(kwargs or {})
    if not is_class_path(arch):
        from facepipe.models.registry import build_model

        return build_model(arch, embedding_size=embedding_size, **kwargs)
    module_name, _, cls_name = arch.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"teacher.arch={arch!r}: cannot import {module_name!r} ({first_line(e)}); put its package "
                          "on PYTHONPATH or install it") from None
    target = module
    for part in cls_name.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise ConfigError(f"teacher.arch={arch!r}: {module_name} has no {cls_name!r}")
    try:
        model = target(**kwargs)
    except TypeError as e:
        raise ConfigError(f"teacher.arch={arch!r}: cannot build it with teacher.arch_kwargs={kwargs} "
                          f"({first_line(e)})") from None
    import torch

    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"teacher.arch={arch!r} built a {type(model).__name__}, not a torch.nn.Module")
    return model


# --- torchscript -----------------------------------------------------------------------------------
def is_torchscript(path: Path) -> bool:
    """True when `path` is a TorchScript archive (a zip with code/ and constants.pkl)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def _torchscript_meta(path: Path) -> dict:
    with zipfile.ZipFile(path) as zf:
        for n in zf.namelist():
            if n.endswith(f"/extra/{TORCHSCRIPT_META}"):
                try:
                    return json.loads(zf.read(n) or b"{}")
                except json.JSONDecodeError:
                    raise ModelError(f"{path}: extra file {TORCHSCRIPT_META} is not JSON") from None
    return {}


@dataclass
class TorchScriptTeacher(TeacherSource):
    kind: ClassVar[str] = "torchscript"
    claim_order: ClassVar[int] = 40

    @classmethod
    def claims(cls, source, path):
        return path.is_file() and is_torchscript(path)

    @classmethod
    def from_config(cls, cfg, source):
        path = require_file(Path(source), "TorchScript file")
        if not is_torchscript(path):
            raise ModelError(f"{path} is not a TorchScript archive (torch.jit.save); for a state dict use "
                             "teacher.kind=checkpoint with teacher.arch")
        meta = _torchscript_meta(path)
        artifact = Preprocess.from_dict(meta["preprocess"]) if isinstance(meta.get("preprocess"), dict) else None
        # A TorchScript module says nothing of its input: no honest guess, so undeclared is refused.
        declared = declare_preprocess(path, artifact, f"its {TORCHSCRIPT_META} extra file", cfg.preprocess, None,
                                      f"TorchScript {path}")
        return cls(cfg, path.stem, [path], declared.preprocess).with_declared(declared)

    def load(self, device: str = "cpu", threads: int | None = None) -> Embedder:
        import torch

        try:
            module = torch.jit.load(str(self.files[0]), map_location="cpu")
        except Exception as e:
            raise ModelError(f"torch.jit.load cannot read {self.files[0]}: {first_line(e)}") from None
        return TorchEmbedder(module, self.preprocess, name=self.name, device=device)


TEACHER_SOURCES.register("torchscript", TorchScriptTeacher)

