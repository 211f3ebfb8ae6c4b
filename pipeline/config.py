"""pipeline.yaml: pydantic models, loading, `--set a.b=c` overrides and precise error messages."""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError

DATA_ENV = "FACEPIPE_DATA"


class Section(BaseModel):
    """Base of every config section: unknown keys are errors."""

    # coerce_numbers_to_str: `--set run.name=2024` (YAML int) is a valid name
    model_config = ConfigDict(extra="forbid", validate_assignment=True, coerce_numbers_to_str=True)


class RunConfig(Section):
    name: str = "default"
    dir: Path = Path("runs")
    seed: int = 0
    device: str = "cpu"
    threads: int | None = Field(default=None, ge=1)


class DataConfig(Section):
    root: Path | None = None  # None -> $FACEPIPE_DATA
    train: str = "celeba-train"  # ImageFolder / identities.tsv folder or train.rec, relative to root
    benchmarks: list[str] = ["lfw", "cfp_fp"]  # names under root (lfw, cfp_fp, ...), .bin / folder / pairs-file paths
    on_error: Literal["fail", "skip"] = "fail"  # corrupt images / missing files: stop, or skip and count
    batch_size: int = Field(default=64, ge=1)
    # Data-free mode (no data root configured): faces drawn from the DCGAN (gan-face-generate) to distil on,
    # each its own identity, and held-out ones on which the student is scored by agreement with the teacher.
    generated: int = Field(default=1024, ge=16)
    generated_eval: int = Field(default=256, ge=16)


class PreprocessOverride(Section):
    """Override a teacher's declared preprocessing (only when the artifact does not carry it)."""

    color: Literal["RGB", "BGR"] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    size: int | None = None
    standardize: bool | None = None  # per-image standardisation (FaceNet); see embedder.Preprocess
    resize: Literal["scale", "center"] | None = None  # how the 112x112 crop reaches `size`


class TeacherConfig(Section):
    source: str = "sface"  # packaged name (sface), a file/dir path, or hf:<org>/<repo>
    kind: str = "auto"  # auto, or a registered teacher kind (pipeline/teachers: TEACHER_SOURCES)
    arch: str | None = None  # plain state dicts: a registered architecture (iresnet50, ...) or package.module:Class
    arch_kwargs: dict[str, Any] = {}  # keyword arguments of that architecture's constructor
    embedding_size: int = Field(default=128, ge=1)
    flip: bool = False  # fuse embeddings of the face and its mirror image
    cache: bool = True  # cache teacher embeddings of the training set
    check: list[str] = ["lfw", "cfp_fp"]  # benchmarks the teacher stage scores
    preprocess: PreprocessOverride | None = None
    # kind onnx / insightface only: facepipe's own ONNX Runtime loader, or insightface's model_zoo.get_model
    # (needs the optional insightface package: `make insightface`); part of the teacher's fingerprint
    loader: Literal["facepipe", "insightface"] = "facepipe"


class StudentConfig(Section):
    arch: str = "mobilefacenet"
    embedding_size: int = Field(default=128, ge=1)
    init: Path | None = None  # pretrained weights to start from: a checkpoint / state dict, or a TorchScript


class LossTerm(Section):
    name: str
    weight: float = 1.0
    params: dict[str, Any] = {}


class AugmentConfig(Section):
    """Training augmentation (data/views.py). With views: V > 0 the teacher stage caches V fixed augmented
    views of every face drawn from shift / scale / color (and their mirrors with teacher.flip), and training
    picks one per sample and epoch from the cache; with views: 0, shift / scale / color are fresh random
    augmentation and force online teacher embeddings."""

    flip: bool = False  # random horizontal flip, p = 0.5 (the teacher stage then caches mirrored faces too)
    shift: int = Field(default=0, ge=0, le=32)  # translation of up to N pixels (edge-replicated)
    scale: float = Field(default=0.0, ge=0, le=0.5)  # zoom about the centre by a factor in [1 - s, 1 + s]
    color: float = Field(default=0.0, ge=0, le=1)  # brightness and contrast factors drawn from [1 - c, 1 + c]
    views: int = Field(default=0, ge=0, le=16)  # cached augmented views per face (0: online augmentation)


