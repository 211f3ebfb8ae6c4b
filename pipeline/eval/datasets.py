"""Named verification benchmarks: where their files live under the data root, and one evaluation path.

A spec is a registered name (lfw, cfp_fp, agedb_30, ijbc, ...) looked up under the data root, or a path:
an insightface .bin, an LFW-style folder (pairs.txt, optional landmarks.tsv), a CFP folder in its official
layout, an IJB-B/C folder, or any pairs file (pipeline/data/pairset.py forms) with options after '?':
  my_faces/pairs.txt?aligned              images under my_faces/ (or my_faces/images/), already aligned
  pairs.tsv?images=crops&landmarks=lm.tsv&name=mine
Every runtime is scored by `evaluate_benchmark` -> `evaluate_embeddings` -> facepipe.pipeline.eval.metrics.
"""

from __future__ import annotations

import difflib
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import DataError, ModelError
from .metrics import (IJB_FARS, auc, pair_scores, roc_curve, stratified_kfold_ids, tar_at_far,
                      verification_10fold)
from ..registry import Registry

PAIR_BINS = ("agedb_30", "calfw", "cplfw", "vgg2_fp")
PAIR_LIST_SUFFIXES = (".txt", ".tsv", ".csv", ".lst", ".list")
PAIR_OPTIONS = ("aligned", "images", "landmarks", "name")
LFW_PAIRS, LFW_LANDMARKS = "pairs.txt", "landmarks.tsv"  # landmarks optional: load_lfw detects without


@dataclass(frozen=True)
class Source:
    """One place a benchmark may live: format ("lfw" | "cfp" | "bin" | "ijb") and path (folder or .bin file)."""

    fmt: str
    path: Path
    which: str | None = None  # IJBB / IJBC, or the CFP protocol (FF / FP)

    def required(self) -> list[Path]:
        """Files (and folders) that must exist for this source to be usable."""
        if self.fmt == "lfw":
            return [self.path / LFW_PAIRS]
        if self.fmt == "cfp":
            from ..data.cfp import required_files

            return required_files(self.path, self.which or "FP")
        if self.fmt == "ijb":
            from ..data.ijb import meta_files

            return [*meta_files(self.path, self.which).values(), self.path / "loose_crop"]
        return [self.path]

    def missing(self) -> list[Path]:
        return [p for p in self.required() if not p.exists()]

    def explain(self) -> str:
        miss = self.missing()
        what = {"lfw": "LFW-style folder", "bin": "insightface .bin", "ijb": f"{self.which} folder",
                "cfp": f"CFP folder, official layout, protocol {self.which}"}[self.fmt]
        if self.fmt == "bin":
            return f"{self.path} ({what}): {'missing' if miss else 'found'}"
        return f"{self.path} ({what}): missing {', '.join(str(p.relative_to(self.path)) for p in miss)}"


@dataclass(frozen=True)
class BenchmarkEntry:
    """A registered benchmark: its kind, where to look under a data root, how to obtain it."""

    name: str
    kind: str  # "pairs" | "ijb"
    sources: Callable[[Path], list[Source]]
    how: str


BENCHMARKS: Registry[BenchmarkEntry] = Registry("benchmark")

_BIN_HOW = ("copy insightface's {name}.bin (from the training-set archives, e.g. faces_emore) there, or build "
            "one from an aligned folder with `facepipe data make-bin`")

BENCHMARKS.register("lfw", BenchmarkEntry(
    "lfw", "pairs",
    lambda r: [Source("lfw", r / "lfw"), Source("bin", r / "lfw.bin"), Source("bin", r / "lfw" / "lfw.bin")],
    "put LFW (images/, pairs.txt and optionally landmarks.tsv) in lfw/, or insightface's lfw.bin beside it "
    "(`facepipe data make-bin` builds one)"))
