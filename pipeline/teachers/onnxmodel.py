"""ONNX teachers: one .onnx file (insightface model-zoo conventions when it declares no preprocessing), or an
insightface model-pack folder (the recognition model among its .onnx files)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ..embedder import (Embedder, OnnxRuntimeEmbedder, Preprocess, onnx_external_files, ort_providers,
                        parse_onnx_metadata)
from ..errors import ModelError, first_line
from .base import TEACHER_SOURCES, TeacherSource, declare_preprocess, require_file
from .insightface_loader import LOADERS, InsightFaceZooEmbedder, import_insightface, insightface_version


# --- onnx ------------------------------------------------------------------------------------------
def _graph_io(proto) -> tuple[list, list]:
    """(inputs, outputs) as (name, shape) with initializers removed from the inputs; dims are int or str."""
    inits = {t.name for t in proto.graph.initializer}

    def shape(v):
        dims = v.type.tensor_type.shape.dim
        return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]

    ins = [(v.name, shape(v)) for v in proto.graph.input if v.name not in inits]
    outs = [(v.name, shape(v)) for v in proto.graph.output]
    return ins, outs


def insightface_mean_std(proto) -> tuple[float, float]:
    """insightface ArcFaceONNX's rule: Sub and Mul among the first 8 node names -> the graph normalises
    itself (mean 0, std 1, mxnet-converted models); otherwise mean 127.5, std 127.5."""
    find_sub = find_mul = False
    for node in proto.graph.node[:8]:
        if node.name.startswith("Sub") or node.name.startswith("_minus"):
            find_sub = True
        if node.name.startswith("Mul") or node.name.startswith("_mul"):
            find_mul = True
    return (0.0, 1.0) if (find_sub and find_mul) else (127.5, 127.5)


def _load_proto(path: Path):
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise ModelError(f"{path}: not a readable ONNX model ({first_line(e)})") from None


class _OnnxLoaders:
    """Both ONNX kinds load through facepipe's OnnxRuntimeEmbedder (teacher.loader: facepipe) or through
    insightface's model_zoo.get_model (teacher.loader: insightface, which then enters the fingerprint)."""

    loaders: ClassVar[tuple[str, ...]] = LOADERS

    def check_loader(self) -> "_OnnxLoaders":
        if self.cfg.loader == "insightface":
            import_insightface()  # not installed: one line naming teacher.loader and `make insightface`
        return self

    def identity_extra(self) -> dict:
        if self.cfg.loader == "facepipe":
            return {}
        return {"loader": self.cfg.loader, "insightface": insightface_version()}

    def load(self, device: str = "cpu", threads: int | None = None) -> Embedder:
        if self.cfg.loader == "facepipe":
            return OnnxRuntimeEmbedder(self.files[0], preprocess=self.preprocess, name=self.name,
                                       providers=ort_providers(device), threads=threads)
        emb = InsightFaceZooEmbedder(self.files[0], name=self.name, device=device, threads=threads)
        if emb.preprocess != self.preprocess:
            raise ModelError(f"teacher.loader=insightface: insightface's model_zoo reads {self.files[0]} as "
                             f"{emb.preprocess.describe()}, but {self.declared_by} gives "
                             f"{self.preprocess.describe()}; remove that declaration, or set teacher.loader: "
                             "facepipe to use it")
        return emb


@dataclass
class OnnxTeacher(_OnnxLoaders, TeacherSource):
    kind: ClassVar[str] = "onnx"

    @classmethod
    def claims(cls, source, path):
        return path.is_file() and path.suffix.lower() == ".onnx"

    @classmethod
    def from_config(cls, cfg, source):
        path = require_file(Path(source), "ONNX file")
        return cls.from_onnx(cfg, path, path.stem)

    @classmethod
    def from_onnx(cls, cfg, path: Path, name: str, proto=None) -> "OnnxTeacher":
        proto = proto if proto is not None else _load_proto(path)
        meta = parse_onnx_metadata({p.key: p.value for p in proto.metadata_props}, str(path))
        # insightface model-zoo convention: blobFromImages(swapRB=True) feeds RGB, mean/std by graph rule.
        mean, std = insightface_mean_std(proto)
        ins, _ = _graph_io(proto)
        dims = ins[0][1] if ins else []
        known = len(dims) == 4 and isinstance(dims[2], int) and dims[2] > 0
        rule = (f"insightface's model-zoo rule: RGB, mean {mean:g} std {std:g} "
                f"({'Sub and Mul among the first nodes' if std == 1.0 else 'no normalisation nodes at the start'})"
                f", size {'from the graph input' if known else '112 (the input size is dynamic)'}")
        guess = (Preprocess(size=dims[2] if known else 112, color="RGB", mean=(mean,) * 3, std=(std,) * 3), rule,
                 frozenset({"size"}) if known else frozenset())
        files = [path, *onnx_external_files(path, proto)]  # the weights file is part of the teacher
        declared = declare_preprocess(path, meta["preprocess"], "ONNX metadata", cfg.preprocess, guess, str(path))
        return cls(cfg, name, files, declared.preprocess).with_declared(declared).check_loader()


TEACHER_SOURCES.register("onnx", OnnxTeacher)


# --- insightface model pack ------------------------------------------------------------------------
def is_recognition_onnx(proto) -> bool:
    """One image input (N, 3, 112, 112) and one rank-2 output: a recognition model, not det/landmark/attr."""
    ins, outs = _graph_io(proto)
    return (len(ins) == 1 and len(ins[0][1]) == 4 and ins[0][1][1:] == [3, 112, 112]
            and len(outs) == 1 and len(outs[0][1]) == 2)


@dataclass
class InsightFaceTeacher(_OnnxLoaders, TeacherSource):
    kind: ClassVar[str] = "insightface"
    claim_order: ClassVar[int] = 60

    @classmethod
    def claims(cls, source, path):
        return path.is_dir() and any(path.glob("*.onnx"))

    @classmethod
    def from_config(cls, cfg, source):
        pack = Path(source)
        if not pack.is_dir():
            raise ModelError(f"teacher.source {pack}: an insightface model pack must be a directory of .onnx files")
        candidates = sorted(pack.glob("*.onnx"))
        home = pack.resolve()
        for p in candidates:
            if not p.resolve().is_relative_to(home):  # a symlink out of the pack is not part of it
                raise ModelError(f"{pack}: {p.name} is a link to {p.resolve()}, outside the model pack; copy the "
                                 "file into the pack (facepipe reads only what a pack folder holds)")
        if not candidates:
            raise ModelError(f"{pack}: no .onnx files in this insightface model pack")
        found = []
        for p in candidates:
            proto = _load_proto(p)
            if is_recognition_onnx(proto):
                found.append((p, proto))
        if not found:
            raise ModelError(f"{pack}: none of {[p.name for p in candidates]} is a recognition model "
                             "(one 3x112x112 input, one vector output)")
        if len(found) > 1:
            raise ModelError(f"{pack}: several recognition models {[p.name for p, _ in found]}; "
                             "point teacher.source at one of them")
        path, proto = found[0]
        src = OnnxTeacher.from_onnx(cfg, path, f"{pack.name}/{path.stem}", proto)
        return cls(cfg, src.name, src.files, src.preprocess, src.declared, src.declared_by, src.guess)


TEACHER_SOURCES.register("insightface", InsightFaceTeacher)

