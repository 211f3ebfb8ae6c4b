"""CFP (Celebrities in Frontal-Profile) in its official layout: the FF and FP protocols, 10 official folds.

  <root>/Protocol/Pair_list_F.txt, Pair_list_P.txt   "index path", path relative to Protocol/
  <root>/Protocol/Split/<FF|FP>/<01..10>/{same,diff}.txt   "i,j" a line (FP: i into list F, j into list P)
  <root>/Data/Images/<NNN>/{frontal,profile}/<NN>.jpg
Images that are already 112x112 are taken as aligned crops; others (the raw release) are aligned with YuNet.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

from ..errors import DataError
from ..io import inside
from .pairset import FaceReader, PairRef, load_pair_set, read_list_lines
from .types import VerificationSet

PROTOCOLS = {"FF": ("F", "F"), "FP": ("F", "P")}  # which pair list each index of a split line reads
N_FOLDS = 10


def required_files(root: Path, protocol: str) -> list[Path]:
    """What must exist for a CFP protocol to be read."""
    first, second = PROTOCOLS[protocol]
    lists = sorted({root / "Protocol" / f"Pair_list_{x}.txt" for x in (first, second)})
    return [*lists, root / "Protocol" / "Split" / protocol]


def read_pair_list_file(path: Path, root: Path) -> dict[int, Path]:
    """Pair_list_X.txt -> {index: image path}; paths are relative to Protocol/ and must stay under root."""
    lines = read_list_lines(path, "CFP pair list")
    out: dict[int, Path] = {}
    for lineno, ln in enumerate(lines, 1):
        if not ln.strip():
            continue
        where = f"{path.name} line {lineno}"
        f = ln.split()
        if len(f) != 2 or not f[0].isdigit():
            raise DataError(f"{where}: expected 'index path' (e.g. '1 ../Data/Images/001/frontal/01.jpg'), "
                            f"got {ln.strip()!r}")
        rel = posixpath.normpath(posixpath.join("Protocol", f[1].replace("\\", "/")))
        out[int(f[0])] = inside(root, rel, where)  # '../Data' climbs out of Protocol/, not out of the root
    return out


def read_split(path: Path, first: dict[int, Path], second: dict[int, Path], issame: bool, fold: int
               ) -> list[PairRef]:
    """One {same,diff}.txt of a fold: "i,j" lines into the two pair lists."""
    lines = read_list_lines(path, "CFP split file")
    out = []
    for lineno, ln in enumerate(lines, 1):
        if not ln.strip():
            continue
        where = f"{Path(*path.parts[-3:])} line {lineno}"
        f = [x.strip() for x in ln.split(",")]
        if len(f) != 2 or not all(x.isdigit() for x in f):
            raise DataError(f"{where}: expected 'i,j' (two indices into the pair lists), got {ln.strip()!r}")
        i, j = int(f[0]), int(f[1])
        if i not in first or j not in second:
            bad = i if i not in first else j
            raise DataError(f"{where}: index {bad} is not in its pair list; is the Protocol folder complete?")
        out.append(PairRef(first[i], second[j], issame, fold, where))
    return out


def read_cfp_pairs(root: str | os.PathLike, protocol: str = "FP", max_folds: int | None = None) -> list[PairRef]:
    """The pairs of a CFP protocol ("FF" | "FP"), fold by fold (the official 10 folds)."""
    root = Path(root)
    protocol = protocol.upper()
    if protocol not in PROTOCOLS:
        raise DataError(f"CFP protocol {protocol!r}: use FF or FP")
    missing = [p for p in required_files(root, protocol) if not p.exists()]
    if missing:
        raise DataError(f"{root}: not a CFP folder in the official layout; missing "
                        f"{', '.join(str(p.relative_to(root)) for p in missing)}")
    lists = {x: read_pair_list_file(root / "Protocol" / f"Pair_list_{x}.txt", root) for x in set(PROTOCOLS[protocol])}
    first, second = (lists[x] for x in PROTOCOLS[protocol])
    split = root / "Protocol" / "Split" / protocol
    folds = sorted(p for p in split.iterdir() if p.is_dir() and p.name.isdigit())
    if len(folds) != N_FOLDS:
        raise DataError(f"{split}: expected the {N_FOLDS} official folds 01..10, found {[p.name for p in folds]}")
    pairs: list[PairRef] = []
    for k, fold in enumerate(folds[:max_folds]):
        for name, same in (("same.txt", True), ("diff.txt", False)):
            pairs += read_split(fold / name, first, second, same, k)
    return pairs


def load_cfp(root: str | os.PathLike, protocol: str = "FP", on_error: str = "fail", max_folds: int | None = None,
             workers: int = 2) -> VerificationSet:
    """CFP-FF or CFP-FP as a VerificationSet with the official folds."""
    pairs = read_cfp_pairs(root, protocol, max_folds)
    name = f"cfp_{protocol.lower()}"
    return load_pair_set(pairs, name, str(Path(root) / "Protocol" / "Split" / protocol.upper()),
                         FaceReader(Path(root), None, aligned=None), on_error, workers)