for _protocol in ("FP", "FF"):
    _name = f"cfp_{_protocol.lower()}"
    BENCHMARKS.register(_name, BenchmarkEntry(
        _name, "pairs",
        lambda r, n=_name, p=_protocol: [Source("cfp", r / "cfp", p), Source("bin", r / f"{n}.bin"),
                                         Source("bin", r / n / f"{n}.bin"), Source("bin", r / "cfp" / f"{n}.bin")],
        f"put CFP in its official layout in cfp/ (Protocol/Pair_list_F.txt, Pair_list_P.txt, Split/{_protocol}/01..10, "
        f"Data/Images/), or insightface's {_name}.bin beside it (`facepipe data make-bin` builds one)"))
for _name in PAIR_BINS:
    BENCHMARKS.register(_name, BenchmarkEntry(
        _name, "pairs",
        lambda r, n=_name: [Source("bin", r / f"{n}.bin"), Source("bin", r / n / f"{n}.bin")],
        _BIN_HOW.format(name=_name)))
for _which in ("IJBB", "IJBC"):
    BENCHMARKS.register(_which.lower(), BenchmarkEntry(
        _which.lower(), "ijb", lambda r, w=_which: [Source("ijb", r / w, w)],
        f"extract insightface's IJB release so that {_which}/meta/ and {_which}/loose_crop/ sit there"))


@dataclass(frozen=True)
class Benchmark:
    """A resolved benchmark: name, kind ("pairs" | "ijb"), format, and the folder or file it reads."""

    name: str
    kind: str
    fmt: str  # "lfw" | "cfp" | "bin" | "ijb" | "pairs" (a pairs file: paths = (pairs file, image root))
    paths: tuple[Path, ...]
    which: str | None = None
    folds: int | None = None  # "name@N": only the first N folds (a quick check; the name keeps the suffix)
    aligned: bool = False  # "pairs": the images are aligned 112x112 crops (else landmarks or YuNet)
    landmarks: Path | None = None  # "pairs": a landmarks.tsv for raw images

    @property
    def path(self) -> Path:
        return self.paths[0]

    def load(self, on_error: str = "fail"):
        """Read it: a VerificationSet (pairs) or an IJBSet (ijb)."""
        if self.fmt in ("lfw", "bin", "cfp", "pairs"):
            if self.fmt == "lfw":
                from ..data.lfw import load_lfw

                data = load_lfw(self.path, on_error=on_error, max_folds=self.folds)
            elif self.fmt == "cfp":
                from ..data.cfp import load_cfp

                data = load_cfp(self.path, self.which or "FP", on_error=on_error, max_folds=self.folds)
            elif self.fmt == "pairs":
                data = self._load_pair_list(on_error)
            else:
                from ..data.binfile import read_bin

                data = read_bin(self.path, on_error=on_error)
            data = first_folds(data, self.folds) if self.folds else data
            check_enough_pairs(data, str(self.path))
            return data
        from ..data.ijb import load_ijb

        return load_ijb(self.path, self.which or "IJBC", on_error=on_error)

    def _load_pair_list(self, on_error: str):
        from ..data.pairset import FaceReader, load_pair_set, open_landmarks, read_pair_list

        pairs_file, root = self.paths[0], self.paths[1]
        refs = read_pair_list(pairs_file, root)
        if self.folds:
            first = sorted({p.fold for p in refs})[:self.folds]
            refs = [p for p in refs if p.fold in first]
        lm, base = (None, None) if self.aligned else open_landmarks(self.landmarks)
        return load_pair_set(refs, self.name, str(pairs_file), FaceReader(base or root, lm, aligned=self.aligned),
                             on_error)

    def input_files(self) -> list[Path]:
        """Files whose hashes identify the benchmark in a manifest.

        Folders are identified by their index files (pairs/landmarks or IJB meta), not every image:
        hashing IJB-C's 469k crops on every freshness check would take minutes.
        """
        if self.fmt == "lfw":
            return [p for p in (self.path / LFW_PAIRS, self.path / LFW_LANDMARKS) if p.is_file()]
        if self.fmt == "cfp":
            from ..data.cfp import required_files

            return required_files(self.path, self.which or "FP")  # the pair lists and the protocol's split folder
        if self.fmt == "pairs":
            return [self.paths[0], *([self.landmarks] if self.landmarks else [])]
        if self.fmt == "ijb":
            from ..data.ijb import meta_files

            return list(meta_files(self.path, self.which).values())
        return [self.path]

    def to_dict(self) -> dict:
        d = {"name": self.name, "kind": self.kind, "format": self.fmt, "path": str(self.path)}
        if self.fmt == "cfp":
            d["protocol"] = self.which
        if self.fmt == "pairs":
            d.update(images=str(self.paths[1]), aligned=self.aligned,
                     landmarks=str(self.landmarks) if self.landmarks else None)
        return {**d, "folds": self.folds} if self.folds else d

    def image_root(self) -> Path | None:
        """The folder the images are read from (its content is part of the benchmark's identity)."""
        if self.fmt == "lfw":
            from ..data.lfw import lfw_image_dir

            return lfw_image_dir(self.path)
        if self.fmt == "cfp":
            return self.path / "Data" / "Images"
        return self.paths[1] if self.fmt == "pairs" else None


