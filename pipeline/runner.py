"""Stage runner: registered stages in STAGE_ORDER, fresh/stale by manifest, --from/--to/--force/--dry-run."""

from __future__ import annotations

import contextlib
import difflib
import importlib
import importlib.util
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from . import __version__
from .errors import ConfigError, FacepipeError, StageError
from .io import run_lock, sha256_json
from .manifest import (COMPLETE, HashCache, code_hashes, code_version, env_info, hash_path, manifest_path, now_iso,
                       read_manifest, remove_manifest, resolve_stored, stale_reasons, stored_path, write_manifest)
from .registry import Registry

if TYPE_CHECKING:
    from rich.table import Table

    from .config import PipelineConfig

STAGE_ORDER = ("teacher", "distill", "quantize", "export", "bench")


def _always(cfg: "PipelineConfig") -> bool:
    return True


@dataclass(frozen=True)
class StageSpec:
    """What the runner needs to know about a stage."""

    name: str
    run: Callable[["StageContext"], "StageResult"]
    sections: tuple[str, ...]  # config sections whose content enters the fingerprint
    after: tuple[str, ...] = ()  # upstream stages; their manifest outputs become inputs
    external_inputs: Callable[["PipelineConfig"], dict[str, Path]] | None = None  # files/dirs named by config
    enabled: Callable[["PipelineConfig"], bool] = _always
    code: tuple[str, ...] = ()  # modules loaded by name at run time (the static import closure is computed)
    # values the stage derives from the config and this machine (e.g. a weight range chosen from the CPU's
    # ISA): they enter the fingerprint beside the config, so another machine's choice is never reused
    derived: Callable[["PipelineConfig"], dict] | None = None
    # the subset of `after` this config actually reads (None: all): quantize.model makes distill no upstream
    upstream: Callable[["PipelineConfig"], tuple[str, ...]] | None = None


def stage_code(spec: StageSpec) -> list[str]:
    """The modules whose source makes a stage's code version: the import closure of its module (and of
    spec.code), computed from the sources - see pipeline/codeclosure.py."""
    from .codeclosure import import_closure

    roots = [m for m in (getattr(spec.run, "__module__", None), *spec.code) if m]
    return import_closure(*roots) or roots


@dataclass
class StageContext:
    """Handed to a stage's run(): its config, where to write, and its resolved inputs."""

    config: "PipelineConfig"
    name: str
    run_dir: Path
    stage_dir: Path
    inputs: dict[str, Path]  # "<upstream>.<role>" for upstream outputs, plus the external_inputs roles

    def output_path(self, filename: str) -> Path:
        """A path inside the stage dir (created); write it atomically (io.atomic_path)."""
        rel = Path(filename)
        if rel.is_absolute() or ".." in rel.parts:
            raise ValueError(f"output {filename!r} must be a relative path inside the stage dir")
        self.stage_dir.mkdir(parents=True, exist_ok=True)
        return self.stage_dir / rel


@dataclass
class StageResult:
    outputs: dict[str, Path]
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageState:
    """Freshness of one stage: state is fresh, stale, never-run, disabled or unavailable."""

    name: str
    state: str
    reasons: list[str] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)  # role -> path as stored in the manifest

    def to_json(self) -> dict[str, Any]:
        return {"stage": self.name, "state": self.state, "reasons": self.reasons, "outputs": self.outputs}


@dataclass
class StageOutcome:
    """What run_pipeline did with a stage: ran, skipped, failed, disabled, unavailable, would run/skip."""

    name: str
    status: str
    reasons: list[str] = field(default_factory=list)
    duration_s: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


STAGES: Registry[StageSpec] = Registry("stage")


def register_stage(spec: StageSpec) -> StageSpec:
    """Register a stage (done at import of its facepipe.stages module)."""
    _check_spec(spec)
    STAGES.register(spec.name, spec)
    return spec


def _check_spec(spec: StageSpec) -> None:
    if spec.name not in STAGE_ORDER:
        raise ValueError(f"stage {spec.name!r} is not in STAGE_ORDER {STAGE_ORDER}")
    for up in spec.after:
        if up not in STAGE_ORDER or STAGE_ORDER.index(up) >= STAGE_ORDER.index(spec.name):
            raise ValueError(f"stage {spec.name!r}: upstream {up!r} must be a stage earlier in {STAGE_ORDER}")


