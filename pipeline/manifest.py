"""Stage manifests: content hashes of inputs and outputs, code versions, and why a stage is stale."""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

from . import __version__
from .io import atomic_write_json, sha256_file, sha256_json
from .progress import progress

MANIFEST_NAME = "manifest.json"
COMPLETE = "complete"
# A file modified within this many seconds of being hashed is not memoised: filesystems with coarse
# timestamps could give a later edit the same mtime (git's "racily clean" problem).
RACY_S = 2.0
PROGRESS_MIN_FILES = 500


def cache_root() -> Path:
    """$FACEPIPE_CACHE, default ~/.cache/facepipe."""
    return Path(os.environ.get("FACEPIPE_CACHE") or Path.home() / ".cache" / "facepipe")


class HashCache:
    """sha256 of files memoised by (absolute path, size, mtime_ns, ctime_ns, inode) in a JSON file.

    ctime is part of the key because it cannot be set back by hand (``touch -r`` restores mtime only).
    The cache is an optimisation: an unreadable or unwritable cache file is ignored.
    """

    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path is not None else cache_root() / "hashes.json"
        self._entries: dict[str, list] | None = None
        self._new: dict[str, list] = {}

    def _load(self) -> dict[str, list]:
        if self._entries is None:
            try:
                data = json.loads(self.path.read_text())
                self._entries = data if isinstance(data, dict) else {}
            except (OSError, ValueError):
                self._entries = {}
        return self._entries

    def sha256(self, path: str | os.PathLike, st: os.stat_result | None = None) -> str:
        """The file's sha256, from the cache when its stat signature is unchanged."""
        key = os.path.abspath(path)
        st = st or os.stat(key)
        sig = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        hit = self._load().get(key)
        if isinstance(hit, list) and len(hit) == 5 and hit[:4] == sig:
            return hit[4]
        digest = sha256_file(key)
        if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > RACY_S * 1e9:
            self._entries[key] = self._new[key] = sig + [digest]
        return digest

    def save(self) -> None:
        """Merge new entries into the cache file (other processes may have written it meanwhile)."""
        if not self._new:
            return
        try:
            try:
                on_disk = json.loads(self.path.read_text())
                on_disk = on_disk if isinstance(on_disk, dict) else {}
            except (OSError, ValueError):
                on_disk = {}
            on_disk.update(self._new)
            kept = {k: v for k, v in on_disk.items() if os.path.exists(k)}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.path, kept)
            self._new = {}
        except OSError:
            pass


def list_tree(root: str | os.PathLike) -> list[tuple[str, str, os.stat_result]]:
    """(relative posix path, absolute path, stat) of every file below root, sorted; dot-entries skipped."""
    root = os.path.abspath(root)
    cut = len(root) + 1
    found: list[tuple[str, str, os.stat_result]] = []
    stack = [root]
    while stack:  # plain strings: pathlib costs seconds on LFW-sized trees
        with os.scandir(stack.pop()) as it:
            for e in it:
                if e.name.startswith("."):
                    continue
                if e.is_dir():
                    stack.append(e.path)
                elif e.is_file():
                    found.append((e.path[cut:].replace(os.sep, "/"), e.path, e.stat()))
    found.sort(key=lambda t: t[0])
    return found


def hash_files(files: list[tuple[str, os.stat_result | None]], cache: HashCache | None = None,
               label: str = "files") -> list[str | None]:
    """sha256 of each (absolute path, stat) - None where the stat is None (a missing file) - memoised in the
    hash cache (saved), with a progress bar for long lists."""
    own = cache is None
    cache = cache or HashCache()
    out: list[str | None] = []
    with progress("file", disable=None if len(files) >= PROGRESS_MIN_FILES else True) as bar:
        task = bar.add_task(f"hashing {label}", total=len(files))
        for i, (p, st) in enumerate(files):
            out.append(cache.sha256(p, st) if st is not None else None)
            if i % 64 == 63 or i == len(files) - 1:
                bar.update(task, completed=i + 1)
    if own:
        cache.save()
    return out