def first_folds(data, n: int):
    """The pairs of the first `n` folds (in fold order) and only the images they use, re-indexed."""
    import dataclasses

    fold_ids = np.unique(data.folds)
    keep = np.isin(data.folds, fold_ids[:n])
    pairs = data.pairs[keep]
    used, inverse = np.unique(pairs.ravel(), return_inverse=True)
    return dataclasses.replace(data, name=f"{data.name}@{n}", images=np.ascontiguousarray(data.images[used]),
                               pairs=inverse.reshape(-1, 2).astype(np.int64), issame=data.issame[keep],
                               folds=data.folds[keep])


def _from_source(name: str, kind: str, src: Source) -> Benchmark:
    return Benchmark(name=name, kind=kind, fmt=src.fmt, paths=(src.path,), which=src.which)


def _find_named(entry: BenchmarkEntry, data_root: Path | None) -> Benchmark:
    if data_root is None:
        raise DataError(f"benchmark {entry.name!r} is looked up under the data root, which is not set: set "
                        "data.root in pipeline.yaml or $FACEPIPE_DATA, or pass the benchmark's path instead")
    sources = entry.sources(Path(data_root))
    for src in sources:
        if not src.missing():
            return _from_source(entry.name, entry.kind, src)
    looked = "\n".join(f"  {s.explain()}" for s in sources)
    raise DataError(f"benchmark {entry.name!r} not found under data root {data_root}; looked for:\n{looked}\n"
                    f"To provide it: {entry.how}; or point data.root / $FACEPIPE_DATA at the folder that holds "
                    "it, or pass its path directly")


def _from_path(path: Path, options: dict[str, str] | None = None) -> Benchmark:
    if options is not None or (path.is_file() and path.suffix.lower() in PAIR_LIST_SUFFIXES):
        return _pair_list(path, options or {})
    if path.is_file():
        if path.suffix.lower() != ".bin":
            raise DataError(f"{path}: a benchmark file must be an insightface .bin (pickle of JPEG bytes and "
                            f"issame flags) or a pairs list ({', '.join(PAIR_LIST_SUFFIXES)}); for LFW give its folder")
        return Benchmark(path.stem, "pairs", "bin", (path,))
    candidates = [Source("ijb", path, w) for w in ("IJBC", "IJBB")]
    candidates.sort(key=lambda s: s.which.lower() != path.name.lower())  # the folder's own name first
    candidates += [Source("lfw", path), Source("cfp", path, "FP"), Source("bin", path / f"{path.name}.bin")]
    for src in candidates:
        if not src.missing():
            kind = "ijb" if src.fmt == "ijb" else "pairs"
            name = src.which.lower() if src.fmt == "ijb" and path.name.upper() == src.which else path.name
            name = "cfp_fp" if src.fmt == "cfp" else name
            return _from_source(name, kind, src)
    looked = "\n".join(f"  {s.explain()}" for s in candidates)
    raise DataError(f"{path} is not a benchmark folder; it needs one of:\n{looked}\n"
                    "  or give a pairs file instead (my_faces/pairs.txt?aligned)")


