"""`facepipe distill`: run the teacher stage if needed, then the distill stage (through the stage runner)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from .options import ConfigOpt, SetOpt, load
from ..errors import ConfigError

HELP = "\n\n".join([
    "Distil the teacher into the student (the distill section of pipeline.yaml).",
    "Runs the teacher stage first when it is stale, then trains. --devices N starts N worker processes on this "
    "node with torchrun (NCCL on GPUs, gloo on CPU); distill.batch_size is the global batch, split evenly.",
    "Checkpoints (runs/RUN/distill/checkpoints/last.pt) are written every distill.save_every steps and at each "
    "epoch end. By default an unfinished run with the same configuration is resumed; --resume insists on one; a "
    "checkpoint from another configuration is refused unless --restart (which starts over).",
    "Several nodes: run the same command on every node with --nnodes M, --rdzv-endpoint HOST:PORT (node 0, "
    "reachable from all) and --node-rank 0..M-1; node 0 writes the outputs. Every node needs data.train and the "
    "teacher stage's outputs (run `facepipe run --to teacher` on each node, or share runs/ between them).",
])


def _overrides(set_: Optional[list[str]], losses: Optional[list[str]], devices: Optional[int],
               steps: Optional[int], resume: Optional[bool], nnodes: Optional[int], node_rank: Optional[int],
               rdzv_endpoint: Optional[str], rdzv_id: Optional[str]) -> list[str]:
    """The command's options as --set overrides (so errors name them the same way)."""
    out = list(set_ or [])
    if losses:
        terms = []
        for spec in losses:
            name, _, weight = spec.partition("=")
            if not name.strip():
                raise ConfigError(f"--loss {spec!r}: expected NAME or NAME=WEIGHT")
            terms.append(f"{{name: {name.strip()}, weight: {weight.strip() or 1.0}}}")
        out.append(f"distill.losses=[{', '.join(terms)}]")
    for key, value in (("distill.devices", devices), ("distill.steps", steps), ("distill.launch.nnodes", nnodes),
                       ("distill.launch.node_rank", node_rank), ("distill.launch.rdzv_endpoint", rdzv_endpoint),
                       ("distill.launch.rdzv_id", rdzv_id)):
        if value is not None:
            out.append(f"{key}={value}")
    if resume is not None:
        out.append(f"distill.resume={'resume' if resume else 'restart'}")
    return out