class LaunchConfig(Section):
    """Where the distill workers run (not part of any fingerprint). Multi-node: start `facepipe distill` on
    every node with the same nnodes / rdzv_endpoint / rdzv_id and its own node_rank (see `facepipe distill --help`)."""

    nnodes: int = Field(default=1, ge=1)
    node_rank: int = Field(default=0, ge=0)
    rdzv_endpoint: str | None = None  # host:port of the c10d rendezvous (node 0), required when nnodes > 1
    rdzv_id: str = "facepipe"  # job id shared by all nodes of one run
    backend: Literal["auto", "nccl", "gloo"] = "auto"  # auto: nccl on CUDA, gloo on CPU
    timeout_min: float = Field(default=60.0, gt=0)  # collective timeout (rank 0 evaluates while others wait)


class DistillConfig(Section):
    student: StudentConfig = StudentConfig()
    losses: list[LossTerm] = [LossTerm(name="adaface_geom")]
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(default=0.1, gt=0)  # peak learning rate (AdaDistill: 0.1 * batch_size / 512)
    momentum: float = Field(default=0.9, ge=0, lt=1)  # SGD momentum (AdamW: beta1 stays 0.9)
    weight_decay: float = Field(default=5e-4, ge=0)
    batch_size: int = Field(default=128, ge=1)  # global batch: split evenly over all devices
    epochs: int = Field(default=10, ge=1)
    steps: int | None = Field(default=None, ge=1)  # total optimizer steps; overrides epochs when set
    devices: int = Field(default=1, ge=1)  # worker processes per node (torchrun --nproc_per_node)
    # learning-rate schedule, stepped every optimizer step; warmup ramps linearly from 0 to lr first
    schedule: Literal["step", "poly", "cosine", "constant"] = "cosine"
    warmup_epochs: float = Field(default=0.0, ge=0)
    milestones: list[float] = [8, 14, 20, 25]  # schedule=step: epochs where lr is multiplied by gamma
    gamma: float = Field(default=0.1, gt=0, le=1)
    power: float = Field(default=2.0, gt=0)  # schedule=poly: lr * (1 - progress) ** power
    min_lr: float = Field(default=0.0, ge=0)  # floor of poly / cosine
    clip_grad_norm: float | None = Field(default=5.0, gt=0)  # max global grad norm; null disables
    amp: Literal["off", "bf16", "fp16"] = "bf16"  # mixed precision on CUDA only; the CPU always trains in fp32
    teacher_mode: Literal["auto", "cache", "online"] = "auto"  # auto: the cache when augmentation allows it
    augment: AugmentConfig = AugmentConfig()
    num_workers: int = Field(default=0, ge=0)  # data-loading processes per device (0: in the training process)
    # decoded: the training set decoded once into a uint8 memmap (train/decoded.py); files: decode every batch
    data: Literal["decoded", "files"] = "decoded"
    # torch.compile the student's training step: auto compiles when the run is long enough to repay the
    # compilation (measured ~50 s on CPU for MobileFaceNet) and a C++ compiler is present (inductor needs one)
    compile: Literal["auto", "on", "off"] = "auto"
    # DCGAN faces (gan-face-generate) added to data.train without labels, with cached teacher targets: terms
    # that need labels skip them, label-free terms (feature_kd, iled, rpsd, qud, rkd, ...) train on them too
    generated_faces: int = Field(default=0, ge=0, le=1_000_000)

    @field_validator("compile", mode="before")
    @classmethod
    def _yaml_on_off(cls, v):
        """YAML reads a bare on / off as true / false: take them as "on" / "off"."""
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v
    eval_every: int = Field(default=0, ge=0)  # steps between evaluations on rank 0 (0: at the end only)
    benchmarks: list[str] | None = None  # evaluation benchmarks; null: data.benchmarks
    best_metric: str = "lfw_accuracy"  # <benchmark>_<accuracy|val|...>, higher is better; picks best.pt
    save_every: int = Field(default=500, ge=0)  # steps between checkpoints (also at every epoch end); 0: epochs only
    log_every: int = Field(default=10, ge=1)  # steps between CSV / TensorBoard rows
    tensorboard: bool = True  # also log to runs/<run>/distill/tensorboard (needs the tensorboard package)
    # Run control, excluded from dumps and fingerprints: what to do with an existing checkpoint
    # (auto: resume a matching one, refuse a mismatched unfinished one; resume: require one; restart: discard).
    resume: Literal["auto", "resume", "restart"] = Field(default="auto", exclude=True)
    launch: LaunchConfig = Field(default=LaunchConfig(), exclude=True)