def parse_options(query: str, spec: str) -> dict[str, str]:
    """'aligned&images=crops' -> {"aligned": "true", "images": "crops"}; unknown keys are a DataError."""
    out = {}
    for part in filter(None, query.split("&")):
        key, eq, value = part.partition("=")
        key = key.strip().lower()
        if key not in PAIR_OPTIONS:
            raise DataError(f"benchmark {spec!r}: unknown option {key!r} (known: {', '.join(PAIR_OPTIONS)})")
        out[key] = value.strip() if eq else "true"
    return out


def _pair_list(pairs_file: Path, options: dict[str, str]) -> Benchmark:
    """A pairs file and its options as a Benchmark; images under options["images"] (relative to the pairs
    file's folder), else <folder>/images when present, else the folder itself."""
    if not pairs_file.is_file():
        raise DataError(f"{pairs_file}: pairs file not found")
    folder = pairs_file.parent
    images = options.get("images")
    root = (folder / images) if images else (folder / "images" if (folder / "images").is_dir() else folder)
    if not root.is_dir():
        raise DataError(f"{pairs_file}: image folder {root} not found (option images=)")
    aligned = options.get("aligned", "false").lower()
    if aligned not in ("true", "false", "1", "0", "yes", "no"):
        raise DataError(f"{pairs_file}: option aligned={aligned!r} should be true or false")
    aligned_flag = aligned in ("true", "1", "yes")
    lm = options.get("landmarks")
    landmarks = folder / lm if lm else (folder / LFW_LANDMARKS if (folder / LFW_LANDMARKS).is_file() else None)
    if landmarks is not None and not landmarks.is_file():
        raise DataError(f"{pairs_file}: landmarks file {landmarks} not found (option landmarks=)")
    name = options.get("name") or (folder.name if pairs_file.stem.lower() == "pairs" else pairs_file.stem)
    return Benchmark(name, "pairs", "pairs", (pairs_file, root), aligned=aligned_flag,
                     landmarks=None if aligned_flag else landmarks)


def _looks_like_path(spec: str) -> bool:
    return os.sep in spec or "/" in spec or spec.lower().endswith(".bin") or spec.startswith((".", "~"))


def _candidates(text: str, data_root: Path | None) -> list[Path]:
    tries = [Path(text).expanduser()]
    if data_root is not None and not tries[0].is_absolute():
        tries.append(Path(data_root) / text)
    return tries


def resolve_benchmark(spec: str | os.PathLike, data_root: Path | None) -> Benchmark:
    """Turn a benchmark name (looked up under data_root) or a path into a Benchmark; DataError if absent.

    Relative paths are tried from the working directory, then under data_root.
    """
    text = str(spec).strip()
    if "?" in text:  # a pairs file with options
        path_text, _, query = text.partition("?")
        options = parse_options(query, text)
        for p in _candidates(path_text, data_root):
            if p.is_file():
                return _from_path(p, options)
        raise DataError(f"benchmark {text!r}: pairs file {path_text!r} not found (looked at "
                        f"{', '.join(str(p) for p in _candidates(path_text, data_root))})")
    base, at, count = text.rpartition("@")
    if at and base and count.isdigit():
        bench = resolve_benchmark(base, data_root)
        if bench.kind != "pairs" or not 1 <= int(count) <= 10:
            raise DataError(f"benchmark {text!r}: '@N' (the first N of 10 folds, N = 1..10) applies to pair "
                            "benchmarks (LFW folders, .bin files) only")
        return replace(bench, name=f"{bench.name}@{int(count)}", folds=int(count))
    if text.lower() in BENCHMARKS:
        return _find_named(BENCHMARKS.get(text.lower()), data_root)
    tries = _candidates(text, data_root)
    for p in tries:
        if p.exists():
            return _from_path(p)
    if _looks_like_path(text):
        raise DataError(f"benchmark path {text!r} not found (looked at {', '.join(str(p) for p in tries)})")
    hint = difflib.get_close_matches(text.lower(), BENCHMARKS.names(), n=1)
    raise DataError(f"unknown benchmark {text!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "") +
                    f"; known: {', '.join(BENCHMARKS.names())}; a path to a .bin file, an LFW-style, CFP or IJB "
                    "folder, or a pairs file (my_faces/pairs.txt?aligned) also works")


