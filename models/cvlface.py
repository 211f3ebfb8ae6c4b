"""CVLFace IR recognition networks, built from a Hugging Face repo's pretrained_model/model.yaml.

Two families appear in CVLFace (mk-minchul/CVLface, cvlface/research/recognition/code/run_v1/models/):
- `models/iresnet/` (the AdaFace IR hub models, e.g. cvlface_adaface_ir101_webface12m): a Backbone with
  `input_layer` (conv3x3 + BN + PReLU), `body` (BasicBlockIR units: `shortcut_layer`, `res_layer` =
  BN, conv3x3, BN, PReLU, conv3x3/stride, BN) and `output_layer`
  (BN2d, Dropout, Flatten, Linear(512*7*7), BatchNorm1d(affine=False)). Rebuilt here with the same
  module names so the weights load strictly.
- `models/iresnet_insightface/`: insightface's IResNet (conv1/bn1/prelu/layer1..4/bn2/fc/features),
  which is `facepipe.models.iresnet` -> built through the architecture registry.

The network sits under `.net` like CVLFace's IResNetModel, so the hub's model.safetensors keys
(`model.net.*`) load after stripping the `model.` prefix. color_space BGR means the network was trained on
BGR and flips RGB input itself, as CVLFace's BaseModel does; the caller always feeds RGB.
Only the IR names CVLFace's from_config knows (ir18, ir50, ir101) are accepted; ViT / Swin / KPRPE models
(keypoint inputs) and the IR-SE / ir152+ bottleneck variants are not rebuilt here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from .mobilefacenet import kaiming_init

# Units per stage, from CVLFace get_blocks(num_layers).
IR_UNITS: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
}
# model.yaml `name` -> depth, as CVLFace's from_config maps them.
IR_NAMES = {"ir18": 18, "ir50": 50, "ir101": 100}
# iresnet_insightface family: model.yaml name -> facepipe architecture name.
INSIGHTFACE_NAMES = {"ir18": "iresnet18", "ir50": "iresnet50", "ir101": "iresnet100"}
WIDTHS = (64, 128, 256, 512)


class BasicBlockIR(nn.Module):
    """res_layer(x) + shortcut(x); the stride sits on the second 3x3 conv."""

    def __init__(self, c_in: int, depth: int, stride: int):
        super().__init__()
        if c_in == depth:
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(c_in, depth, 1, stride, bias=False), nn.BatchNorm2d(depth))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(c_in), nn.Conv2d(c_in, depth, 3, 1, 1, bias=False), nn.BatchNorm2d(depth),
            nn.PReLU(depth), nn.Conv2d(depth, depth, 3, stride, 1, bias=False), nn.BatchNorm2d(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class Flatten(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.size(0), -1)


class IRBackbone(nn.Module):
    """CVLFace `models/iresnet` Backbone (mode 'ir') for 112x112 input, depths 18/34/50/100."""

    def __init__(self, depth: int, output_dim: int = 512):
        super().__init__()
        if depth not in IR_UNITS:
            raise ValueError(f"unsupported IR depth {depth}; supported: {sorted(IR_UNITS)}")
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        units, c_in = [], 64
        for width, n in zip(WIDTHS, IR_UNITS[depth]):
            units.append(BasicBlockIR(c_in, width, 2))
            units += [BasicBlockIR(width, width, 1) for _ in range(n - 1)]
            c_in = width
        self.body = nn.Sequential(*units)
        self.output_layer = nn.Sequential(nn.BatchNorm2d(512), nn.Dropout(0.4), Flatten(),
                                          nn.Linear(512 * 7 * 7, output_dim), nn.BatchNorm1d(output_dim, affine=False))
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_layer(self.body(self.input_layer(x)))


class CVLFaceRecognizer(nn.Module):
    """CVLFace's model wrapper: `.net`, and a channel flip when the network was trained on BGR."""

    def __init__(self, net: nn.Module, input_color_flip: bool = False):
        super().__init__()
        self.net = net
        self.input_color_flip = bool(input_color_flip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_color_flip:
            x = x.flip(1)
        return self.net(x)


def family(conf: dict[str, Any]) -> str:
    """Model family from model.yaml's yaml_path ('models/<family>/configs/...'); 'iresnet' when absent."""
    parts = [p for p in str(conf.get("yaml_path") or "models/iresnet/").split("/") if p]
    return parts[parts.index("models") + 1] if "models" in parts[:-1] else (parts[0] if parts else "")


def build_cvlface(conf: dict[str, Any]) -> CVLFaceRecognizer:
    """Build the network a CVLFace model.yaml describes; ValueError (with what is supported) otherwise."""
    name = str(conf.get("name", ""))
    output_dim = int(conf.get("output_dim", 512))
    size = conf.get("input_size", [3, 112, 112])
    if list(size)[-2:] != [112, 112]:
        raise ValueError(f"input_size {size}: only 112x112 CVLFace models are supported")
    fam = family(conf)
    if fam == "iresnet":
        if name not in IR_NAMES:
            raise ValueError(f"CVLFace iresnet name {name!r} not supported (supported: {sorted(IR_NAMES)})")
        net: nn.Module = IRBackbone(IR_NAMES[name], output_dim=output_dim)
    elif fam == "iresnet_insightface":
        if name not in INSIGHTFACE_NAMES:
            raise ValueError(f"CVLFace iresnet_insightface name {name!r} not supported "
                             f"(supported: {sorted(INSIGHTFACE_NAMES)})")
        from .registry import build_model

        net = build_model(INSIGHTFACE_NAMES[name], embedding_size=output_dim)
    else:
        raise ValueError(f"CVLFace model family {fam!r} (yaml_path {conf.get('yaml_path')!r}) is not supported: "
                         "only IR networks (models/iresnet, models/iresnet_insightface) can be rebuilt")
    flip = str(conf.get("color_space", "RGB")).upper() == "BGR"
    return CVLFaceRecognizer(net, input_color_flip=flip).eval()