def available_stages() -> dict[str, StageSpec]:
    """Import facepipe.stages.<name> for every stage module that exists; the registered stages, in order."""
    for name in STAGE_ORDER:
        mod = f"facepipe.stages.{name}"
        if importlib.util.find_spec(mod) is not None:
            importlib.import_module(mod)
    return {n: STAGES.get(n) for n in STAGE_ORDER if n in STAGES}


def _normalise(stages: Mapping[str, StageSpec] | Iterable[StageSpec] | None) -> dict[str, StageSpec]:
    if stages is None:
        return available_stages()
    specs = list(stages.values()) if isinstance(stages, Mapping) else list(stages)
    for s in specs:
        _check_spec(s)
    by_name = {s.name: s for s in specs}
    return {n: by_name[n] for n in STAGE_ORDER if n in by_name}


def _check_name(name: str, stages: Mapping[str, StageSpec], option: str) -> str:
    if name not in STAGE_ORDER:
        hint = difflib.get_close_matches(name, STAGE_ORDER, n=1)
        tip = f"did you mean {hint[0]!r}?" if hint else f"stages: {', '.join(STAGE_ORDER)}"
        raise StageError(f"{option} {name!r}: unknown stage ({tip})")
    if name not in stages:
        raise StageError(f"stage {name!r} is not available in this version of facepipe "
                         f"(available: {', '.join(stages) or 'none'})")
    return name


# --- assessing one stage --------------------------------------------------------------------------------
@dataclass
class _Assessment:
    spec: StageSpec
    stage_dir: Path
    inputs: dict[str, Path]
    input_hashes: dict[str, str]
    missing: list[str]  # problems that stop the stage from running (missing inputs / upstream manifests)
    code: str
    config: dict[str, Any]
    fingerprint: str | None
    manifest: dict | None
    reasons: list[str]
    code_modules: dict[str, str] = field(default_factory=dict)
    unresolved: list[str] = field(default_factory=list)  # input problems of the config's own making

    @property
    def state(self) -> str:
        if not self.reasons:
            return "fresh"
        return "never-run" if self.manifest is None else "stale"


def _upstreams(spec: StageSpec, cfg: "PipelineConfig", stages: Mapping[str, StageSpec]) -> list[str]:
    """Upstream stages that exist and are enabled (a disabled or absent upstream contributes no inputs)."""
    wanted = spec.after if spec.upstream is None else spec.upstream(cfg)
    return [u for u in spec.after if u in wanted and u in stages and stages[u].enabled(cfg)]


