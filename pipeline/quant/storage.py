"""Saving and loading QuantizedModels: a torch checkpoint (+ quant_spec.json) and a compact bit-packed file.

Packed layout ("facepipe.packed/1"): MAGIC, uint32 little-endian header length, UTF-8 JSON header, then a
data section addressed by [offset, nbytes] pairs in the header: per layer the weight codes bit-packed at b
bits each (u = q + 2^(b-1), LSB first, so 6-bit stores 4 codes in 3 bytes), float32 per-channel scales,
int8 ONNX zero points (asymmetric weights only), float32 bias; then the remaining float32 tensors (PReLU
slopes, ...). Activation ranges are float32 values written as JSON numbers (exact round trip).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch
from facepipe.pipeline.errors import ModelError, first_line
from facepipe.pipeline.io import atomic_torch_save, atomic_write_bytes, atomic_write_json

from facepipe.models.quant.formulas import dequantize, qrange, to_onnx_qparams
from facepipe.models.quant.prepare import QuantizedModel, prepare_quantized

FORMAT = "facepipe.quantized/1"
PACKED_FORMAT = "facepipe.packed/1"
MAGIC = b"FPQPACK1"
SPEC_NAME = "quant_spec.json"
_SETTING_KEYS = ("wbits", "abits", "weight_symmetric", "act_symmetric")


def _identity(qmodel: QuantizedModel, meta: dict) -> tuple[str, int, dict]:
    """(arch, embedding_size, preprocess) from meta, else from the model; ModelError when unknown."""
    from facepipe.pipeline.embedder import Preprocess

    arch = meta.get("arch") or qmodel.arch
    emb = meta.get("embedding_size") or qmodel.embedding_size
    if not arch or not emb:
        raise ModelError("cannot save the quantized model: its architecture / embedding size are unknown; "
                         "pass meta={'arch': ..., 'embedding_size': ...} (a registry name, e.g. 'mobilefacenet')")
    pre = meta.get("preprocess") or qmodel.preprocess or Preprocess().to_dict()
    return str(arch), int(emb), Preprocess.from_dict(dict(pre)).to_dict()


def _rebuild(arch: str, emb: int, settings: dict, source: Path, arch_kwargs: dict | None = None) -> QuantizedModel:
    """The QuantizedModel a checkpoint describes, rebuilt from the registry (arch_kwargs: an imported graph's
    spec) with its per-layer bits; weights are loaded afterwards."""
    from facepipe.models.registry import build_model

    try:
        kwargs = {k: settings[k] for k in _SETTING_KEYS}
    except (KeyError, TypeError):
        raise ModelError(f"{source}: quantization settings are missing or incomplete "
                         f"(need {', '.join(_SETTING_KEYS)}); re-run the quantize stage") from None
    extra = dict(arch_kwargs or {})
    return prepare_quantized(build_model(arch, embedding_size=emb, **extra), arch=arch, embedding_size=emb,
                             layer_bits=settings.get("layer_bits") or None, arch_kwargs=extra or None, **kwargs)


def save_quantized(path: str | Path, qmodel: QuantizedModel, meta: dict | None = None, spec: bool = True) -> Path:
    """Write a weights_only-loadable checkpoint atomically, and (spec) quant_spec.json beside it."""
    meta = json.loads(json.dumps(meta or {}))  # must be JSON-able: it goes into manifests too
    arch, emb, pre = _identity(qmodel, meta)
    path = Path(path)
    ckpt = {"format": FORMAT, "arch": arch, "embedding_size": emb, "preprocess": pre,
            "settings": qmodel.settings(), "arch_kwargs": qmodel.arch_kwargs or {},
            "state_dict": {k: v.detach().cpu().clone() for k, v in qmodel.state_dict().items()}, "meta": meta}
    atomic_torch_save(path, ckpt)
    if spec:
        atomic_write_json(path.parent / SPEC_NAME, {**qmodel.spec(), "arch": arch, "embedding_size": emb})
    return path


def load_quantized(path: str | Path) -> tuple[QuantizedModel, dict]:
    """Rebuild a QuantizedModel (eval, not observing) through the model registry; returns (model, meta)."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelError(f"quantized checkpoint {path} not found: run the quantize stage first") from None
    except Exception as e:  # noqa: BLE001 - torch.load fails in many ways on foreign files
        raise ModelError(f"{path} is not a readable torch checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ModelError(f"{path} is not a quantized facepipe model (format {found!r}, expected {FORMAT!r})")
    qmodel = _rebuild(ckpt["arch"], ckpt["embedding_size"], ckpt["settings"], path, ckpt.get("arch_kwargs"))
    try:
        qmodel.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as e:
        raise ModelError(f"{path} does not match architecture {ckpt['arch']!r} "
                         f"(embedding {ckpt['embedding_size']}): {first_line(e)}") from None
    qmodel.preprocess = ckpt["preprocess"]
    qmodel.set_observing(False)
    return qmodel.eval(), ckpt.get("meta", {})


def pack_codes(codes: np.ndarray, bits: int) -> bytes:
    """Bit-pack signed b-bit codes: ceil(n * b / 8) bytes."""
    lo, hi = qrange(bits)
    u = codes.astype(np.int64).ravel() - lo
    if u.size and (u.min() < 0 or u.max() > hi - lo):
        raise ValueError(f"codes outside the {bits}-bit range [{lo}, {hi}]")
    planes = ((u[:, None] >> np.arange(bits)) & 1).astype(np.uint8)
    return np.packbits(planes.ravel(), bitorder="little").tobytes()


def unpack_codes(data: bytes, bits: int, count: int) -> np.ndarray:
    """Inverse of pack_codes: int8 codes (flat)."""
    lo, _ = qrange(bits)
    planes = np.unpackbits(np.frombuffer(data, np.uint8), count=count * bits, bitorder="little")
    u = planes.reshape(count, bits).astype(np.int64) @ (1 << np.arange(bits))
    return (u + lo).astype(np.int8)


class _Blobs:
    """Accumulates the data section and hands out [offset, nbytes] records."""

    def __init__(self):
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, data: bytes) -> list[int]:
        rec = [self.size, len(data)]
        self.parts.append(data)
        self.size += len(data)
        return rec