def distill_command(
    config: Path = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    loss: Optional[list[str]] = typer.Option(None, "--loss", help="Loss term NAME or NAME=WEIGHT (repeatable); "
                                             "replaces distill.losses (their params: use --set)."),
    devices: Optional[int] = typer.Option(None, "--devices", min=1, help="Worker processes on this node "
                                          "(GPUs, or CPU processes with gloo)."),
    resume: Optional[bool] = typer.Option(None, "--resume/--restart", help="Require and continue the last "
                                          "checkpoint / discard it and start over (default: resume a matching "
                                          "unfinished run, else start)."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Total optimizer steps (overrides "
                                        "distill.epochs; the lr schedule spans them)."),
    nnodes: Optional[int] = typer.Option(None, "--nnodes", min=1, help="Number of nodes (multi-node)."),
    node_rank: Optional[int] = typer.Option(None, "--node-rank", min=0, help="This node's rank, 0..nnodes-1."),
    rdzv_endpoint: Optional[str] = typer.Option(None, "--rdzv-endpoint", help="HOST:PORT of node 0 (multi-node)."),
    rdzv_id: Optional[str] = typer.Option(None, "--rdzv-id", help="Job id shared by all nodes."),
    bench_step: Optional[int] = typer.Option(None, "--bench-step", min=1, help="Instead of training: time N "
                                             "steps of the training loop under the legacy settings and under this "
                                             "config (img/s, the split data / teacher / forward / backward / "
                                             "optimizer, the fraction of the FLOP floor) and print the table."),
    bench_json: Optional[Path] = typer.Option(None, "--bench-json", help="With --bench-step: also write JSON."),
):
    from rich.console import Console

    from ..runner import outcomes_table, run_pipeline

    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        raise ConfigError("do not start `facepipe distill` under torchrun: it launches its own workers "
                          "(use --devices / --nnodes / --rdzv-endpoint)")
    cfg = load(config, _overrides(set_, loss, devices, steps, resume, nnodes, node_rank, rdzv_endpoint, rdzv_id))
    out = Console()
    say = lambda msg: out.print(msg, markup=False, highlight=False)  # noqa: E731
    if bench_step:
        run_pipeline(cfg, to="teacher", log=say)
        _bench(cfg, bench_step, bench_json, out)
        return
    if cfg.distill.launch.node_rank > 0:
        _secondary_node(cfg, say)
        return
    record: list = []
    try:
        run_pipeline(cfg, to="distill", force=("distill",) if resume is False else (), record=record, log=say)
    finally:
        if record:
            out.print(outcomes_table(record, title="facepipe distill"))
    for o in record:
        if o.name == "distill" and o.status == "skipped":
            say("distill is fresh: nothing to do (--restart trains again)")


def _secondary_node(cfg, say) -> None:
    """Nodes other than 0: start this node's workers; node 0 writes every output and the manifest."""
    from facepipe.pipeline.runner import StageContext
    from facepipe.pipeline.train.launch import launch
    from facepipe.stages.distill import make_job, stage_inputs

    stage_dir = cfg.run_dir() / "distill"
    ctx = StageContext(cfg, "distill", cfg.run_dir(), stage_dir, dict(stage_inputs(cfg)))
    launch(make_job(ctx), cfg.distill.devices, cfg.distill.launch)
    say(f"node {cfg.distill.launch.node_rank}: workers finished (outputs are written by node 0)")


def _bench(cfg, steps: int, json_out: Optional[Path], out) -> None:
    """Time the training loop under the legacy settings and under this config, on the same batches, and
    against the machine's FLOP floor (pipeline/train/steptime.py)."""
    import tempfile

    import torch

    from facepipe.pipeline.device import cpu_info
    from facepipe.pipeline.io import atomic_write_json
    from facepipe.pipeline.train.dist import DistEnv, worker_device
    from facepipe.pipeline.train.floor import floor_img_per_s, sgemm_gflops, train_gflop_per_image
    from facepipe.pipeline.train.setup import build_trainer
    from facepipe.pipeline.train.steptime import LEGACY, add_floor, bench_settings, bench_table
    from facepipe.stages.distill import stage_inputs

    inputs = {r: str(p) for r, p in stage_inputs(cfg).items()}
    env = DistEnv()
    device = worker_device(cfg.run.device, env)
    d = cfg.distill

    def factory(overrides: dict, tmp: str, name: str):
        def make():
            c = cfg.model_copy(deep=True)
            for key, value in overrides.items():
                setattr(c.distill, key, value)
            c.distill.benchmarks = []
            job = {"config": c.model_dump(mode="json"), "base_dir": str(cfg.base_dir), "inputs": inputs,
                   "out_dir": str(Path(tmp) / name)}
            return build_trainer(job, env, device)
        return make

    with tempfile.TemporaryDirectory(prefix="facepipe-bench-") as tmp:
        factories = {"legacy": factory(LEGACY, tmp, "legacy"), "this config": factory({}, tmp, "configured")}
        rows = bench_settings(factories, steps)
        from facepipe.models.registry import build_model

        gflop = train_gflop_per_image(build_model(d.student.arch, embedding_size=d.student.embedding_size))
    gflops = sgemm_gflops()
    floor = floor_img_per_s(gflops, gflop)
    add_floor(rows, floor)
    cpu = cpu_info()
    machine = f"{cpu['model']} ({cpu['isa']['summary']}), {torch.get_num_threads()} threads"
    settings = {"legacy": LEGACY, "this config": {"data": d.data, "num_workers": d.num_workers, "compile": d.compile}}
    for r in rows:
        r["settings"] = settings[r["setting"]]
    caption = "; ".join(f"{name}: " + ", ".join(f"{k}={v}" for k, v in kv.items()) for name, kv in settings.items())
    out.print(bench_table(rows, title=f"distill loop, {d.student.arch} emb {d.student.embedding_size}, batch "
                                      f"{d.batch_size}, {steps} steps, {device}", caption=caption))
    out.print(f"floor: sgemm {gflops:.1f} GFLOP/s / {gflop:.3f} GFLOP per image (forward + backward) = "
              f"{floor:.1f} img/s on {machine}", markup=False, highlight=False)
    if json_out:
        atomic_write_json(json_out, {"rows": rows, "steps": steps, "device": str(device), "machine": machine,
                                     "cpu": cpu, "sgemm_gflops": round(gflops, 2),
                                     "gflop_per_image": round(gflop, 4), "floor_img_per_s": round(floor, 2)})


distill_command.__doc__ = HELP


def register(app: typer.Typer) -> None:
    """Add `distill` to the facepipe app."""
    app.command("distill", help=HELP)(distill_command)