def _assess(spec: StageSpec, cfg: "PipelineConfig", stages: Mapping[str, StageSpec], cache: HashCache,
            forced: str | None = None, pending: Mapping[str, str] | None = None) -> _Assessment:
    """Resolve a stage's inputs, hash them, and compare with its manifest.

    pending: upstream name -> reason it is not settled yet (it will run first, or it is stale).
    """
    run_dir = cfg.run_dir()
    stage_dir = run_dir / spec.name
    inputs: dict[str, Path] = {}
    missing: list[str] = []  # what stops the stage from running
    unresolved: list[str] = []  # of those, what the config itself gets wrong (no upstream run can fix it)
    reasons: list[str] = []
    unknown: list[str] = []  # input roles (or upstream names) whose current hash cannot be known
    ups = _upstreams(spec, cfg, stages)
    for up in ups:
        m = read_manifest(run_dir / up)
        if m is None or m.get("status") != COMPLETE:
            missing.append(f"upstream {up!r} has no complete manifest in {run_dir / up}: run it first "
                           f"(facepipe run --to {up})")
            unknown.append(up)
            if not (pending and up in pending):
                reasons.append(f"upstream {up} has never run")
            continue
        for role, rec in (m.get("outputs") or {}).items():
            inputs[f"{up}.{role}"] = resolve_stored(run_dir / up, rec.get("path", ""))
    try:
        external = spec.external_inputs(cfg) if spec.external_inputs else {}
    except FacepipeError as e:  # e.g. data root unset: status must still report, run must refuse
        external = {}
        missing.append(f"cannot resolve its inputs: {e}")
        unresolved.append(missing[-1])
        reasons.append(f"inputs unresolved: {e}")
    for role, p in external.items():
        if role in inputs:
            raise ValueError(f"stage {spec.name!r}: input role {role!r} clashes with an upstream output")
        p = Path(p)
        inputs[role] = p if p.is_absolute() else cfg.base_dir / p
    hashes: dict[str, str] = {}
    for role, p in inputs.items():
        if p.exists():
            hashes[role] = hash_path(p, cache, label=role)[0]
        else:
            missing.append(f"input {role} not found: {p}")
            if role in external:
                unresolved.append(missing[-1])
            unknown.append(role)
            reasons.append(f"input {role} missing: {p}")
    code_modules = code_hashes(stage_code(spec))
    code = code_version(code_modules)
    config = {s: cfg.section(s) for s in spec.sections}
    if spec.derived is not None:
        config["derived"] = spec.derived(cfg)
    fingerprint = None if missing else sha256_json({"stage": spec.name, "code_version": code, "config": config,
                                                     "inputs": hashes})
    manifest = read_manifest(stage_dir)
    head: list[str] = [forced] if forced else []
    if manifest is None:
        tried = stage_dir.is_dir() and any(stage_dir.iterdir())
        head.append("no manifest: the last run did not finish" if tried else "never run")
    else:
        reasons += stale_reasons(manifest, stage=spec.name, code=code, config=config, inputs=hashes,
                                 upstreams=ups, stage_dir=stage_dir, cache=cache, unknown=unknown,
                                 code_modules=code_modules)
        if not reasons and not missing and manifest.get("fingerprint") != fingerprint:
            reasons.append("fingerprint changed")
    head += [pending[u] for u in ups if pending and u in pending]
    reasons = head + reasons
    return _Assessment(spec, stage_dir, inputs, hashes, missing, code, config, fingerprint, manifest, reasons,
                       code_modules, unresolved)


def _execute(a: _Assessment, cfg: "PipelineConfig", cache: HashCache) -> StageResult:
    """Run one stage and write its manifest last; a failing stage leaves no manifest behind."""
    spec = a.spec
    if a.missing:
        raise StageError(f"stage {spec.name!r}: {a.missing[0]}")
    a.stage_dir.mkdir(parents=True, exist_ok=True)
    # Removed first: a crash mid-stage must never leave a trusted old manifest beside half-new outputs.
    remove_manifest(a.stage_dir)
    started, t0 = now_iso(), time.perf_counter()
    result = spec.run(StageContext(cfg, spec.name, cfg.run_dir(), a.stage_dir, dict(a.inputs)))
    if not isinstance(result, StageResult):
        raise TypeError(f"stage {spec.name!r} returned {type(result).__name__}, expected StageResult")
    outputs = {}
    for role, p in result.outputs.items():
        p = Path(p) if Path(p).is_absolute() else a.stage_dir / p
        if not p.exists():
            raise StageError(f"stage {spec.name!r} reported output {role!r} at {p}, which does not exist")
        sha, size = hash_path(p, cache, label=f"{spec.name}.{role}")
        outputs[role] = {"path": stored_path(a.stage_dir, p), "sha256": sha, "bytes": size}
    duration = time.perf_counter() - t0
    write_manifest(a.stage_dir, {
        "stage": spec.name, "status": COMPLETE, "facepipe": __version__, "code_version": a.code,
        "code_modules": a.code_modules, "fingerprint": a.fingerprint,
        "inputs": {r: {"path": str(p), "sha256": a.input_hashes[r]} for r, p in a.inputs.items()},
        "outputs": outputs, "config": a.config, "metrics": result.metrics, "env": env_info(cfg.run.device),
        "started": started, "finished": now_iso(), "duration_s": round(duration, 3),
    })
    return result