def hash_path(path: str | os.PathLike, cache: HashCache | None = None, label: str | None = None) -> tuple[str, int]:
    """(sha256, bytes) of a file, or of a directory: the hash of its sorted (relative path, file sha256) list."""
    path = Path(path)
    cache = cache or HashCache()
    if not path.is_dir():
        st = os.stat(path)
        return cache.sha256(path, st), st.st_size
    files = list_tree(path)
    digests = hash_files([(p, st) for _, p, st in files], cache, label=label or path.name)
    return sha256_json([[rel, h] for (rel, _, _), h in zip(files, digests)]), sum(st.st_size for _, _, st in files)


def module_source_hash(name: str) -> str:
    """sha256 of a module's source file ("unavailable" when it has none, e.g. a builtin)."""
    from .codeclosure import module_file

    local = module_file(name)  # facepipe modules: located without importing their packages
    if local is not None:
        return sha256_file(local)
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    origin = getattr(spec, "origin", None)
    if not origin or not os.path.isfile(origin):
        return "unavailable"
    return sha256_file(origin)


def code_hashes(modules: Iterable[str]) -> dict[str, str]:
    """module -> sha256 of its source, for each named module (recorded in manifests, so `status` can say
    which module changed)."""
    return {m: module_source_hash(m) for m in dict.fromkeys(modules)}


def code_version(modules: Iterable[str] | dict[str, str]) -> str:
    """Hash of the facepipe version and the source of each named module (or of code_hashes' result)."""
    hashes = modules if isinstance(modules, dict) else code_hashes(modules)
    return sha256_json({"facepipe": __version__, "modules": hashes})


def code_changes(old: dict | None, new: dict[str, str], limit: int = 4) -> str:
    """"facepipe.models.losses.base, +1 more": the modules whose source differs, was added or dropped."""
    if not isinstance(old, dict):
        return ""
    changed = [m for m in sorted(set(old) | set(new)) if old.get(m) != new.get(m)]
    shown = [m + ("" if m in new else " (no longer used)") + ("" if m in old else " (new)") for m in changed[:limit]]
    return ", ".join(shown) + (f", +{len(changed) - limit} more" if len(changed) > limit else "")


def _dist_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def env_info(device: str) -> dict[str, Any]:
    """Versions and machine that can change a stage's numbers (recorded in every manifest), read without
    importing the libraries."""
    return {"python": platform.python_version(), "platform": platform.platform(), **runtime_identity(device)}


RUNTIME_DISTRIBUTIONS = ("torch", "onnx", "onnxruntime", "openvino", "tensorrt", "torch-tensorrt")
# The distributions each embedder runtime computes with (Embedder.runtime -> distributions).
RUNTIME_OF = {"torch": ("torch",), "onnxruntime": ("onnx", "onnxruntime"), "openvino": ("openvino",),
              "tensorrt": ("tensorrt",), "torch_tensorrt": ("torch", "torch-tensorrt", "tensorrt")}


def runtime_identity(device: str, distributions: Iterable[str] = RUNTIME_DISTRIBUTIONS) -> dict[str, Any]:
    """What a measured or exported result depends on beyond config and inputs: the runtime versions (read
    without importing them), the CPU and its ISA, and the GPU name on a cuda device. Enters the fingerprints
    of export and bench (all runtimes) and the keys of cached embeddings (the runtimes that computed them),
    so an upgrade or another machine re-measures instead of reporting old numbers."""
    from .device import cpu_info

    cpu = cpu_info()
    out: dict[str, Any] = {d: _dist_version(d) for d in distributions}
    out.update(cpu=cpu["model"], cpu_isa=cpu["isa"]["summary"], device=device)
    if os.environ.get("ONEDNN_MAX_CPU_ISA"):  # caps the kernels torch and OpenVINO pick (int8: see overflow.py)
        out["onednn_max_cpu_isa"] = os.environ["ONEDNN_MAX_CPU_ISA"]
    if str(device).startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            index = int(device.split(":")[1]) if ":" in device else 0
            out["gpu"] = torch.cuda.get_device_name(index)
    return out


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def manifest_path(stage_dir: Path) -> Path:
    return Path(stage_dir) / MANIFEST_NAME


