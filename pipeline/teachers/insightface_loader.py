"""teacher.loader=insightface: the recognition model loaded by insightface's own `model_zoo.get_model`, as an
`Embedder`. insightface is optional (`make insightface`: its wheel requires opencv-python, which would clash
with facepipe's opencv-python-headless, so it is installed --no-deps); nothing here imports it at load time.

What insightface decides, it decides here: which class its model router makes of the file (it must be
ArcFaceONNX, the recognition task), the input size, input_mean / input_std (its Sub/Mul rule) and the ONNX
Runtime session. facepipe feeds that session RGB faces normalised with insightface's numbers, which is what
`ArcFaceONNX.get_feat` computes from BGR images with cv2.dnn.blobFromImages(swapRB=True); the tests check
the two against each other (tests/unit/test_insightface_parity.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..embedder import Embedder, Preprocess, ort_providers, ort_session_options, provider_name, run_in_chunks
from ..errors import BackendUnavailable, ModelError, first_line

LOADERS = ("facepipe", "insightface")
RECIPE = ("`make insightface` (pip install 'facepipe[insightface]', then pip install --no-deps insightface==2.1; "
          "README: insightface)")


def import_insightface(why: str = "teacher.loader=insightface"):
    """The insightface module, or BackendUnavailable naming the option that needs it and the recipe."""
    try:
        import insightface
        from insightface import model_zoo  # noqa: F401  (its imports: onnx, onnxruntime, cv2, scikit-image)
    except ImportError as e:
        raise BackendUnavailable(f"{why} needs the insightface package, which cannot be imported here "
                                 f"({first_line(e)}): install it with {RECIPE}, or set teacher.loader: "
                                 "facepipe") from None
    return insightface


def insightface_version() -> str:
    return str(getattr(import_insightface(), "__version__", "unknown"))


class InsightFaceZooEmbedder(Embedder):
    """A recognition ONNX as insightface's model_zoo.get_model loads it (ArcFaceONNX)."""

    runtime = "onnxruntime"

    def __init__(self, path: str | Path, name: str | None = None, device: str = "cpu", threads: int | None = None):
        insightface = import_insightface()
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(f"ONNX model {self.path} not found")
        providers = ort_providers(device)
        opts = ort_session_options(providers, threads)
        try:  # a path ending in .onnx, no model_task: insightface's shape-based router, as FaceAnalysis uses it
            model = insightface.model_zoo.get_model(str(self.path), providers=providers, sess_options=opts)
        except Exception as e:  # assertions, onnxruntime's own errors, TypeError on a dynamic input size
            raise ModelError(f"insightface's model_zoo.get_model cannot load {self.path}: {first_line(e)}") from None
        if model is None or getattr(model, "taskname", None) != "recognition":
            what = "nothing" if model is None else type(model).__name__
            raise ModelError(f"insightface's model_zoo.get_model makes {what} of {self.path}, not a recognition "
                             "model (ArcFaceONNX: a square input of 112 px or more)")
        self.model = model
        used = model.session.get_providers()
        first = provider_name(providers[0])
        if first not in used:
            raise BackendUnavailable(f"onnxruntime fell back to {used} although {first} was asked for {self.path}")
        self.providers = used
        w, h = (int(v) for v in model.input_size)
        mean, std = float(model.input_mean), float(model.input_std)
        # get_feat: blobFromImages(BGR faces, 1/std, size, (mean,)*3, swapRB=True) -> RGB (x - mean) / std
        pre = Preprocess(size=h, color="RGB", mean=(mean,) * 3, std=(std,) * 3)
        out = model.output_shape
        dim = out[-1] if len(out) == 2 and isinstance(out[-1], int) and out[-1] > 0 else None
        batch = model.input_shape[0]
        self.fixed_batch = batch if isinstance(batch, int) and batch > 0 else None
        self.insightface_version = str(getattr(insightface, "__version__", "unknown"))
        super().__init__(name or self.path.stem, pre, dim, normalized=False)

    def _forward(self, batch_nchw: np.ndarray) -> np.ndarray:
        m = self.model
        coerce = getattr(m, "_coerce_input_blob", lambda b: np.ascontiguousarray(b, np.float32))
        run = lambda b: m.session.run(m.output_names, {m.input_name: coerce(b)})[0]  # noqa: E731
        return run_in_chunks(run, batch_nchw, self.fixed_batch)

    def get_feat(self, faces_rgb: np.ndarray) -> np.ndarray:
        """insightface's own path, for comparison: ArcFaceONNX.get_feat on the faces as BGR images."""
        return np.asarray(self.model.get_feat([np.ascontiguousarray(f[..., ::-1]) for f in faces_rgb]))

    def describe(self) -> dict:
        d = super().describe()
        d.update(path=str(self.path), providers=self.providers, fixed_batch=self.fixed_batch, loader="insightface",
                 insightface=self.insightface_version, insightface_class=type(self.model).__name__)
        return d