# --- public entry points --------------------------------------------------------------------------------
def stage_status(cfg: "PipelineConfig", stages: Mapping[str, StageSpec] | Iterable[StageSpec] | None = None
                 ) -> list[StageState]:
    """Freshness of every stage in STAGE_ORDER, with the reasons a stage is stale."""
    specs = _normalise(stages)
    cache = HashCache()
    states: list[StageState] = []
    unsettled: dict[str, str] = {}
    for name in STAGE_ORDER:
        spec = specs.get(name)
        if spec is None:
            states.append(StageState(name, "unavailable", ["not in this version of facepipe"]))
            continue
        if not spec.enabled(cfg):
            states.append(StageState(name, "disabled", ["disabled by the config"]))
            continue
        a = _assess(spec, cfg, specs, cache, pending=unsettled)
        if a.state != "fresh":
            unsettled[name] = f"upstream {name} " + ("is stale" if a.state == "stale" else "has never run")
        outputs = {r: v.get("path", "") for r, v in ((a.manifest or {}).get("outputs") or {}).items()}
        states.append(StageState(name, a.state, a.reasons, outputs))
    cache.save()
    return states


def _select(specs: Mapping[str, StageSpec], from_: str | None, to: str | None,
            force: Iterable[str]) -> list[str]:
    """Stage names between --from and --to (inclusive, STAGE_ORDER), after checking every named stage."""
    lo = STAGE_ORDER.index(_check_name(from_, specs, "--from")) if from_ else 0
    hi = STAGE_ORDER.index(_check_name(to, specs, "--to")) if to else len(STAGE_ORDER) - 1
    if lo > hi:
        raise StageError(f"--from {from_} comes after --to {to} (order: {' -> '.join(STAGE_ORDER)})")
    names = list(STAGE_ORDER[lo:hi + 1])
    for f in force:
        _check_name(f, specs, "--force")
        if f not in names:
            raise StageError(f"--force {f}: outside the --from/--to range ({names[0]} .. {names[-1]})")
    return names


def _needed(runnable: list[str], specs: Mapping[str, StageSpec], cfg: "PipelineConfig") -> list[str]:
    """Leave out a stage that a later stage of the range declares as upstream but this config does not read
    (StageSpec.upstream: with quantize.model, distill and then teacher feed nothing). Stages no other stage
    declares are kept: an explicit range runs what it names."""
    keep = list(runnable)
    declared = {u for n in runnable for u in specs[n].after}
    while True:
        read = {u for n in keep for u in _upstreams(specs[n], cfg, specs)}
        drop = [n for n in keep[:-1] if n in declared and n not in read]
        if not drop:
            return keep
        keep = [n for n in keep if n not in drop]


def run_pipeline(cfg: "PipelineConfig", from_: str | None = None, to: str | None = None,
                 force: Iterable[str] = (), dry_run: bool = False, *,
                 stages: Mapping[str, StageSpec] | Iterable[StageSpec] | None = None,
                 record: list[StageOutcome] | None = None,
                 log: Callable[[str], None] | None = None) -> list[StageOutcome]:
    """Run the stale stages between from_ and to in STAGE_ORDER; skip the fresh ones.

    stages: the stages to use (default: those registered by facepipe.stages). record: a list that receives
    each outcome as it happens (so a caller can still report when a stage raises). log: progress lines.
    """
    specs = _normalise(stages)
    force = tuple(force)
    names = _select(specs, from_, to, force)
    enabled = [n for n in names if n in specs and specs[n].enabled(cfg)]
    runnable = _needed(enabled, specs, cfg)
    names = [n for n in names if n in runnable or n not in enabled]  # disabled / absent ones are still reported
    if not runnable:
        if not specs:
            raise StageError("nothing to run: no stage is available in this version of facepipe "
                             f"(expected modules facepipe.stages.{{{','.join(STAGE_ORDER)}}})")
        present = [n for n in names if n in specs]
        raise StageError(f"nothing to run: stage(s) {', '.join(present) or 'none'} in range "
                         f"{names[0]} .. {names[-1]} are " + ("disabled by the config" if present else
                                                                "not available in this version of facepipe"))
    for f in force:
        if not specs[f].enabled(cfg):
            raise StageError(f"--force {f}: stage {f!r} is disabled by the config")
    forced = {n: f"forced (--from {from_})" for n in names if from_}
    forced.update({f: "forced (--force)" for f in force})
    outcomes = record if record is not None else []
    say = log or (lambda _msg: None)
    cache = HashCache()
    will_run: dict[str, str] = {}
    lock = contextlib.nullcontext() if dry_run else run_lock(cfg.run_dir())
    with lock:
        return _run_stages(cfg, specs, names, forced, dry_run, outcomes, say, cache, will_run)


