"""The fast training data path (issue 17): batched augmentation and cached views, the decoded memmap, the
teacher cache's views and their lookup, the compile choice and the step-time split."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from facepipe.pipeline.config import AugmentConfig
from facepipe.pipeline.errors import ConfigError, DataError
from facepipe.pipeline.eval.cache import TeacherCache, cache_key
from facepipe.pipeline.data import views as V
from facepipe.pipeline.train.data import BatchReader
from facepipe.pipeline.train.decoded import decode_training_set, decoded_key
from facepipe.pipeline.train.sampler import ShardPlan
from facepipe.pipeline.train.targets import CachedTargets, choose_teacher_mode
from facepipe.pipeline.train.trainer import COMPILE_MIN_STEPS, compile_choice

from train_synth import SynthFaces, make_trainer


def faces_of(source, n):
    return torch.from_numpy(np.stack([source.image(i) for i in range(n)]))


# --- rendering ---------------------------------------------------------------------------------------
def test_identity_parameters_return_the_faces_unchanged():
    faces = faces_of(SynthFaces(4, 2), 4)
    params = V.draw_params(V.ViewSpec(), [(i,) for i in range(4)])
    assert torch.equal(V.render(faces, params), faces)


def test_an_integer_shift_moves_pixels_and_replicates_the_edge():
    faces = faces_of(SynthFaces(2, 2), 2)
    params = np.array([[3, -2, 1, 1, 1], [0, 0, 1, 1, 1]], float)  # dx=3 right, dy=2 up
    out = V.render(faces, params)
    f = faces[0].numpy()
    want = np.pad(f, ((2, 2), (3, 3), (0, 0)), mode="edge")[4:4 + 112, 0:112]  # row y+2, column x-3
    assert np.array_equal(out[0].numpy(), want)
    assert torch.equal(out[1], faces[1])


def test_colour_jitter_follows_its_formula_and_scale_zooms_about_the_centre():
    faces = faces_of(SynthFaces(1, 1), 1)
    out = V.render(faces, np.array([[0, 0, 1, 1.2, 0.9]]))
    x = faces[0].float()
    want = ((x - x.mean()) * 1.2 + x.mean() * 0.9).round().clamp(0, 255).to(torch.uint8)
    assert torch.equal(out[0], want)
    big = V.render(faces, np.array([[0, 0, 2.0, 1, 1]]))[0].float()
    # zoom x2: the output centre pixel samples the input centre; a corner samples a quarter in
    assert not torch.equal(big, faces[0].float())
    assert torch.allclose(big[56, 56], x[56, 56], atol=60)


def test_view_parameters_depend_on_face_and_view_only():
    spec = V.ViewSpec(shift=4, scale=0.1, color=0.2)
    a = V.view_params(spec, np.array([5, 9]), np.array([1, 2]))
    b = V.view_params(spec, np.array([9, 5, 7]), np.array([2, 1, 1]))
    assert np.array_equal(a[0], b[1]) and np.array_equal(a[1], b[0])  # batch order does not matter
    assert not np.array_equal(V.view_params(spec, np.array([5]), np.array([1])),
                              V.view_params(spec, np.array([5]), np.array([2])))
    r1 = V.random_params(spec, 0, 3, np.array([5]))
    assert not np.array_equal(r1, V.random_params(spec, 0, 4, np.array([5])))  # fresh every epoch


def test_augment_batch_renders_views_then_mirrors_flagged_rows():
    spec = V.ViewSpec(shift=4, color=0.2)
    faces = faces_of(SynthFaces(3, 2), 3)
    index, view = np.array([0, 1, 2]), np.array([0, 2, 1])
    flip = torch.tensor([True, False, True])
    out = V.augment_batch(faces, index, flip, view, spec)
    assert torch.equal(out[0], faces[0].flip(1))  # view 0: the face itself, mirrored
    v2 = V.render(faces[1:2], V.view_params(spec, index[1:2], view[1:2]))[0]
    assert torch.equal(out[1], v2)
    v1 = V.render(faces[2:3], V.view_params(spec, index[2:3], view[2:3]))[0]
    assert torch.equal(out[2], v1.flip(1))
    assert not torch.equal(out[1], faces[1])  # the view really is augmented


# --- sampler and reader ----------------------------------------------------------------------------
def test_sampler_draws_a_view_per_sample_and_epoch_reproducibly():
    plan = ShardPlan(40, 8, seed=3, flip=True, views=3)
    keys = [k for b in plan.batches(0) for k in b]
    assert {k[3] for k in keys} == {0, 1, 2, 3}
    assert keys == [k for b in ShardPlan(40, 8, seed=3, flip=True, views=3).batches(0) for k in b]
    assert all(k[3] == 0 for b in ShardPlan(40, 8, seed=3, flip=True).batches(0) for k in b)
    # views=0 keeps the permutation and flips of before
    old = [(k[0], k[1]) for b in ShardPlan(40, 8, seed=3, flip=True).batches(1) for k in b]
    assert old == [(k[0], k[1]) for b in plan.batches(1) for k in b]


def test_reader_from_files_and_from_the_memmap_give_the_same_batch(tmp_path):
    src = SynthFaces(20, 4)
    labels = np.arange(20) % 4
    decoded = decode_training_set(src, tmp_path, show_progress=False)
    spec = V.ViewSpec(shift=3, color=0.1)
    keys = [(7, True, 0, 2), (3, False, 0, 0), (11, True, 0, 1)]
    a = BatchReader(src, labels, spec=spec)[keys]
    b = BatchReader(src, labels, decoded=decoded, spec=spec)[keys]
    for k in ("faces", "labels", "index", "flip", "view"):
        assert torch.equal(a[k], b[k]), k
    assert a["view"].tolist() == [2, 0, 1] and a["labels"].tolist() == [3, 3, 3]


# --- decoded memmap --------------------------------------------------------------------------------
class CountingFaces(SynthFaces):
    def __init__(self, *a, broken=(), **kw):
        super().__init__(*a, **kw)
        self.reads, self.broken = 0, set(broken)

    def image(self, i):
        self.reads += 1
        return None if i in self.broken else super().image(i)

    def describe(self, i):
        return f"faces/{i}.jpg"


def test_decoded_memmap_holds_the_faces_and_is_reused_without_decoding(tmp_path):
    src = CountingFaces(12, 3)
    arr = decode_training_set(src, tmp_path, show_progress=False)
    assert arr.dtype == np.uint8 and arr.shape == (12, 112, 112, 3)
    assert all(np.array_equal(arr[i], SynthFaces(12, 3).image(i)) for i in range(12))
    assert src.reads == 12
    again = decode_training_set(src, tmp_path, show_progress=False)
    assert src.reads == 12 and np.array_equal(again, arr)
    other = CountingFaces(12, 3, seed=5)  # other pixels: another key, another memmap
    assert decoded_key(other) != decoded_key(src)
    assert not np.array_equal(decode_training_set(other, tmp_path, show_progress=False), arr)


def test_an_unfinished_memmap_is_rebuilt_and_a_bad_face_is_named(tmp_path):
    src = CountingFaces(6, 2)
    decode_training_set(src, tmp_path, show_progress=False)
    meta = tmp_path / f"decoded-{decoded_key(src)}.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "complete": False}))
    decode_training_set(src, tmp_path, show_progress=False)
    assert src.reads == 12  # decoded again
    bad = CountingFaces(6, 2, seed=9, broken={4})
    with pytest.raises(DataError, match=r"faces/4\.jpg could not be read"):
        decode_training_set(bad, tmp_path, show_progress=False)
    assert not list(tmp_path.glob(".*.partial")) and not (tmp_path / f"decoded-{decoded_key(bad)}.json").exists()


# --- teacher cache views ---------------------------------------------------------------------------
class PixelEmbedder:
    """A deterministic 'teacher' whose embedding is a function of the exact pixels (so any mismatch between
    the cached view and the rendered one shows)."""

    name, runtime, dim, normalized = "pixels", "numpy", 6, False

    class preprocess:  # noqa: N801 - mimics Embedder.preprocess
        @staticmethod
        def to_dict():
            return {"kind": "pixels"}

    def embed(self, faces, batch_size=64):
        x = np.asarray(faces, np.float64)
        return np.stack([x.mean((1, 2, 3)), x[:, :56].mean((1, 2, 3)), x[:, :, :56].mean((1, 2, 3)),
                         x[:, 10:20, 30:40].mean((1, 2, 3)), x[..., 0].std((1, 2)), x[:, ::7, ::5, 1].sum((1, 2))],
                        1).astype(np.float32)


def test_cached_views_are_the_teacher_on_the_rendered_training_pixels(tmp_path):
    src = SynthFaces(16, 4)
    aug = AugmentConfig(flip=True, shift=4, scale=0.05, color=0.2, views=2)
    views = V.cached_views(aug)
    cache = TeacherCache.build(PixelEmbedder(), src, tmp_path, "k", flip=True, batch_size=5, show_progress=False,
                               views=views)
    assert cache.view_count == 2 and cache.views.shape == (2, 16, 6) and cache.views_flipped.shape == (2, 16, 6)
    reopened = TeacherCache.open(tmp_path, "k")
    assert reopened is not None and np.array_equal(reopened.views, cache.views)
    targets = CachedTargets(cache.embeddings, cache.flipped, views=cache.views, views_flipped=cache.views_flipped)
    reader = BatchReader(src, np.arange(16) % 4, spec=V.ViewSpec.of(aug))
    keys = [(i, bool(i % 3 == 0), 0, i % 3) for i in range(16)]  # every (view, flip) combination
    batch = reader[keys]
    want = PixelEmbedder().embed(batch["faces"].numpy())
    np.testing.assert_allclose(targets(batch).numpy(), want, rtol=1e-6)
    # and the cache distinguishes the views (a lookup of the wrong view would not match)
    assert not np.allclose(cache.views[0], cache.views[1])


def test_cache_key_changes_with_the_views():
    class Src:
        def fingerprint(self):
            return "t"

    faces = SynthFaces(4, 2)
    a = cache_key(Src(), faces, True)
    b = cache_key(Src(), faces, True, views={"count": 2, "spec": V.ViewSpec(shift=4).to_dict()})
    c = cache_key(Src(), faces, True, views={"count": 2, "spec": V.ViewSpec(shift=5).to_dict()})
    assert len({a, b, c}) == 3
    assert a == cache_key(Src(), faces, True, views=None)


def test_a_view_the_cache_lacks_is_a_clear_error():
    emb = np.zeros((4, 3), np.float32)
    batch = {"index": torch.tensor([0, 1]), "flip": torch.tensor([False, False]), "view": torch.tensor([0, 2])}
    with pytest.raises(ConfigError, match="holds 0 augmented views but the batch asks for view 2"):
        CachedTargets(emb, where="teacher cache X")(batch)


def test_teacher_mode_with_views_uses_the_cache():
    aug = AugmentConfig(flip=True, shift=4, views=2)
    assert choose_teacher_mode("auto", aug, True, True, cache_views=2).mode == "cache"
    stale = choose_teacher_mode("auto", aug, True, True, cache_views=0)
    assert stale.mode == "online" and "cache holds 0 views" in stale.reason
    online = choose_teacher_mode("auto", AugmentConfig(shift=4), True, True)
    assert online.mode == "online" and "views: 0" in online.reason


def test_trainer_with_views_trains_on_the_cached_views(tmp_path):
    src = SynthFaces(32, 4)
    aug = {"flip": True, "shift": 3, "color": 0.1, "views": 2}
    cache = TeacherCache.build(PixelEmbedder(), src, tmp_path / "c", "k", flip=True, show_progress=False,
                               views=V.cached_views(AugmentConfig(**aug)))
    targets = CachedTargets(cache.embeddings, cache.flipped, views=cache.views, views_flipped=cache.views_flipped)
    t = make_trainer(tmp_path / "run", source=src, num_classes=4, dim=6, targets=targets, augment=aug,
                     losses=[{"name": "feature_kd"}], steps=3)
    seen = []
    batches = list(t.loader(3))
    for b in batches:
        seen += b["view"].tolist()
        np.testing.assert_allclose(targets(b).numpy(), PixelEmbedder().embed(b["faces"].numpy()), rtol=1e-6)
    assert set(seen) > {0}
    result = t.fit()
    assert result.step == 3 and np.isfinite(result.losses["loss"])


# --- compile choice and step split -----------------------------------------------------------------
def test_compile_auto_only_where_it_repays():
    cpu = torch.device("cpu")
    assert not compile_choice("off", cpu, 10_000, False).on
    assert compile_choice("on", cpu, 1, True).on
    short = compile_choice("auto", cpu, COMPILE_MIN_STEPS - 1, False)
    assert not short.on and "fewer than" in short.reason
    assert not compile_choice("auto", cpu, 10_000, True).on
    assert not compile_choice("auto", torch.device("cuda"), 10_000, False).on


def test_step_split_adds_up_to_the_step(tmp_path):
    from facepipe.pipeline.train.steptime import PARTS, time_loop

    t = make_trainer(tmp_path, steps=6, compile="off")
    row = time_loop(t, steps=3, warmup=1)
    parts = sum(row[f"{p}_ms"] for p in PARTS)
    assert row["batch"] == 8 and row["img_per_s"] > 0 and not row["compiled"]
    assert abs(parts - row["step_ms"]) <= 0.05 * row["step_ms"] + 1.0
    assert t.step == 0  # timing trains the student but counts no steps of the run


def test_floor_from_sgemm_and_flops():
    from facepipe.models.mobilefacenet import MobileFaceNet
    from facepipe.pipeline.train.floor import floor_img_per_s, sgemm_gflops, train_gflop_per_image

    g = train_gflop_per_image(MobileFaceNet(128))
    assert 1.2 < g < 1.5  # 221 M MACs x 6
    gflops = sgemm_gflops(n=256, repeats=3)
    assert gflops > 0.5
    assert floor_img_per_s(gflops, g) == pytest.approx(gflops / g)


def test_a_compiled_student_trains_like_the_eager_one(tmp_path):
    """distill.compile=on runs the student through torch.compile (inductor, C++ on CPU) with the same losses
    and weights as eager, within float tolerance; the saved weights keep the student's own names."""
    from facepipe.pipeline.train.trainer import cxx_compiler

    if not cxx_compiler():
        pytest.skip("torch.compile on CPU needs a C++ compiler (none on PATH)")
    runs = {}
    for mode in ("off", "on"):
        t = make_trainer(tmp_path / mode, steps=3, compile=mode, bn=True)
        result = t.fit()
        runs[mode] = (t, result)
    eager, compiled = runs["off"], runs["on"]
    assert compiled[0].compiled and not eager[0].compiled
    # the same first loss (same weights, same batch); after two updates float reassociation in the fused
    # kernels has moved the weights by ~1e-4 relative, far below what training moves them
    first = [r[1].history[0]["loss"] for r in (eager, compiled)]
    assert first[1] == pytest.approx(first[0], rel=1e-5)
    assert compiled[1].losses["loss"] == pytest.approx(eager[1].losses["loss"], rel=2e-3)
    a, b = eager[0].student.state_dict(), compiled[0].student.state_dict()
    assert a.keys() == b.keys()
    init = make_trainer(tmp_path / "init", steps=3, compile="off", bn=True).student.state_dict()
    moved = max((a[k].float() - init[k].float()).abs().max().item() for k in a)
    assert moved > 1e-2  # training moved the weights, so the comparison below means something
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=2e-3, atol=2e-4)


def test_yaml_on_off_is_read_as_the_compile_mode():
    from facepipe.pipeline.config import DistillConfig, load_config

    assert DistillConfig(compile=True).compile == "on" and DistillConfig(compile=False).compile == "off"
    assert load_config(None, ["distill.compile=on"]).distill.compile == "on"
    with pytest.raises(Exception, match="auto', 'on' or 'off'"):
        DistillConfig(compile="sometimes")