class InversionConfig(Section):
    """quantize.data=inversion: DeepInversion-style images optimised to match the fp32 model's BN statistics."""

    images: int = Field(default=256, ge=1)  # images to synthesise (in batches of quantize.batch_size)
    iterations: int = Field(default=200, ge=1)  # optimisation steps per batch
    lr: float = Field(default=0.1, gt=0)  # Adam lr on the image pixels
    tv_weight: float = Field(default=1e-4, ge=0)  # total-variation prior
    l2_weight: float = Field(default=1e-5, ge=0)  # pixel L2 prior
    seed: int = 0


class QuantizeConfig(Section):
    enabled: bool = True
    # the fp32 model: null -> the distill stage's student; else any model facepipe loads (a teacher.source
    # string: an .onnx, an insightface pack, sface, a checkpoint), imported and checked against its runtime
    model: str | None = None
    backend: Literal["own", "nncf"] = "own"  # own fake-quant (any bits) | nncf (8-bit only, needs nncf)
    wbits: int = Field(default=8, ge=2, le=8)
    abits: int = Field(default=8, ge=2, le=8)
    mode: Literal["ptq", "qat"] = "qat"  # ptq: calibration only; qat: PTQ init, then fine-tune against fp32
    data: Literal["real", "synthetic", "inversion"] = "synthetic"
    data_path: str | None = None  # real: null -> data.train; synthetic: a folder of generated faces, null -> DCGAN
    images: int = Field(default=1024, ge=1)  # images drawn / generated for calibration and fine-tuning
    calib_images: int = Field(default=256, ge=1)  # images seen by PTQ calibration
    steps: int = Field(default=100, ge=0)  # QAT optimizer steps (~10 min at batch 32 on 2 CPU cores)
    batch_size: int = Field(default=32, ge=1)
    lr: float = Field(default=1e-5, gt=0)  # AdamW; 1e-4 pulled a near-lossless w8a8 PTQ init away
    weight_decay: float = Field(default=0.0, ge=0)
    freeze_after: int = Field(default=50, ge=0)  # QAT steps after which activation ranges stop moving
    # auto: 8-bit weights keep to 7 bits when this CPU is x86 without VNNI, whose int8 kernels saturate 16-bit
    # sums of full-range products (models/quant/overflow.py); true: always; false: never (VNNI / GPU targets)
    overflow_fix: bool | Literal["auto"] = "auto"
    # activation ranges from calibration: minmax | mse (clip the tails where that lowers the quantization MSE)
    # | auto (mse below 8 bits: SFace w6a6 min/max cosine to fp32 0.900 -> 0.968 with mse, on 32 LFW faces)
    act_range: Literal["auto", "minmax", "mse"] = "auto"
    weight_symmetric: bool = True  # weights: zero point 0 (TensorRT needs it); activations asymmetric
    act_symmetric: bool = False
    # per-layer bits: {layer name or fnmatch pattern | first | last: bits | {wbits, abits}} (layers as named in
    # quant_spec.json), e.g. {first: 8, last: 8} keeps the stem conv and the embedding layer at 8 bits
    layer_bits: dict[str, int | dict[str, int]] = {}
    benchmarks: list[str] | None = None  # accuracy of fp32 / PTQ / QAT; null: data.benchmarks
    inversion: InversionConfig = InversionConfig()


class TensorRTConfig(Section):
    precision: Literal["fp32", "fp16", "int8"] = "fp16"  # int8 builds from the QDQ ONNX (explicit quantization)
    min_batch: int = Field(default=1, ge=1)  # optimization profile
    opt_batch: int = Field(default=8, ge=1)
    max_batch: int = Field(default=32, ge=1)
    workspace_mb: int = Field(default=1024, ge=16)
    timing_cache: str | None = None  # null: <cache>/tensorrt/timing.cache
    dla_core: int | None = Field(default=None, ge=0)  # Jetson DLA core (GPU fallback on)
    builder: Literal["tensorrt", "torch_tensorrt"] = "tensorrt"


class ExportConfig(Section):
    formats: list[str] = ["onnx", "onnx_int8", "openvino", "openvino_int8"]
    opset: int = Field(default=17, ge=17)
    atol: float | None = None  # override every format's parity tolerance (cosine floor stays)
    # override the cosine floor of the int8 formats vs their fake-quant model (null: 0.999). A weakly trained
    # model turns one rounding difference between runtimes into a larger embedding change than a trained one
    int8_cos_floor: float | None = Field(default=None, gt=0, le=1)
    parity_faces: int = Field(default=64, ge=1)  # real faces (first benchmark) for the parity check
    tensorrt: TensorRTConfig = TensorRTConfig()