def _run_stages(cfg, specs, names, forced, dry_run, outcomes, say, cache, will_run) -> list[StageOutcome]:
    try:
        for name in names:
            spec = specs.get(name)
            if spec is None:
                outcomes.append(StageOutcome(name, "unavailable", ["not in this version of facepipe"]))
                continue
            if not spec.enabled(cfg):
                outcomes.append(StageOutcome(name, "disabled", ["disabled by the config"]))
                continue
            a = _assess(spec, cfg, specs, cache, forced=forced.get(name), pending=will_run)
            if dry_run:
                if a.state == "fresh":
                    outcomes.append(StageOutcome(name, "would skip", ["fresh"]))
                elif a.unresolved:  # the real run would refuse it: so does the plan
                    outcomes.append(StageOutcome(name, "cannot run", a.unresolved))
                else:
                    will_run[name] = f"upstream {name} will run first"
                    outcomes.append(StageOutcome(name, "would run", a.reasons))
                continue
            if a.state == "fresh":
                say(f"{name}: fresh, skipped")
                outcomes.append(StageOutcome(name, "skipped", ["fresh"]))
                continue
            say(f"{name}: running ({'; '.join(a.reasons)})")
            t0 = time.perf_counter()
            try:
                result = _execute(a, cfg, cache)
            except BaseException:
                outcomes.append(StageOutcome(name, "failed", a.reasons, time.perf_counter() - t0))
                raise
            outcomes.append(StageOutcome(name, "ran", a.reasons, time.perf_counter() - t0, dict(result.metrics)))
    finally:
        cache.save()
    blocked = [o for o in outcomes if o.status == "cannot run"]
    if blocked:  # after the loop, so the plan table still shows every stage
        raise ConfigError(f"{len(blocked)} stage(s) cannot run: " + "; ".join(f"{o.name}: {o.reasons[0]}"
                                                                             for o in blocked))
    return outcomes


# --- reports --------------------------------------------------------------------------------------------
def _fmt_metric(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v) if isinstance(v, (int, str, bool)) else "…"


def outcomes_table(outcomes: Iterable[StageOutcome], title: str = "facepipe run") -> "Table":
    """Rich table: stage, status, duration, key metrics, why."""
    from rich.table import Table
    from rich.text import Text

    styles = {"ran": "green", "skipped": "dim", "failed": "bold red", "would run": "yellow", "would skip": "dim",
              "cannot run": "bold red"}
    t = Table(title=title)
    for col in ("stage", "status", "duration", "metrics"):
        t.add_column(col, no_wrap=col != "metrics")
    t.add_column("why", overflow="fold")
    for o in outcomes:
        scalars = [(k, v) for k, v in o.metrics.items() if isinstance(v, (int, float, str, bool))]
        metrics = ", ".join(f"{k}={_fmt_metric(v)}" for k, v in scalars[:4])
        dur = f"{o.duration_s:.1f} s" if o.duration_s is not None else ""
        t.add_row(o.name, Text(o.status, style=styles.get(o.status, "")), dur, Text(metrics),
                  Text("; ".join(o.reasons)))
    return t


def status_table(states: Iterable[StageState]) -> "Table":
    """Rich table: stage, state, reasons, outputs."""
    from rich.table import Table
    from rich.text import Text

    styles = {"fresh": "green", "stale": "yellow", "never-run": "yellow", "disabled": "dim", "unavailable": "dim"}
    t = Table(title="facepipe status")
    for col in ("stage", "state"):
        t.add_column(col, no_wrap=True)
    t.add_column("reasons", overflow="fold")
    t.add_column("outputs", overflow="fold")
    for s in states:
        t.add_row(s.name, Text(s.state, style=styles.get(s.state, "")), Text("\n".join(s.reasons)),
                  Text("\n".join(f"{r}: {p}" for r, p in s.outputs.items())))
    return t


__all__ = ["STAGE_ORDER", "STAGES", "StageSpec", "StageContext", "StageResult", "StageState", "StageOutcome",
           "register_stage", "available_stages", "stage_status", "run_pipeline", "outcomes_table",
           "status_table", "manifest_path"]