@dataclass
class BenchmarkResult:
    """`summary`: JSON-able numbers for tables and manifests; `roc`: (fpr, tpr) for plots."""

    summary: dict
    roc: tuple[np.ndarray, np.ndarray]
    scores: np.ndarray = field(repr=False)
    labels: np.ndarray = field(repr=False)


def _far_key(far: float) -> str:
    return f"{far:.0e}"


def _json_num(x):
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


def _check_finite(emb: np.ndarray, name: str, valid=None) -> None:
    rows = ~np.isfinite(emb).all(axis=1)
    if valid is not None:
        rows &= np.asarray(valid, bool)
    if rows.any():
        raise ModelError(f"{name}: the model produced NaN/inf embeddings for {int(rows.sum())} of {len(emb)} "
                         f"faces (first: row {int(np.argmax(rows))}); check the model file and its precision")


def _pairs_result(embeddings: np.ndarray, data, name: str, metric: str, seconds: float) -> BenchmarkResult:
    emb = np.asarray(embeddings)
    if emb.ndim != 2 or len(emb) != len(data.images):
        raise ValueError(f"need embeddings of shape ({len(data.images)}, D) for {name}, got {emb.shape}")
    _check_finite(emb, name)
    a, b = emb[data.pairs[:, 0]], emb[data.pairs[:, 1]]
    issame = np.asarray(data.issame, bool)
    # A pairs file with one fold (LFW View 1, a custom list) gets 10 folds stratified by label.
    official = len(np.unique(data.folds)) >= 2
    folds = data.folds if official else stratified_kfold_ids(issame)
    v = verification_10fold(a, b, issame, folds=folds, metric=metric)
    scores = pair_scores(a, b, metric)
    fpr, tpr, _ = roc_curve(scores, issame)
    n_neg = int((~issame).sum())
    # A FAR is only measurable when at least one impostor pair may be accepted at it.
    fars = [f for f in IJB_FARS if f * n_neg >= 1]
    tars = tar_at_far(scores, issame, fars) if fars and issame.any() else {}
    summary = {
        "name": name, "kind": "pairs", "metric": metric,
        "accuracy": v["accuracy"], "std": v["std"], "threshold": v["threshold"],
        "val": _json_num(v["val"]), "val_std": _json_num(v["val_std"]), "far": _json_num(v["far"]),
        "tar_at_far": {_far_key(f): t * 100 for f, t in tars.items()},
        "auc": _json_num(auc(fpr, tpr)),
        "fold_accuracies": v["fold_accuracies"],
        "folds": "official" if official else "10 stratified",
        "pairs": int(len(issame)), "skipped": int(getattr(data, "skipped", 0)),
        "images": int(len(data.images)), "seconds": float(seconds),
    }
    return BenchmarkResult(summary, (fpr, tpr), scores, issame)


def _ijb_result(features: np.ndarray, data, name: str, use_detector_score: bool, valid, seconds: float
                ) -> BenchmarkResult:
    from ..data.ijb import ijb_evaluate

    _check_finite(np.asarray(features), name, valid)
    r = ijb_evaluate(features, data, use_detector_score=use_detector_score, valid=valid)
    summary = {
        "name": name, "kind": "ijb", "metric": "cosine",
        "accuracy": None, "std": None, "threshold": None, "val": None, "val_std": None, "far": None,
        "tar_at_far": {_far_key(f): t * 100 for f, t in r["tar_at_far"].items()},
        "auc": _json_num(r["auc"]),
        "use_detector_score": use_detector_score,
        "pairs": r["pairs"], "skipped": r["skipped"],
        "images": r["images"], "images_skipped": r["images_skipped"],
        "seconds": float(seconds + r["seconds"]),
    }
    return BenchmarkResult(summary, r["roc"], r["scores"], r["labels"])