class BenchConfig(Section):
    device: str = "cpu"  # cpu | cuda | cuda:N | jetson
    formats: list[str] = ["torch", "onnx", "onnx_int8", "openvino", "openvino_int8"]
    benchmarks: list[str] | None = None  # null: data.benchmarks
    batch_sizes: list[int] = [1, 32]
    warmup: int = Field(default=10, ge=0)
    runs: int = Field(default=50, ge=1)
    threads: int = Field(default=1, ge=1)
    floors: dict[str, float] = {}  # e.g. {lfw: 0.99}: exit non-zero when any artifact scores below


class PipelineConfig(Section):
    run: RunConfig = RunConfig()
    data: DataConfig = DataConfig()
    teacher: TeacherConfig = TeacherConfig()
    distill: DistillConfig = DistillConfig()
    quantize: QuantizeConfig = QuantizeConfig()
    export: ExportConfig = ExportConfig()
    bench: BenchConfig = BenchConfig()

    # Where the config file lives; relative paths (run.dir, data.root) resolve against it.
    base_dir: Path = Field(default=Path("."), exclude=True)

    @field_validator("base_dir")
    @classmethod
    def _abs(cls, v: Path) -> Path:
        return v.resolve()

    # --- resolved paths -------------------------------------------------------------------------
    def run_dir(self) -> Path:
        d = self.run.dir if self.run.dir.is_absolute() else self.base_dir / self.run.dir
        return d / self.run.name

    def data_free(self) -> bool:
        """True when no face data is configured (data.root null and $FACEPIPE_DATA empty): the pipeline then
        distils on generated faces and scores by agreement with the teacher (pipeline/data/synthetic/datafree.py)."""
        return self.data.root is None and not os.environ.get(DATA_ENV)

    def data_root(self, required: bool = True) -> Path | None:
        """The data root: data.root, else $FACEPIPE_DATA. Raises ConfigError when required and unset."""
        root = self.data.root
        if root is None and os.environ.get(DATA_ENV):
            root = Path(os.environ[DATA_ENV])
        if root is None:
            if required:
                raise ConfigError(f"data.root is not set and ${DATA_ENV} is empty: set one to the folder "
                                  "holding lfw/, celeba-train/ ... (e.g. export FACEPIPE_DATA=../shared/data)")
            return None
        root = root if root.is_absolute() else self.base_dir / root
        if required and not root.is_dir():
            raise ConfigError(f"data root {root} (data.root / ${DATA_ENV}) is not a directory")
        return root

    def train_path(self) -> Path:
        """data.train as a path (relative ones under the data root)."""
        p = Path(self.data.train)
        return p if p.is_absolute() else self.data_root() / p

    def student_init_path(self) -> Path | None:
        """distill.student.init as a path (relative ones against the config's folder), or None."""
        p = self.distill.student.init
        if p is None:
            return None
        p = Path(p).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    def section(self, name: str) -> Any:
        """JSON-able dump of a section or a dotted key such as "data.train" (what a fingerprint covers)."""
        node: Any = self
        for part in name.split("."):
            node = getattr(node, part)
        return node.model_dump(mode="json") if isinstance(node, BaseModel) else \
            (str(node) if isinstance(node, Path) else node)


SECTIONS = [n for n in PipelineConfig.model_fields if n != "base_dir"]


# --- loading and overrides ----------------------------------------------------------------------
def _fields_at(loc: tuple) -> list[str]:
    """Field names of the model reached by following `loc` from PipelineConfig (for did-you-mean)."""
    model: Any = PipelineConfig
    for part in loc:
        if isinstance(part, int):
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        for cand in (ann, *getattr(ann, "__args__", ())):
            if isinstance(cand, type) and issubclass(cand, BaseModel):
                model = cand
                break
            inner = getattr(cand, "__args__", ())
            sub = [a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)]
            if sub:
                model = sub[0]
                break
        else:
            return []
    return [n for n in getattr(model, "model_fields", {}) if n != "base_dir"]


