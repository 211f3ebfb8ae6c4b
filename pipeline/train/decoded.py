"""The training set decoded once into a uint8 memory map, so distillation never decodes a JPEG in its loop.

Layout under the shared cache folder (beside the teacher-embedding caches), for key K:
  decoded-K.npy   uint8 (N, 112, 112, 3) RGB faces, in the source's order
  decoded-K.json  sidecar {format, key, n, size, data, complete}, written last (the commit marker)
K hashes the source's content (every image's bytes), the face size and the code that decodes and resizes, so
an edited image, a changed reader or another size gives another entry; a killed build is never reused.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from facepipe.pipeline.errors import DataError, DiskFull

FORMAT = 1
SIZE = 112


def decoded_key(source, size: int = SIZE) -> str:
    from facepipe.pipeline.codeclosure import import_closure
    from facepipe.pipeline.io import sha256_json
    from facepipe.pipeline.manifest import code_version

    code = code_version(import_closure(type(source).__module__, __name__))
    return sha256_json({"format": FORMAT, "data": source.content_hash(), "size": size, "code": code})


def _paths(folder: Path, key: str) -> tuple[Path, Path]:
    return folder / f"decoded-{key}.npy", folder / f"decoded-{key}.json"


def open_decoded(folder: str | os.PathLike, key: str, n: int, size: int = SIZE) -> np.ndarray | None:
    """The complete memmap for `key` (read-only), or None when absent, unfinished or of another shape."""
    arr_path, meta_path = _paths(Path(folder), key)
    try:
        meta = json.loads(meta_path.read_text())
        arr = np.load(arr_path, mmap_mode="r")
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("key") != key or meta.get("complete") is not True:
        return None
    if arr.dtype != np.uint8 or arr.shape != (n, size, size, 3):
        return None
    return arr


def decode_training_set(source, folder: str | os.PathLike, size: int = SIZE, show_progress: bool = True) -> np.ndarray:
    """The decoded faces of `source` as a read-only memmap: opened when a complete one exists, else built
    (under a lock, so concurrent ranks or runs build it once). An unreadable image is a DataError naming it."""
    from facepipe.pipeline.io import exclusive_lock

    folder = Path(folder)
    key = decoded_key(source, size)
    found = open_decoded(folder, key, len(source), size)
    if found is not None:
        return found
    folder.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(folder / f".decoded-{key}.lock"):
        found = open_decoded(folder, key, len(source), size)  # built meanwhile by another process
        if found is not None:
            return found
        _build(source, folder, key, size, show_progress)
    built = open_decoded(folder, key, len(source), size)
    if built is None:  # pragma: no cover - the files vanished under us
        raise DataError(f"decoded training set {folder}/decoded-{key}.npy could not be reopened after writing")
    return built


def _build(source, folder: Path, key: str, size: int, show_progress: bool) -> None:
    from facepipe.pipeline.io import atomic_write_json, free_bytes, reserve_space
    from facepipe.pipeline.progress import progress

    from .data import checked_face

    arr_path, meta_path = _paths(folder, key)
    n = len(source)
    need = n * size * size * 3 + 4096
    if need > free_bytes(folder):
        raise DiskFull(arr_path, free_bytes(folder), need)
    tmp = arr_path.with_name(f".{arr_path.name}.{os.getpid()}.partial")
    t0 = time.perf_counter()
    try:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
        reserve_space(tmp, os.path.getsize(tmp), shown=arr_path)
        name = getattr(source, "describe", lambda i: f"training record {i}")
        with progress("img", disable=None if show_progress else True) as bar:
            task = bar.add_task(f"decode training set -> {arr_path.name[:18]}", total=n)
            for i in range(n):
                arr[i] = checked_face(source.image(i), name(i), size)
                bar.advance(task)
        arr.flush()
        del arr
        os.replace(tmp, arr_path)
    finally:
        tmp.unlink(missing_ok=True)
    atomic_write_json(meta_path, {"format": FORMAT, "key": key, "n": n, "size": size, "dtype": "uint8",
                                  "data": source.content_hash(), "seconds": round(time.perf_counter() - t0, 3),
                                  "complete": True})