def write_packed(path: str | Path, qmodel: QuantizedModel) -> Path:
    """Write the compact bit-packed file (see module docstring); returns the path."""
    arch, emb, pre = _identity(qmodel, {})
    blobs, layers, covered = _Blobs(), [], set()
    f32 = lambda t: np.ascontiguousarray(t.detach().cpu().numpy(), np.float32).tobytes()
    with torch.no_grad():
        for name, m in qmodel.quant_layers().items():
            wq, aq = m.weight_quant, m.input_quant
            s, zp = to_onnx_qparams(*wq.qparams(m.weight))
            layers.append({
                "name": name, "kind": m.kind, "shape": list(m.weight.shape), "bits": wq.bits,
                "symmetric": wq.symmetric, "codes": blobs.add(pack_codes(wq.codes(m.weight).numpy(), wq.bits)),
                "scale": blobs.add(s.astype(np.float32).tobytes()),
                "zero_point": None if wq.symmetric else blobs.add(zp.tobytes()),
                "bias": None if m.bias is None else blobs.add(f32(m.bias)),
                "input": {"bits": aq.bits, "symmetric": aq.symmetric, "min": float(aq.min_val),
                          "max": float(aq.max_val), "initialized": bool(aq.initialized), "frozen": bool(aq.frozen)},
            })
            covered.update(f"net.{name}.{k}" for k, _ in m.state_dict().items())
        tensors = []
        for key, t in qmodel.state_dict().items():
            if key in covered:
                continue
            if not t.is_floating_point():
                raise ModelError(f"cannot pack state entry '{key}' ({t.dtype}): only float tensors are supported")
            tensors.append({"name": key, "shape": list(t.shape), "data": blobs.add(f32(t))})
    header = {"format": PACKED_FORMAT, "arch": arch, "embedding_size": emb, "preprocess": pre,
              "settings": qmodel.settings(), "arch_kwargs": qmodel.arch_kwargs or {}, "layers": layers,
              "tensors": tensors}
    head = json.dumps(header, separators=(",", ":")).encode()
    return atomic_write_bytes(path, MAGIC + struct.pack("<I", len(head)) + head + b"".join(blobs.parts))