def _format_error(err: dict, origin: str) -> str:
    loc = tuple(err["loc"])
    path = ".".join(str(p) for p in loc)
    if err["type"] == "extra_forbidden":
        known = _fields_at(loc[:-1])
        hint = difflib.get_close_matches(str(loc[-1]), known, n=1)
        tip = f" (did you mean {'.'.join(map(str, loc[:-1] + (hint[0],)))!r}?)" if hint else \
            (f" (known keys: {', '.join(known)})" if known else "")
        return f"{origin}: unknown key {path!r}{tip}"
    return f"{origin}: {path}: {err['msg']} (got {err.get('input')!r})"


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=c` -> (["a", "b"], yaml value of c)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set distill.lr=0.05")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({e.__class__.__name__})") from None
    return parts, value


def apply_override(tree: dict, parts: list[str], value: Any) -> None:
    node = tree
    for p in parts[:-1]:
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {'.'.join(parts)}: {p!r} is not a section")
        node = nxt
    node[parts[-1]] = value


def read_yaml(path: Path) -> dict:
    """Parse a YAML mapping, with the file, line and column on syntax errors."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found (pass -c PATH)") from None
    except OSError as e:
        raise ConfigError(f"config file {path}: cannot read ({e.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}: YAML syntax error: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections ({', '.join(SECTIONS)})")
    return data


def _origin_of(loc: tuple, set_keys: list[tuple[tuple[str, ...], str]], origin: str) -> str:
    """Blame the last --set whose key covers the error's location, else the file (or defaults)."""
    loc = tuple(str(p) for p in loc)
    for parts, text in reversed(set_keys):
        n = min(len(parts), len(loc))
        if parts[:n] == loc[:n]:
            return f"--set {text}"
    return origin


# Named override sets applied before the user's --set (which still win). `smoke` runs the whole chain in a
# few minutes on 2 CPU cores: LFW's first fold, 60 distillation steps at lr 0.1 with the teacher online (no train
# cache), a short QAT, a short latency run. Its numbers check that the chain works, not how good a model is.
# Its int8 exports match their fake-quant model to cosine ~0.9975 (min over 16 faces; a 2-epoch student
# 0.9994): a 60-step student amplifies one rounding difference more, so its int8 gate is 0.995, not 0.999.
PRESETS: dict[str, tuple[str, ...]] = {
    "smoke": (
        "run.name=smoke", "data.benchmarks=[lfw@1]", "teacher.check=[lfw@1]", "teacher.cache=false",
        "distill.losses=[{name: feature_kd, weight: 1.0}]", "distill.steps=60", "distill.lr=0.1",
        "distill.batch_size=32", "distill.augment={flip: false}",
        "distill.warmup_epochs=0", "distill.tensorboard=false", "distill.best_metric=lfw@1_accuracy",
        "quantize.images=64", "quantize.calib_images=32", "quantize.steps=5", "quantize.batch_size=16",
        "quantize.freeze_after=3", "export.parity_faces=16", "export.int8_cos_floor=0.995", "bench.runs=10", "bench.warmup=2",
        "bench.batch_sizes=[1, 8]",
    ),
}


def preset_overrides(name: str | None) -> list[str]:
    """The --set overrides of a named preset (ConfigError naming the known ones)."""
    if not name:
        return []
    if name not in PRESETS:
        hint = difflib.get_close_matches(name, list(PRESETS), n=1)
        raise ConfigError(f"unknown preset {name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "") +
                          f"; known: {', '.join(PRESETS)}")
    return list(PRESETS[name])


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = (),
                preset: str | None = None) -> PipelineConfig:
    """Load pipeline.yaml (or defaults when path is None), apply a preset, then overrides, validate."""
    overrides = preset_overrides(preset) + list(overrides)
    tree: dict = {}
    origin = "defaults"
    base = Path.cwd()
    if path is not None:
        p = Path(path)
        tree = read_yaml(p)
        origin = str(p)
        base = p.resolve().parent
    set_keys: list[tuple[tuple[str, ...], str]] = []
    for ov in overrides:
        parts, value = parse_override(ov)
        apply_override(tree, parts, value)
        set_keys.append((tuple(parts), ov))
    if "base_dir" in tree:
        raise ConfigError(f"{origin}: unknown key 'base_dir'")
    try:
        return PipelineConfig(**tree, base_dir=base)
    except ValidationError as e:
        lines = [_format_error(err, _origin_of(err["loc"], set_keys, origin)) for err in e.errors()]
        raise ConfigError(lines[0] + (f" (+{len(lines) - 1} more: {'; '.join(lines[1:3])})" if len(lines) > 1 else "")) from None
    except TypeError as e:
        raise ConfigError(f"{origin}: {e}") from None


def dump_config(cfg: PipelineConfig) -> str:
    """The resolved config as YAML."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