def read_manifest(stage_dir: Path) -> dict | None:
    """The stage's manifest, or None when absent. An unreadable one reads as {"status": "unreadable"}."""
    p = manifest_path(stage_dir)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"status": "unreadable"}
    return data if isinstance(data, dict) else {"status": "unreadable"}


def write_manifest(stage_dir: Path, manifest: dict) -> Path:
    """Write the manifest atomically (always the last file a stage writes)."""
    return atomic_write_json(manifest_path(stage_dir), manifest)


def remove_manifest(stage_dir: Path) -> None:
    manifest_path(stage_dir).unlink(missing_ok=True)


def stored_path(stage_dir: Path, path: Path) -> str:
    """A path as recorded in a manifest: relative to the stage dir when inside it, else absolute."""
    path = Path(path).absolute()
    try:
        return path.relative_to(Path(stage_dir).absolute()).as_posix()
    except ValueError:
        return str(path)


def resolve_stored(stage_dir: Path, stored: str) -> Path:
    p = Path(stored)
    return p if p.is_absolute() else Path(stage_dir) / p


def _short(v: Any, limit: int = 60) -> str:
    s = repr(v)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def config_changes(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Human descriptions of every changed leaf between two config trees, by dotted path."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in list(old) + [k for k in new if k not in old]:
            path = f"{prefix}.{k}" if prefix else str(k)
            if k not in new:
                out.append(f"config {path} removed (was {_short(old[k])})")
            elif k not in old:
                out.append(f"config {path} added: {_short(new[k])}")
            else:
                out += config_changes(old[k], new[k], path)
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [c for i, (a, b) in enumerate(zip(old, new)) for c in config_changes(a, b, f"{prefix}[{i}]")]
    if old != new or type(old) is not type(new):
        if prefix.startswith("derived."):  # chosen from the machine, not written by the user
            return [f"{prefix[len('derived.'):]} changed: {_short(old)} -> {_short(new)}"]
        return [f"config {prefix} changed: {_short(old)} -> {_short(new)}"]
    return []


def stale_reasons(manifest: dict, *, stage: str, code: str, config: dict, inputs: dict[str, str],
                  upstreams: Iterable[str], stage_dir: Path, cache: HashCache, unknown: Iterable[str] = (),
                  code_modules: dict[str, str] | None = None) -> list[str]:
    """Why an existing manifest no longer describes this stage (empty list: it does).

    inputs: role -> sha256 of the input as it is now; upstreams: stage names whose outputs are inputs;
    unknown: roles, or upstream names, whose current hash is unknown (reported elsewhere, not compared).
    """
    reasons: list[str] = []
    if manifest.get("status") != COMPLETE:
        return [f"previous run incomplete (manifest status {manifest.get('status')!r})"]
    if manifest.get("code_version") != code:
        old_v = manifest.get("facepipe")
        which = code_changes(manifest.get("code_modules"), code_modules or {}) if code_modules else ""
        reasons.append("code changed" + (f": {which}" if which else "")
                       + (f" (facepipe {old_v} -> {__version__})" if old_v != __version__ else ""))
    reasons += config_changes(manifest.get("config") or {}, config)
    old_inputs = {r: (v or {}).get("sha256") for r, v in (manifest.get("inputs") or {}).items()}
    ups = set(upstreams)
    skip = set(unknown)
    for role in list(old_inputs) + [r for r in inputs if r not in old_inputs]:
        before, now = old_inputs.get(role), inputs.get(role)
        if before == now or role in skip or role.split(".", 1)[0] in skip:
            continue
        up = role.split(".", 1)[0] if role.split(".", 1)[0] in ups else None
        if now is None:
            reasons.append(f"input {role} no longer used")
        elif before is None:
            reasons.append(f"new input {role}")
        elif up:
            reasons.append(f"upstream {up} changed output {role}")
        else:
            reasons.append(f"input {role} changed (sha256 {before[:8]}.. -> {now[:8]}..)")
    for role, rec in (manifest.get("outputs") or {}).items():
        p = resolve_stored(stage_dir, rec.get("path", ""))
        if not p.exists():
            reasons.append(f"output {stage}.{role} missing")
        elif hash_path(p, cache, label=f"{stage}.{role}")[0] != rec.get("sha256"):
            reasons.append(f"output {stage}.{role} modified")
    return reasons