def read_packed(path: str | Path) -> dict[str, Any]:
    """Parse a packed file: header fields plus, per layer, int8 codes (weight shape), scale, zero_point (z,
    our convention), bias, input params; and 'tensors' {state key: float32 array}."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ModelError(f"packed model {path} not found") from None
    if raw[:len(MAGIC)] != MAGIC:
        raise ModelError(f"{path} is not a facepipe packed model (bad magic); write it with write_packed")
    (n,) = struct.unpack("<I", raw[len(MAGIC):len(MAGIC) + 4])
    start = len(MAGIC) + 4
    header = json.loads(raw[start:start + n].decode())
    data = memoryview(raw)[start + n:]
    blob = lambda rec: bytes(data[rec[0]:rec[0] + rec[1]])
    layers = {}
    for L in header["layers"]:
        count = int(np.prod(L["shape"]))
        scale = np.frombuffer(blob(L["scale"]), np.float32).copy()
        zp = (np.zeros(scale.shape, np.int8) if L["zero_point"] is None
              else np.frombuffer(blob(L["zero_point"]), np.int8))
        layers[L["name"]] = {
            "kind": L["kind"], "shape": L["shape"], "bits": L["bits"], "symmetric": L["symmetric"],
            "codes": unpack_codes(blob(L["codes"]), L["bits"], count).reshape(L["shape"]),
            "scale": scale, "zero_point": -zp.astype(np.float32) + 0.0,
            "bias": None if L["bias"] is None else np.frombuffer(blob(L["bias"]), np.float32).copy(),
            "input": L["input"]}
    tensors = {t["name"]: np.frombuffer(blob(t["data"]), np.float32).reshape(t["shape"]).copy()
               for t in header["tensors"]}
    return {**{k: header[k] for k in ("format", "arch", "embedding_size", "preprocess", "settings")},
            "arch_kwargs": header.get("arch_kwargs") or {},
            "layers": layers, "tensors": tensors}


def load_packed(path: str | Path) -> QuantizedModel:
    """Rebuild a QuantizedModel from a packed file; its outputs equal the packed model's bit for bit."""
    path = Path(path)
    pk = read_packed(path)
    if pk["format"] != PACKED_FORMAT:
        raise ModelError(f"{path}: unsupported packed format {pk['format']!r} (expected {PACKED_FORMAT!r})")
    qmodel = _rebuild(pk["arch"], pk["embedding_size"], pk["settings"], path, pk["arch_kwargs"])
    state = {k: v.clone() for k, v in qmodel.state_dict().items()}
    layers = qmodel.quant_layers()
    if set(layers) != set(pk["layers"]):
        missing = sorted(set(layers) ^ set(pk["layers"]))[:3]
        raise ModelError(f"{path} does not match architecture {pk['arch']!r}: layers differ ({missing} ...)")
    for name, L in pk["layers"].items():
        if list(layers[name].weight.shape) != list(L["shape"]):
            raise ModelError(f"{path}: layer '{name}' has shape {L['shape']}, "
                             f"architecture {pk['arch']!r} expects {list(layers[name].weight.shape)}")
        s, z = torch.from_numpy(L["scale"]), torch.from_numpy(L["zero_point"])
        p = f"net.{name}."
        # the same expression the fake quantizer uses, so re-quantizing returns exactly these codes
        state[p + "weight"] = dequantize(torch.from_numpy(L["codes"]), s, z, axis=0)
        state.update({p + "weight_quant.scale": s, p + "weight_quant.zero_point": z,
                      p + "weight_quant.frozen": torch.tensor(True)})
        if L["bias"] is not None:
            state[p + "bias"] = torch.from_numpy(L["bias"])
        a = L["input"]
        state.update({p + "input_quant.min_val": torch.tensor(a["min"], dtype=torch.float32),
                      p + "input_quant.max_val": torch.tensor(a["max"], dtype=torch.float32),
                      p + "input_quant.initialized": torch.tensor(bool(a["initialized"])),
                      p + "input_quant.frozen": torch.tensor(bool(a["frozen"]))})
    for key, arr in pk["tensors"].items():
        if key not in state or list(state[key].shape) != list(arr.shape):
            raise ModelError(f"{path}: tensor '{key}' {list(arr.shape)} does not fit architecture {pk['arch']!r}")
        state[key] = torch.from_numpy(arr)
    qmodel.load_state_dict(state, strict=True)
    qmodel.preprocess = pk["preprocess"]
    qmodel.set_observing(False)
    return qmodel.eval()
