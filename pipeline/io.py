"""Atomic writes and content hashes: a crash never leaves a half-written file that a later run trusts."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator

from .errors import DiskFull, FacepipeError, ModelError


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_json(obj: Any) -> str:
    """Hash of a JSON-serialisable object with sorted keys (stable across runs)."""
    return sha256_bytes(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    The temp name keeps the final suffix (libraries such as torch.onnx or cv2 pick the format from it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.stem}.", suffix=suffix if suffix is not None else path.suffix,
                               dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; final files get the usual permissions
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except FacepipeError:
        raise
    except Exception as e:  # a full disk surfaces as ENOSPC, or as a library's own error (torch: "unexpected pos")
        if (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)) or free_bytes(path.parent) < 1 << 20:
            raise DiskFull(path, free_bytes(path.parent)) from None
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def free_bytes(folder: str | os.PathLike) -> int:
    """Bytes free for this user on the filesystem of `folder` (a large number when it cannot be told)."""
    import shutil

    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 1 << 62


def reserve_space(path: str | os.PathLike, size: int, shown: str | os.PathLike | None = None) -> None:
    """Allocate `size` bytes of a file's blocks now (posix_fallocate): a memory map over a sparse file on a full
    disk dies of SIGBUS at the first write; reserved, a full disk is a DiskFull here instead."""
    if not hasattr(os, "posix_fallocate"):
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(shown or path, free_bytes(Path(path).parent), size) from None
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # filesystems without fallocate: write lazily
            raise
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write bytes to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    """torch.save `obj` to `path` atomically, byte-identical for identical content: serialised in memory
    first (torch.save to a file names its zip entries after that file, here a random temporary name, so the
    same weights gave different bytes and every downstream stage re-ran)."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(_canonical(obj), buf)
    return atomic_write_bytes(path, buf.getvalue())


def _canonical(obj: Any) -> Any:
    """`obj` with fresh containers and interned strings. The pickler writes a repeated object as a back
    reference, so the same content gave other bytes when a key string happened to be shared (a literal) in one
    run and not in the next (read back from a checkpoint); rebuilt this way, sharing depends on content only."""
    if isinstance(obj, str):
        return sys.intern(obj) if type(obj) is str else obj
    if isinstance(obj, dict) and type(obj) in (dict, OrderedDict):
        out = type(obj)((_canonical(k), _canonical(v)) for k, v in obj.items())
        if hasattr(obj, "_metadata"):  # a state_dict's per-module versions
            out._metadata = _canonical(obj._metadata)
        return out
    if type(obj) in (list, tuple):
        return type(obj)(_canonical(v) for v in obj)
    return obj


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive advisory lock on `path` (created if missing) for the block; other processes taking
    the same lock wait. Serialises writers of one shared artifact (e.g. one embedding-cache entry)."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield path
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


class RunLocked(FacepipeError):
    """Another live process holds the run folder's lock."""


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike) -> Iterator[Path]:
    """Hold <run_dir>/.lock for the block so that two `facepipe run` on one run folder cannot both train
    from step 0 unaware of each other. Non-blocking: a live holder is a RunLocked error naming its pid, host,
    start time and command. The kernel drops the lock when its holder dies (kill -9 included), so a lock file
    left behind by a dead process is stale by construction and is taken over."""
    import fcntl
    import socket
    import sys

    path = Path(run_dir) / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a+")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            try:
                holder = json.loads(fh.read() or "{}")
            except ValueError:
                holder = {}
            raise RunLocked(f"run folder {path.parent} is in use by pid {holder.get('pid', '?')} on "
                            f"{holder.get('host', '?')} since {holder.get('started', '?')} "
                            f"({holder.get('command', '?')}): wait for it to finish or stop it, or use another "
                            "run.name") from None
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(sys.argv)}))
        fh.flush()
        try:
            yield path
        finally:
            fh.seek(0)
            fh.truncate()
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    finally:
        fh.close()


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


def inside(root: str | os.PathLike, rel: str, where: str) -> Path:
    """root / rel for a path read from a list file (pairs, identities.tsv, a model pack's manifest): refuses an
    absolute path or one that climbs out of root with '..' (DataError naming `where`), so no list can make
    facepipe open a file outside the folder it describes."""
    from pathlib import PurePosixPath, PureWindowsPath

    from .errors import DataError

    text = str(rel)
    posix = PurePosixPath(text.replace("\\", "/"))
    if posix.is_absolute() or PureWindowsPath(text).is_absolute() or ".." in posix.parts:
        raise DataError(f"{where}: path {text!r} points outside {root}; list files may only name files below "
                        "their own folder (use a relative path without '..')")
    return Path(root) / posix


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_orphans(folder: str | os.PathLike, pattern: str, pid_of) -> list[Path]:
    """Remove the entries of `folder` matching `pattern` whose owner (pid_of(name) -> pid or None) is dead:
    what a killed process (SIGKILL runs no cleanup) left behind. Returns what was removed."""
    import shutil

    removed = []
    for p in Path(folder).glob(pattern):
        pid = pid_of(p.name)
        if pid is None or pid == os.getpid() or pid_alive(pid):
            continue
        try:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


def die_with_parent() -> None:
    """preexec_fn for children that must not outlive facepipe: on Linux the kernel sends SIGKILL to the child
    when its parent dies, even of SIGKILL (prctl PR_SET_PDEATHSIG); elsewhere a no-op."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