def check_enough_pairs(data, where: str, n_folds: int = 10) -> None:
    """DataError naming the set when it has too few genuine or impostor pairs for the 10 label-stratified
    folds a set without official folds gets (see _pairs_result)."""
    if len(np.unique(data.folds)) >= 2:  # official folds (LFW's, a .bin's consecutive split) are used as given
        return
    genuine = int(np.count_nonzero(data.issame))
    impostor = len(data.issame) - genuine
    if min(genuine, impostor) < n_folds:
        dropped = f" ({data.skipped} dropped: unreadable images)" if getattr(data, "skipped", 0) else ""
        raise DataError(f"{where}: {genuine} genuine and {impostor} impostor pairs{dropped}; {n_folds}-fold "
                        f"verification needs at least {n_folds} of each: use a longer pairs list")


def evaluate_embeddings(embeddings: np.ndarray, data, name: str | None = None, metric: str = "euclidean",
                        use_detector_score: bool = True, valid: np.ndarray | None = None,
                        seconds: float = 0.0) -> BenchmarkResult:
    """Score precomputed embeddings of `data` (VerificationSet: one row per image; IJBSet: one per face).

    Pairs benchmarks: insightface 10-fold accuracy (percent), VAL@FAR=1e-3 (fraction), and TAR (percent)
    on all pairs at the IJB FARs that the number of impostor pairs can measure. IJB: TAR (percent) at
    FAR 1e-6..1e-1. `valid` marks IJB faces that were read (others are left out of their templates).
    """
    from ..data.ijb import IJBSet

    name = name or data.name
    if isinstance(data, IJBSet):
        return _ijb_result(embeddings, data, name, use_detector_score, valid, seconds)
    return _pairs_result(embeddings, data, name, metric, seconds)


def _embed_ijb(embedder, data, flip: bool, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    from ..progress import progress

    feats, valid = None, np.zeros(len(data), bool)
    with progress("img") as bar:
        task = bar.add_task(f"{data.name} faces", total=len(data))
        for idx, faces in data.iter_faces(chunk=max(1024, batch_size)):
            if len(idx):
                f = embedder.embed(faces, batch_size=batch_size, flip=flip)
                if feats is None:
                    feats = np.zeros((len(data), f.shape[1]), np.float32)
                feats[idx] = f
                valid[idx] = True
            bar.advance(task, len(faces))
    if feats is None:
        raise DataError(f"{data.root}: none of the {len(data)} IJB faces could be read")
    return feats, valid


def evaluate_benchmark(embedder, bench: Benchmark, data=None, flip: bool = True, batch_size: int = 64,
                       on_error: str = "fail", metric: str = "euclidean",
                       use_detector_score: bool = True) -> BenchmarkResult:
    """Embed a benchmark's faces with `embedder` (anything with embed(faces, batch_size, flip)) and score.

    `data` is the already loaded benchmark (skips reading it again). `seconds` in the summary covers
    embedding and scoring (for IJB also reading and aligning, which is interleaved with embedding).
    """
    data = bench.load(on_error) if data is None else data
    t0 = time.perf_counter()
    if bench.kind == "ijb":
        feats, valid = _embed_ijb(embedder, data, flip, batch_size)
        return evaluate_embeddings(feats, data, name=bench.name, use_detector_score=use_detector_score,
                                   valid=valid, seconds=time.perf_counter() - t0)
    emb = embedder.embed(data.images, batch_size=batch_size, flip=flip)
    result = evaluate_embeddings(emb, data, name=bench.name, metric=metric)
    result.summary["seconds"] = time.perf_counter() - t0
    return result


def evaluate_all(embedder, specs: Sequence[str], data_root: Path | None, flip: bool = True,
                 batch_size: int = 64, on_error: str = "fail", metric: str = "euclidean",
                 use_detector_score: bool = True) -> list[BenchmarkResult]:
    """Resolve every spec first (so a missing file fails before any embedding), then evaluate each."""
    benches = [resolve_benchmark(s, data_root) for s in specs]
    return [evaluate_benchmark(embedder, b, flip=flip, batch_size=batch_size, on_error=on_error,
                               metric=metric, use_detector_score=use_detector_score) for b in benches]
