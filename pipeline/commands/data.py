"""`facepipe data`: align raw faces, pack .bin / .rec files, inspect any supported data set."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import DataError
from ..progress import table_console

OnErrorOpt = typer.Option("fail", "--on-error", help="fail: stop at the first bad image; skip: leave it out "
                                                     "and count it.")


def _image_files(src: Path, exclude: Path) -> list[Path]:
    from ..data.imagefolder import IMAGE_EXTENSIONS

    exclude = exclude.resolve()
    files = []
    for p in sorted(src.rglob("*")):
        rel = p.relative_to(src)
        if any(part.startswith(".") for part in rel.parts) or p.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        if p.resolve().is_relative_to(exclude) or not p.is_file():
            continue
        files.append(p)
    return files


def align_tree(src: Path, out: Path, landmarks: Path | None = None, on_error: str = "fail",
               select: str = "score") -> dict[str, int]:
    """Align every image under src into out (same relative paths, .jpg quality 95): landmarks from a
    landmarks.tsv-style file (paths relative to that file) or detected with YuNet. Returns counts."""
    import os

    from ..data.align import align_face
    from ..data.images import check_on_error, encode_jpeg, read_image_rgb
    from ..data.lfw import read_landmarks
    from ..io import atomic_write_bytes, atomic_write_text
    from ..progress import progress

    check_on_error(on_error)
    if not src.is_dir():
        raise DataError(f"{src}: source folder not found")
    lm_by_path = None
    if landmarks is not None:
        base = os.path.dirname(os.path.abspath(landmarks))  # abspath, not resolve: symlinked images keep their name
        lm_by_path = {os.path.normpath(os.path.join(base, k)): v for k, v in read_landmarks(landmarks).items()}
    files = _image_files(src, out)
    if not files:
        raise DataError(f"{src}: no images found (looked for {', '.join(sorted({'.jpg', '.jpeg', '.png'}))} ...)")
    counts = {"aligned": 0, "unreadable": 0, "no_landmarks": 0}
    written: dict[str, str] = {}
    with progress("img") as bar:
        task = bar.add_task(f"align {src.name}", total=len(files))
        for path in files:
            bar.advance(task)
            img = read_image_rgb(path, on_error)
            if img is None:
                counts["unreadable"] += 1
                continue
            if lm_by_path is not None:
                lm = lm_by_path.get(os.path.abspath(path))
                why = f"no landmarks for it in {landmarks}"
            else:
                from ..data.detect import detect_landmarks

                found = detect_landmarks(img, select=select)
                lm = None if found is None else found[0]
                why = "YuNet found no face"
            if lm is None:
                if on_error == "fail":
                    raise DataError(f"{path}: {why}; remove it, or use --on-error skip")
                counts["no_landmarks"] += 1
                continue
            rel = path.relative_to(src).with_suffix(".jpg")
            atomic_write_bytes(out / rel, encode_jpeg(align_face(img, lm), 95))
            written[path.relative_to(src).as_posix()] = rel.as_posix()
            counts["aligned"] += 1
    tsv = src / "identities.tsv"
    if tsv.is_file():  # keep an identity list usable for the aligned tree
        lines = []
        for line in tsv.read_text(encoding="utf-8").splitlines():
            f = line.split("\t")
            if len(f) == 2 and f[0] in written:
                lines.append(f"{written[f[0]]}\t{f[1]}")
        atomic_write_text(out / "identities.tsv", "".join(ln + "\n" for ln in lines))
    return counts


def _table(title: str, rows: list[tuple[str, object]]):
    from rich.table import Table

    t = Table(title=title, show_header=True)
    t.add_column("property")
    t.add_column("value")
    for k, v in rows:
        t.add_row(k, str(v))
    return t


def _inspect_rows(path: Path) -> tuple[str, list[tuple[str, object]], str | None]:
    """(kind, table rows, problem): problem is what makes the set unusable (the command then exits 2)."""
    import numpy as np

    from ..eval.datasets import PAIR_LIST_SUFFIXES

    if path.is_file() and path.suffix.lower() in PAIR_LIST_SUFFIXES:
        return _inspect_pair_list(str(path), path)
    if path.suffix == ".bin":
        from ..data.binfile import read_bin_raw
        from ..data.images import decode_image_rgb
        from ..eval.metrics import kfold_ids

        bins, issame = read_bin_raw(path)
        sample = decode_image_rgb(bins[0], f"{path}: image 0") if bins else None
        return "insightface .bin", [
            ("images", len(bins)), ("pairs", len(issame)), ("same / different", f"{issame.sum()} / {(~issame).sum()}"),
            ("folds", len(set(kfold_ids(len(issame)).tolist())) if len(issame) else 0),
            ("encoded bytes", sum(len(b) for b in bins)), ("sample shape", None if sample is None else sample.shape)], \
            None
    if path.suffix in (".rec", ".idx") or (path.is_dir() and (path / "train.rec").is_file()):
        from ..data.images import decode_image_rgb
        from ..data.recordio import RecordIOReader, image_keys, read_rec_dataset

        faces = read_rec_dataset(path)
        reader = RecordIOReader(faces.source)
        header0 = len(image_keys(reader)) != len(reader)
        sample = decode_image_rgb(reader.read(faces.items[0])[1], f"{faces.source}: record {faces.items[0]}")
        counts = np.bincount(faces.labels, minlength=faces.num_classes)
        rows = [("records", len(reader)), ("insightface header record", header0),
                ("images", len(image_keys(reader))), ("classes", faces.num_classes),
                ("images per class min / mean / max", f"{counts.min()} / {counts.mean():.1f} / {counts.max()}"),
                ("sample shape", sample.shape)]
        reader.close()
        return "MXNet RecordIO", rows, None
    if path.is_dir() and (path / "pairs.txt").is_file():
        from ..data.align import align_face
        from ..data.images import read_image_rgb
        from ..data.lfw import lfw_image_path, read_landmarks, read_pairs

        pairs = read_pairs(path / "pairs.txt")
        images = {lfw_image_path(path, p.name_a, p.num_a) for p in pairs} | {
            lfw_image_path(path, p.name_b, p.num_b) for p in pairs}
        missing = sum(not p.is_file() for p in images)
        lm_file = path / "landmarks.tsv"
        lms = read_landmarks(lm_file) if lm_file.is_file() else {}
        rows = [("pairs", len(pairs)), ("same / different", f"{sum(p.issame for p in pairs)} / "
                                                              f"{sum(not p.issame for p in pairs)}"),
                ("folds", len({p.fold for p in pairs})), ("distinct images", len(images)),
                ("missing images", missing), ("landmarks", len(lms) if lm_file.is_file() else "no landmarks.tsv")]
        if missing == len(images):
            from ..data.lfw import lfw_image_dir

            return "LFW", rows, (f"{path}: none of the {len(images)} images its pairs.txt names exists; expected "
                                 f"them as {lfw_image_dir(path)}/<Name>/<Name>_<NNNN>.jpg (e.g. {sorted(images)[0]})")
        first = next(p for p in sorted(images) if p.is_file())
        img = read_image_rgb(first, "skip")
        key = first.relative_to(path).as_posix()
        if img is not None:
            rows.append(("sample raw shape", img.shape))
            if key in lms:
                rows.append(("sample aligned shape", align_face(img, lms[key]).shape))
        return "LFW", rows, None
    if path.is_dir() and (path / "Protocol" / "Split").is_dir():
        return _inspect_cfp(path)
    if path.is_dir():
        from ..data.imagefolder import read_image_folder
        from ..data.images import read_image_rgb

        faces = read_image_folder(path)
        counts = np.bincount(faces.labels, minlength=faces.num_classes)
        sample = read_image_rgb(Path(faces.source) / faces.items[0], "skip")
        return "image folder", [
            ("images", len(faces.items)), ("classes", faces.num_classes),
            ("images per class min / mean / max", f"{counts.min()} / {counts.mean():.1f} / {counts.max()}"),
            ("listed via", "identities.tsv" if (path / "identities.tsv").is_file() else "sub-folders"),
            ("sample shape", None if sample is None else sample.shape)], None
    raise DataError(f"{path}: not a .bin, .rec/.idx, pairs file, LFW folder (with pairs.txt), CFP folder "
                    "(Protocol/, Data/Images/) or image folder")


def _pair_rows(refs, kind: str, where: str) -> tuple[str, list[tuple[str, object]], str | None]:
    """Rows for any pairs list (PairRefs); the problem when none of its images exists."""
    from ..data.images import read_image_rgb

    images = sorted({p.a for p in refs} | {p.b for p in refs})
    present = [p for p in images if p.is_file()]
    rows = [("pairs", len(refs)), ("same / different", f"{sum(p.issame for p in refs)} / "
                                                         f"{sum(not p.issame for p in refs)}"),
            ("folds", len({p.fold for p in refs})), ("distinct images", len(images)),
            ("missing images", len(images) - len(present))]
    if not present:
        return kind, rows, (f"{where}: none of the {len(images)} images its pairs name exists (e.g. {images[0]}); "
                            "point the image root at the folder they are under (option images=)")
    img = read_image_rgb(present[0], "skip")
    if img is not None:
        rows.append(("sample raw shape", img.shape))
    return kind, rows, None


def _inspect_cfp(path: Path):
    from ..data.cfp import read_cfp_pairs

    refs = read_cfp_pairs(path, "FP")
    kind, rows, problem = _pair_rows(refs, "CFP (official layout)", str(path))
    rows.insert(0, ("protocols", "FF (frontal-frontal), FP (frontal-profile); rows below: FP"))
    rows.append(("FF pairs", len(read_cfp_pairs(path, "FF"))))
    return kind, rows, problem


def _inspect_pair_list(spec: str, path: Path):
    from ..data.pairset import read_pair_list
    from ..eval.datasets import resolve_benchmark

    bench = resolve_benchmark(spec, None)
    refs = read_pair_list(bench.paths[0], bench.paths[1])
    kind, rows, problem = _pair_rows(refs, "pairs file", str(path))
    rows += [("image root", bench.paths[1]), ("declared aligned", bench.aligned),
             ("landmarks", bench.landmarks or ("-" if bench.aligned else "none: YuNet detects"))]
    return kind, rows, problem


def register(app: typer.Typer) -> None:
    """Add the `data` sub-commands to the CLI."""
    data_app = typer.Typer(help="Prepare face data: align, pack .bin / .rec, inspect.", no_args_is_help=True)
    app.add_typer(data_app, name="data")

    @data_app.command("align")
    def align_cmd(src: Path = typer.Argument(..., help="Folder of raw face images (any depth)."),
                  out: Path = typer.Argument(..., help="Output folder of aligned 112x112 JPEGs."),
                  landmarks: Optional[Path] = typer.Option(None, "--landmarks", help="landmarks.tsv-style file "
                                                           "(paths relative to it); default: detect with YuNet."),
                  on_error: str = OnErrorOpt,
                  select: str = typer.Option("score", "--select", help="YuNet face choice when several: score "
                                                                       "(highest) or center (nearest centre).")):
        """Align a raw image tree onto the ArcFace 112x112 template."""
        counts = align_tree(src, out, landmarks, on_error, select)
        typer.echo(f"{out}: aligned {counts['aligned']} images; skipped {counts['unreadable']} unreadable and "
                   f"{counts['no_landmarks']} without landmarks (none in the file, or no face found)")

    @data_app.command("make-bin")
    def make_bin_cmd(out: Path = typer.Argument(..., help="Output .bin file."),
                     benchmark: Optional[str] = typer.Option(None, "--benchmark", "-b", help="Any pair benchmark: "
                                                             "a name under the data root (lfw, cfp_fp, ...), a "
                                                             "folder, or a pairs file (my_faces/pairs.txt?aligned)."),
                     lfw_root: Optional[Path] = typer.Option(None, "--lfw-root", help="LFW folder (pairs.txt, "
                                                             "images/, landmarks.tsv); same as --benchmark FOLDER."),
                     pairs: str = typer.Option("pairs.txt", "--pairs", help="Pairs file inside the LFW root."),
                     image_format: str = typer.Option("png", "--format", help="png (lossless: same accuracy as the "
                                                      "raw images) or jpeg (quality 95, as insightface's bins)."),
                     data_root: Optional[Path] = typer.Option(None, "--data-root", help="Where benchmark names "
                                                              "are looked up (default: $FACEPIPE_DATA)."),
                     on_error: str = OnErrorOpt):
        """Align a benchmark's pairs (LFW, CFP, your own pairs file) and write an insightface-style .bin."""
        import os

        from ..data.binfile import make_bin, make_bin_from_lfw, read_bin_raw
        from ..eval.datasets import resolve_benchmark

        if (benchmark is None) == (lfw_root is None):
            raise DataError("give one of --benchmark (a name, folder or pairs file) or --lfw-root")
        if lfw_root is not None:
            make_bin_from_lfw(lfw_root, out, pairs_file=pairs, on_error=on_error, image_format=image_format)
        else:
            root = data_root or (Path(os.environ["FACEPIPE_DATA"]) if os.environ.get("FACEPIPE_DATA") else None)
            bench = resolve_benchmark(benchmark, root)
            if bench.kind != "pairs" or bench.fmt == "bin":
                raise DataError(f"--benchmark {benchmark}: a .bin is made from an image benchmark with pairs "
                                f"(LFW, CFP, a pairs file), not from a {bench.fmt} source")
            make_bin(bench.load(on_error), out, image_format=image_format)
        bins, issame = read_bin_raw(out)
        typer.echo(f"{out}: {len(issame)} pairs ({int(issame.sum())} same), {len(bins)} images")

    @data_app.command("make-rec")
    def make_rec_cmd(src: Path = typer.Argument(..., help="Aligned image folder (identity sub-folders or "
                                                          "identities.tsv)."),
                     out_prefix: Path = typer.Argument(..., help="Writes OUT_PREFIX.rec and OUT_PREFIX.idx."),
                     on_error: str = OnErrorOpt):
        """Pack an aligned image folder into an insightface-style train.rec/.idx."""
        from ..data.recordio import write_rec_from_folder

        faces = write_rec_from_folder(src, out_prefix, on_error)
        typer.echo(f"{faces.source}: {len(faces.items)} images of {faces.num_classes} identities"
                   + (f", {faces.skipped} skipped" if faces.skipped else ""))

    @data_app.command("inspect")
    def inspect_cmd(spec: str = typer.Argument(..., help=".bin, .rec/.idx, LFW or CFP folder, image folder, "
                                                        "or a pairs file (with ?aligned&images=... options).")):
        """Counts, classes, pairs and sample shapes of a data set."""

        path = Path(spec.partition("?")[0])
        if not path.exists():
            raise DataError(f"{path}: not found")
        if "?" in spec:
            kind, rows, problem = _inspect_pair_list(spec, path)
        else:
            kind, rows, problem = _inspect_rows(path)
        table_console().print(_table(f"{path} ({kind})", rows))
        if problem:
            raise DataError(problem)
