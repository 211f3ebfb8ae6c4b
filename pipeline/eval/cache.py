"""Teacher embedding cache: the teacher's embeddings of a training set, computed once, memory-mapped after.

Layout under cache_dir, for key K = cache_key(teacher, faces, flip):
  K.npy        float32 (N, D) embeddings of the faces
  K.flip.npy   float32 (N, D) embeddings of the mirrored faces (flip=True only)
  K.views.npy  float32 (V, N, D) embeddings of V fixed augmented views of every face (views=V > 0 only;
               data/views.py renders them), and K.views.flip.npy of their mirrors (with flip)
  K.json       sidecar {format, key, teacher, data, preprocess, n, dim, flip, skipped, complete, ...}, written last
Arrays are filled under temporary names and renamed when complete; the sidecar is the commit marker, so
a killed build is never reused, and a changed teacher file, preprocessing, image bytes, flip, reading /
preprocessing code or runtime gives a different key. Faces the source skips (image(i) is None under
data.on_error=skip) get NaN rows and are listed in `skipped`.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import DataError, DiskFull, ModelError
from ..io import atomic_write_json, exclusive_lock, free_bytes, remove_orphans, reserve_space, sha256_json

CACHE_FORMAT = 1
VIEWS_MODULE = "facepipe.pipeline.data.views"
TEACHER_RUNTIMES = ("torch", "onnx", "onnxruntime")  # every teacher kind loads through these


class FaceSourceLike(Protocol):
    """What the cache needs from a face source (facepipe.pipeline.data.imagefolder.FaceSource)."""

    def __len__(self) -> int: ...

    def image(self, i: int) -> np.ndarray | None: ...

    def content_hash(self) -> str: ...


def cache_key(model_source, faces: FaceSourceLike, flip: bool, device: str = "cpu", views: dict | None = None) -> str:
    """sha256 of what an embedding depends on: the model's fingerprint (file hashes, kind, arch,
    preprocessing), the faces' content hash, the flip flag, the code that reads, aligns, preprocesses and
    embeds them (the import closure of the face source, the model source and this module), and the runtime
    that computes them (versions, CPU / GPU; see embedding_context). `views` ({"count", "spec"}; see
    data/views.py) adds cached augmented views, and the code that renders them, to the key."""
    key = {"format": CACHE_FORMAT, "teacher": model_source.fingerprint(), "data": faces.content_hash(),
           "flip": bool(flip), **embedding_context(model_source, faces, device)}
    if views and views.get("count"):
        from ..codeclosure import import_closure
        from ..manifest import code_version

        key["views"] = {**views, "code": code_version(import_closure(VIEWS_MODULE))}
    return sha256_json(key)


def embedding_context(model_source, faces, device: str = "cpu") -> dict:
    """{"code": hash of the code behind an embedding, "runtime": the runtime identity}. A model source may
    name its runtime distributions (`runtime_distributions()`); the default is what any teacher loads with."""
    from ..codeclosure import import_closure
    from ..manifest import code_version, runtime_identity

    code = code_version(import_closure(type(faces).__module__, type(model_source).__module__, __name__,
                                       "facepipe.pipeline.embedder"))
    names = getattr(model_source, "runtime_distributions", None)
    dists = tuple(names()) if callable(names) else TEACHER_RUNTIMES
    return {"code": code, "runtime": runtime_identity(device, dists)}


def embedder_device(embedder, default: str = "cpu") -> str:
    """"cpu" or "cuda[:i]": where an embedder computes (ONNX Runtime: from its execution providers)."""
    providers = getattr(embedder, "providers", None)
    if providers:
        names = [p[0] if isinstance(p, (tuple, list)) else str(p) for p in providers]
        return "cuda" if any(n.startswith(("CUDA", "Tensorrt")) for n in names) else "cpu"
    dev = getattr(embedder, "device", None)
    return str(dev) if dev is not None else default


def _paths(cache_dir: Path, key: str) -> tuple[Path, Path, Path]:
    return cache_dir / f"{key}.npy", cache_dir / f"{key}.flip.npy", cache_dir / f"{key}.json"


def _view_paths(cache_dir: Path, key: str) -> tuple[Path, Path]:
    return cache_dir / f"{key}.views.npy", cache_dir / f"{key}.views.flip.npy"


@dataclass
class TeacherCache:
    """An opened, complete cache: `.embeddings` (N, D) memmap, `.flipped` (N, D) memmap or None, `.meta`;
    `.views` / `.views_flipped` (V, N, D) memmaps or None."""

    key: str
    path: Path
    embeddings: np.ndarray
    flipped: np.ndarray | None
    meta: dict
    views: np.ndarray | None = None
    views_flipped: np.ndarray | None = None

    @property
    def view_count(self) -> int:
        return 0 if self.views is None else int(self.views.shape[0])

    @property
    def n(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def skipped(self) -> np.ndarray:
        """Indices of faces the source could not read (their rows are NaN)."""
        return np.asarray(self.meta.get("skipped", []), dtype=np.int64)

    def skipped_summary(self, source) -> dict:
        """{"count", "first"}: how many faces the source could not read, and the first three by name."""
        name = getattr(source, "describe", lambda i: f"record {i}")
        return {"count": int(len(self.skipped)), "first": [name(int(i)) for i in self.skipped[:3]]}

    @property
    def valid(self) -> np.ndarray:
        """Boolean (N,) mask of rows holding real embeddings."""
        mask = np.ones(self.n, bool)
        mask[self.skipped] = False
        return mask

    @classmethod
    def open(cls, cache_dir: str | os.PathLike, key: str) -> "TeacherCache | None":
        """The cache for `key`, or None when absent or stale (other key, incomplete, wrong shape/dtype)."""
        emb_path, flip_path, meta_path = _paths(Path(cache_dir), key)
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT or meta.get("key") != key \
                or meta.get("complete") is not True or not isinstance(meta.get("skipped", []), list):
            return None
        n, dim, flip = meta.get("n"), meta.get("dim"), meta.get("flip")
        emb = _open_array(emb_path, n, dim)
        if emb is None:
            return None
        flipped = None
        if flip:
            flipped = _open_array(flip_path, n, dim)
            if flipped is None:
                return None
        views = views_flipped = None
        count = (meta.get("views") or {}).get("count", 0)
        if count:
            vpath, vflip = _view_paths(Path(cache_dir), key)
            views = _open_array(vpath, n, dim, count)
            views_flipped = _open_array(vflip, n, dim, count) if flip else None
            if views is None or (flip and views_flipped is None):
                return None
        return cls(key, emb_path, emb, flipped, meta, views, views_flipped)

    def copy_to(self, cache_dir: str | os.PathLike) -> "TeacherCache":
        """This cache copied into `cache_dir` (arrays first, sidecar last, each atomically); reused if there."""
        import shutil

        from ..io import atomic_path

        cache_dir = Path(cache_dir)
        found = TeacherCache.open(cache_dir, self.key)
        if found is not None:
            return found
        src = _view_paths(self.path.parent, self.key) + _paths(self.path.parent, self.key)  # the sidecar last
        dst = _view_paths(cache_dir, self.key) + _paths(cache_dir, self.key)
        for s, d in zip(src, dst):
            if s.exists():
                with atomic_path(d) as tmp:
                    shutil.copyfile(s, tmp)
        copied = TeacherCache.open(cache_dir, self.key)
        if copied is None:  # pragma: no cover - the source vanished while copying
            raise DataError(f"copying teacher cache {self.path} to {cache_dir} failed")
        return copied

    @classmethod
    def build(cls, embedder, source: FaceSourceLike, cache_dir: str | os.PathLike, key: str, flip: bool = False,
              batch_size: int = 64, show_progress: bool = True, views: dict | None = None) -> "TeacherCache":
        """Embed every face of `source` with `embedder` (and its mirror when flip; and `views["count"]`
        augmented views drawn from `views["spec"]`, data/views.py) into a new cache."""
        cache_dir = Path(cache_dir)
        cache_dir.mkdir(parents=True, exist_ok=True)
        # One builder per entry at a time: two runs embedding the same faces with the same model (two
        # quantize jobs scoring one fp32 student) would otherwise delete each other's files mid-build.
        with exclusive_lock(cache_dir / f".{key}.lock"):
            return cls._build_locked(embedder, source, cache_dir, key, flip, batch_size, show_progress,
                                     views or {"count": 0})

    @classmethod
    def _build_locked(cls, embedder, source: FaceSourceLike, cache_dir: Path, key: str, flip: bool,
                      batch_size: int, show_progress: bool, views: dict) -> "TeacherCache":
        emb_path, flip_path, meta_path = _paths(cache_dir, key)
        view_path, view_flip_path = _view_paths(cache_dir, key)
        count = int(views.get("count") or 0)
        meta_path.unlink(missing_ok=True)  # whatever was there is no longer vouched for
        for stale in cache_dir.glob(f".{key}.*.partial"):  # left by a killed build (we hold the lock)
            stale.unlink(missing_ok=True)
        remove_orphans(cache_dir, ".*.partial", _partial_pid)  # other entries' builders that were killed
        n, dim = len(source), embedder.dim
        if n == 0:
            raise DataError("the face source is empty: nothing to cache")
        every = (emb_path, flip_path, view_path, view_flip_path)
        tmp = {p: p.with_name(f".{p.name}.{os.getpid()}.partial") for p in every}
        shapes = {emb_path: (n, dim)}
        if flip:
            shapes[flip_path] = (n, dim)
        if count:
            shapes[view_path] = (count, n, dim)
            if flip:
                shapes[view_flip_path] = (count, n, dim)
        t0 = time.perf_counter()
        need = sum(4 * int(np.prod(s)) for s in shapes.values()) + (1 << 16)  # float32 rows + .npy headers
        if need > free_bytes(cache_dir):
            raise DiskFull(cache_dir / f"{key}.npy", free_bytes(cache_dir), need)
        try:
            arrays = {p: np.lib.format.open_memmap(tmp[p], mode="w+", dtype=np.float32, shape=shape)
                      for p, shape in shapes.items()}
            for p in shapes:
                reserve_space(tmp[p], os.path.getsize(tmp[p]), shown=p)
            skipped = _fill(embedder, source, arrays[emb_path], arrays.get(flip_path), arrays.get(view_path),
                            arrays.get(view_flip_path), views, batch_size, show_progress, key)
            for a in arrays.values():
                a.flush()
            del arrays
            for p in shapes:
                os.replace(tmp[p], p)
            for p in every:
                if p not in shapes:
                    p.unlink(missing_ok=True)
        finally:
            for t in tmp.values():
                t.unlink(missing_ok=True)
        seconds = time.perf_counter() - t0
        atomic_write_json(meta_path, {
            "format": CACHE_FORMAT, "key": key, "teacher": _teacher_info(embedder),
            "data": source.content_hash(), "preprocess": embedder.preprocess.to_dict(),
            "n": n, "dim": dim, "flip": bool(flip), "dtype": "float32", "skipped": skipped,
            "views": {"count": count, "spec": views.get("spec")} if count else None,
            "files": {"embeddings": emb_path.name, "flipped": flip_path.name if flip else None,
                      "views": view_path.name if count else None},
            "seconds": round(seconds, 3),
            "img_per_s": round(n * (1 + count) * (1 + bool(flip)) / max(seconds, 1e-9), 2),
            "complete": True})
        opened = cls.open(cache_dir, key)
        if opened is None:  # pragma: no cover - would mean the files vanished under us
            raise DataError(f"teacher cache {meta_path} could not be reopened after writing")
        return opened


def _partial_pid(name: str) -> int | None:
    """The builder's pid in a partial array's name (.<key>.npy.<pid>.partial)."""
    parts = name.split(".")
    return int(parts[-2]) if len(parts) >= 3 and parts[-2].isdigit() else None


def _teacher_info(embedder) -> dict:
    d = {"name": embedder.name, "runtime": embedder.runtime, "dim": embedder.dim,
         "normalized": embedder.normalized}
    fp = getattr(embedder, "fingerprint", None)
    if isinstance(fp, str):
        d["fingerprint"] = fp
    return d


def _open_array(path: Path, n, dim, views: int | None = None) -> np.ndarray | None:
    if not isinstance(n, int) or not isinstance(dim, int):
        return None
    try:
        arr = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return None
    shape = (n, dim) if views is None else (views, n, dim)
    if arr.dtype != np.float32 or arr.shape != shape:
        return None
    return arr


def _fill(embedder, source: FaceSourceLike, plain: np.ndarray, mirrored: np.ndarray | None,
          views: np.ndarray | None, views_mirrored: np.ndarray | None, view_cfg: dict, batch_size: int,
          show_progress: bool, key: str) -> list[int]:
    """Embed the source batch by batch: faces, their mirrors, and each augmented view (and its mirror);
    returns the skipped indices (their rows are NaN)."""
    from ..progress import progress

    n, skipped = len(source), []
    count = 0 if views is None else views.shape[0]
    jobs = [(plain, 0, False)] + ([(mirrored, 0, True)] if mirrored is not None else [])
    for v in range(1, count + 1):
        jobs.append((views[v - 1], v, False))
        if views_mirrored is not None:
            jobs.append((views_mirrored[v - 1], v, True))
    with progress("img", disable=None if show_progress else True) as bar:
        task = bar.add_task(f"teacher {embedder.name} -> cache {key[:10]}", total=n * len(jobs))
        for start in range(0, n, batch_size):
            idx = range(start, min(n, start + batch_size))
            images = [source.image(i) for i in idx]
            ok = [j for j, img in enumerate(images) if img is not None]
            skipped += [start + j for j, img in enumerate(images) if img is None]
            faces = np.stack([images[j] for j in ok]) if ok else None
            for array, v, mirror in jobs:
                block = np.full((len(idx), array.shape[1]), np.nan, np.float32)
                if faces is not None:
                    x = _view_pixels(faces, np.asarray(idx)[ok], v, view_cfg) if v else faces
                    x = np.ascontiguousarray(x[:, :, ::-1]) if mirror else x
                    block[ok] = embedder.embed(x, batch_size=batch_size)
                array[start:idx.stop] = block
                bar.advance(task, len(idx))
    return skipped


def _view_pixels(faces: np.ndarray, index: np.ndarray, view: int, view_cfg: dict) -> np.ndarray:
    """View `view` of the faces at `index`, rendered exactly as distillation renders it (data/views.py)."""
    import torch

    from ..data.views import ViewSpec, render, view_params
    from ..embedder import resize_faces

    if faces.shape[1:3] != (112, 112):
        faces = resize_faces(faces, 112)
    params = view_params(ViewSpec(**view_cfg["spec"]), index, np.full(len(index), view))
    return render(torch.from_numpy(np.ascontiguousarray(faces)), params).numpy()


def open_or_build(teacher_source, faces: FaceSourceLike, cache_dir: str | os.PathLike, flip: bool = False,
                  batch_size: int = 64, embedder=None, rebuild: bool = False, show_progress: bool = True,
                  device: str = "cpu", threads: int | None = None,
                  views: dict | None = None) -> tuple[TeacherCache, bool]:
    """(cache, reused): a fresh cache for this teacher and data, built when missing or stale with `embedder`
    (or the teacher loaded on `device` only then). The teacher's output size is checked against
    teacher.embedding_size either way (ModelError).
    """
    from ..teachers import check_teacher_dim

    cfg = teacher_source.cfg
    key = cache_key(teacher_source, faces, flip,
                    device=embedder_device(embedder, device) if embedder is not None else device, views=views)
    found = None if rebuild else TeacherCache.open(cache_dir, key)
    if found is not None:
        if found.dim != cfg.embedding_size:
            raise ModelError(f"teacher {teacher_source.name} gives {found.dim}-d embeddings (cached in "
                             f"{found.path}) but teacher.embedding_size is {cfg.embedding_size}")
        return found, True
    if embedder is None:
        embedder = teacher_source.load(device=device, threads=threads)
    check_teacher_dim(embedder, cfg)
    return TeacherCache.build(embedder, faces, cache_dir, key, flip=flip, batch_size=batch_size,
                              show_progress=show_progress, views=views), False
