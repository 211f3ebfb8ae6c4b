"""CVLFace teachers: a Hugging Face hub repo (`hf:<org>/<repo>[@revision]`) or a local snapshot of one."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from ..embedder import Embedder, Preprocess, TorchEmbedder
from ..errors import BackendUnavailable, ConfigError, ModelError, first_line
from ..weights import load_weights
from .base import TEACHER_SOURCES, TeacherSource, resolve_preprocess

HF_PREFIX = "hf:"
HF_FILES = ("config.json", "pretrained_model/model.yaml", "model.safetensors")


# --- CVLFace on Hugging Face -----------------------------------------------------------------------
def _hf_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hf_snapshot(repo: str) -> Path:
    """Local snapshot of a CVLFace hub repo ('org/repo' or 'org/repo@revision'), only the files we need.

    With HF_HUB_OFFLINE=1 only the local cache is used. Missing library / network / cache entry ->
    BackendUnavailable; unknown repo -> ModelError.
    """
    repo_id, _, revision = repo.partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ConfigError(f"teacher.source hf:{repo}: expected hf:<org>/<repo>[@revision]")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
    except ImportError:
        raise BackendUnavailable(f"teacher hf:{repo} needs huggingface_hub (pip install 'facepipe[hf]'), or "
                                 "download the repo and set teacher.source to its local directory") from None
    offline = _hf_offline()
    try:
        local = snapshot_download(repo_id, revision=revision or None, allow_patterns=list(HF_FILES),
                                  local_files_only=offline)
    except (RepositoryNotFoundError, RevisionNotFoundError) as e:
        raise ModelError(f"teacher hf:{repo}: {type(e).__name__} (check the repo name / revision)") from None
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE=1 and it is not in the local cache" if offline else "the hub cannot be reached"
        raise BackendUnavailable(f"teacher hf:{repo}: {why}; download it where there is internet "
                                 "(huggingface-cli download) or set teacher.source to a local snapshot") from None
    except Exception as e:  # connection errors, HTTP errors, ...
        raise BackendUnavailable(f"teacher hf:{repo}: download failed ({type(e).__name__}: "
                                 f"{first_line(e, 160)})") from None
    return Path(local)


def is_cvlface_dir(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file() and (path / "pretrained_model" / "model.yaml").is_file()


def read_cvlface_conf(snapshot: Path) -> dict:
    """pretrained_model/model.yaml of a CVLFace snapshot as a dict (safe YAML)."""
    import yaml

    missing = [f for f in HF_FILES if not (snapshot / f).is_file()]
    if missing:
        raise ModelError(f"{snapshot}: not a CVLFace snapshot, missing {missing} (needs {list(HF_FILES)})")
    try:
        json.loads((snapshot / "config.json").read_text())
        conf = yaml.safe_load((snapshot / "pretrained_model" / "model.yaml").read_text())
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ModelError(f"{snapshot}: unreadable config.json / model.yaml ({type(e).__name__})") from None
    if not isinstance(conf, dict):
        raise ModelError(f"{snapshot}/pretrained_model/model.yaml: expected a mapping")
    return conf


@dataclass
class HfTeacher(TeacherSource):
    kind: ClassVar[str] = "hf"

    @classmethod
    def claims(cls, source, path):
        return source.startswith(HF_PREFIX) or is_cvlface_dir(path)

    @classmethod
    def source_arg(cls, source, base_dir):
        return source if source.startswith(HF_PREFIX) else super().source_arg(source, base_dir)
    conf: dict = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg, source):
        text = str(source)
        if text.startswith(HF_PREFIX):
            repo = text[len(HF_PREFIX):]
            snapshot, name = hf_snapshot(repo), repo
        else:
            snapshot = Path(source)
            if not snapshot.is_dir():
                raise ModelError(f"teacher.source {snapshot}: a CVLFace teacher is hf:<org>/<repo> or a snapshot directory")
            name = snapshot.name
        conf = read_cvlface_conf(snapshot)
        size = conf.get("input_size", [3, 112, 112])
        size = int(size[-1]) if isinstance(size, (list, tuple)) and size else 112
        # The network flips RGB->BGR itself when color_space is BGR: callers always feed RGB.
        pre = Preprocess(size=size, color="RGB", mean=(127.5,) * 3, std=(127.5,) * 3)
        declared = {"size", "color"}
        files = [snapshot / f for f in HF_FILES]
        return cls(cfg, name, files, resolve_preprocess(pre, declared, cfg.preprocess, f"{snapshot} model.yaml"),
                   declared, conf=conf)

    def load(self, device: str = "cpu", threads: int | None = None) -> Embedder:
        from facepipe.models.cvlface import build_cvlface

        try:
            from safetensors.torch import load_file
        except ImportError:
            raise BackendUnavailable("a CVLFace teacher needs safetensors (pip install 'facepipe[hf]')") from None
        try:
            model = build_cvlface(self.conf)
        except ValueError as e:
            raise ModelError(f"teacher {self.name}: {e}") from None
        weights = self.files[2]
        try:
            state = load_file(str(weights))
        except Exception as e:
            raise ModelError(f"{weights}: unreadable safetensors ({first_line(e, 160)})") from None
        # Hub files hold the transformers wrapper's state: model.net.* -> net.*
        state = {(k[len("model."):] if k.startswith("model.") else k): v for k, v in state.items()}
        load_weights(model, state, str(weights), f"CVLFace {self.conf.get('name')}")
        return TorchEmbedder(model, self.preprocess, name=self.name, device=device)


TEACHER_SOURCES.register("hf", HfTeacher)

