"""What every exported artifact carries about itself, whatever its container (ONNX metadata_props,
OpenVINO rt_info, TensorRT sidecar JSON, TorchScript extra file): preprocessing, embedding size, the
student's fingerprint, the format key and the sha256 of the checkpoint it was exported from."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Mapping

from facepipe.pipeline.embedder import (META_EMBEDDING_SIZE, META_FINGERPRINT, META_PREPROCESS, Preprocess,
                                        parse_onnx_metadata, write_onnx_metadata)
from facepipe.pipeline.errors import ModelError

META_FORMAT = "facepipe.format"
META_SOURCE_SHA256 = "facepipe.source_sha256"
META_ARCH = "facepipe.arch"
REQUIRED = (META_PREPROCESS, META_EMBEDDING_SIZE)


@dataclass(frozen=True)
class ArtifactMeta:
    preprocess: Preprocess
    embedding_size: int
    fingerprint: str
    format: str
    source_sha256: str = ""
    arch: str = ""

    def to_props(self) -> dict[str, str]:
        """String key/values (the facepipe.* names of ONNX metadata_props)."""
        return {META_PREPROCESS: json.dumps(self.preprocess.to_dict(), sort_keys=True),
                META_EMBEDDING_SIZE: str(int(self.embedding_size)), META_FINGERPRINT: str(self.fingerprint),
                META_FORMAT: self.format, META_SOURCE_SHA256: self.source_sha256, META_ARCH: self.arch}

    def to_dict(self) -> dict:
        return {"preprocess": self.preprocess.to_dict(), "embedding_size": int(self.embedding_size),
                "fingerprint": self.fingerprint, "format": self.format, "source_sha256": self.source_sha256,
                "arch": self.arch}

    @classmethod
    def from_props(cls, props: Mapping[str, str], where: str) -> "ArtifactMeta":
        """Parse facepipe.* props; ModelError naming the file and every missing key."""
        missing = [k for k in REQUIRED if not props.get(k)]
        if missing:
            raise ModelError(f"{where}: facepipe metadata {', '.join(missing)} missing: this artifact was not "
                             "exported by facepipe (or was stripped); re-export it with `facepipe export`")
        parsed = parse_onnx_metadata(dict(props), where)
        return cls(parsed["preprocess"], parsed["embedding_size"], parsed["fingerprint"] or "",
                   props.get(META_FORMAT, ""), props.get(META_SOURCE_SHA256, ""), props.get(META_ARCH, ""))

    @classmethod
    def from_dict(cls, d: Mapping, where: str) -> "ArtifactMeta":
        """Inverse of to_dict (sidecar JSON); ModelError naming missing keys."""
        missing = [k for k in ("preprocess", "embedding_size") if d.get(k) in (None, "")]
        if missing:
            raise ModelError(f"{where}: facepipe metadata {', '.join(missing)} missing; re-export the artifact")
        try:
            pre, dim = Preprocess.from_dict(d["preprocess"]), int(d["embedding_size"])
        except (TypeError, ValueError) as e:
            raise ModelError(f"{where}: facepipe metadata is invalid ({e})") from None
        return cls(pre, dim, str(d.get("fingerprint") or ""), str(d.get("format") or ""),
                   str(d.get("source_sha256") or ""), str(d.get("arch") or ""))


def stamp_onnx(proto, meta: ArtifactMeta):
    """Write `meta` into an onnx.ModelProto's metadata_props (replacing facepipe.* values); returns it."""
    extra = {META_FORMAT: meta.format, META_SOURCE_SHA256: meta.source_sha256, META_ARCH: meta.arch}
    return write_onnx_metadata(proto, meta.preprocess, meta.embedding_size, meta.fingerprint, extra=extra)


def check_output_dim(meta: ArtifactMeta, graph_dim: int | None, where: str) -> None:
    """ModelError when the declared embedding size disagrees with the graph's static output size."""
    if graph_dim is not None and graph_dim != meta.embedding_size:
        raise ModelError(f"{where}: metadata declares {meta.embedding_size}-d embeddings but the graph outputs "
                         f"{graph_dim}-d: the metadata is inconsistent, re-export the artifact")
