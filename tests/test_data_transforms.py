"""Clip transforms and recipes: the released ST-Adapter code's augmentation (timm's RandAugment before the
crop, bicubic resizing without antialias, the float short-side draw, its crop offsets), one draw per clip,
no flip for SSv2, test views, YAML loading and per-run changes."""

from __future__ import annotations

import collections
import dataclasses
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as nnf
from PIL import Image
from timm.data.auto_augment import rand_augment_transform

from peft_bench.data import transforms as transforms_module
from peft_bench.data.recipes import available_recipes, load_recipe, recipe_settings, with_settings
from peft_bench.data.transforms import (
    Recipe,
    draw_short_side,
    random_square_crop,
    scaled_size,
    test_views,
    timm_randaugment_clip,
    train_transform,
)

MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's
STD = (0.26862954, 0.26130258, 0.27577711)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def still_clip(num_frames: int = 8, height: int = 72, width: int = 96, seed: int = 0) -> torch.Tensor:
    """The same random image repeated over time: any difference between output frames is a per-frame draw."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=generator)
    return image.expand(num_frames, -1, -1, -1).contiguous()


def left_dark_right_bright_clip(num_frames: int = 8, size: int = 64) -> torch.Tensor:
    clip = torch.zeros(num_frames, size, size, 3, dtype=torch.uint8)
    clip[:, :, size // 2 :] = 255
    return clip


def unnormalise(video: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)
    return (video * std + mean) * 255


# ------------------------------------------------------------------------------------------- recipes


def test_packaged_recipes_load():
    assert {"k400", "ssv2", "synthetic-appearance", "synthetic-motion"} <= set(available_recipes())
    for name in available_recipes():
        assert load_recipe(name).name == name


def test_k400_recipe_matches_the_released_code():
    recipe = load_recipe("k400")
    assert (recipe.sampling, recipe.num_frames, recipe.stride, recipe.frame_indices) == ("dense", 8, 16, "released")
    assert recipe.train_short_side_range == (224, 258) and recipe.short_side_draw == "float" and recipe.hflip
    assert recipe.crop_offsets == "released"
    assert recipe.randaugment is None and recipe.train_random_resized_crop_area is None
    assert (recipe.interpolation, recipe.antialias) == ("bicubic", False)
    assert (recipe.test_short_side, recipe.test_crops, recipe.test_clips) == (224, 1, 3)


def test_ssv2_recipe_matches_the_released_code():
    recipe = load_recipe("ssv2")
    assert (recipe.sampling, recipe.num_frames, recipe.frame_indices) == ("segment", 8, "released")
    assert recipe.train_random_resized_crop_area == (0.08, 1.0)
    assert (recipe.randaugment, recipe.randaugment_library, recipe.randaugment_at) == (
        "rand-m7-n4-mstd0.5-inc1",
        "timm",
        "before_crop",
    )
    assert (recipe.interpolation, recipe.antialias) == ("bicubic", False)
    assert recipe.hflip is False  # SSv2 has left/right classes
    assert (recipe.test_short_side, recipe.test_crops, recipe.test_clips) == (224, 3, 1)


def test_synthetic_recipes_are_cheap_and_motion_is_not_flipped():
    appearance, motion = load_recipe("synthetic-appearance"), load_recipe("synthetic-motion")
    assert (appearance.sampling, appearance.stride, appearance.test_clips, appearance.test_crops) == ("dense", 2, 2, 1)
    assert motion.sampling == "segment" and motion.num_frames == 8 and not motion.hflip
    assert motion.randaugment is None and motion.train_random_resized_crop_area == (0.7, 1.0)
    assert motion.num_views == 1


def test_recipe_from_a_path(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("sampling: dense\nnum_frames: 4\nstride: 2\ntest_clips: 2\n")
    recipe = load_recipe(path)
    assert (recipe.name, recipe.num_frames, recipe.stride, recipe.test_clips) == ("mine", 4, 2, 2)


@pytest.mark.parametrize(
    "text,key",
    [
        ("sampling: dense\nnum_frame: 8\n", "num_frame"),  # a typo is an unknown key
        ("sampling: sparse\n", "sampling"),
        ("sampling: dense\nnum_frames: 0\n", "num_frames"),
        ("sampling: dense\ntest_crops: 2\n", "test_crops"),
        ("sampling: dense\ntrain_short_side_range: [258, 224]\n", "train_short_side_range"),
        ("sampling: dense\ntrain_random_resized_crop_area: [0.0, 1.5]\n", "train_random_resized_crop_area"),
        ("sampling: dense\nrandaugment: [4, 7]\n", "randaugment"),
        ("sampling: dense\nrandaugment: rand-m7-q3\n", "randaugment"),
        ("sampling: dense\nrandaugment: rand-m7-n4-mstd0.5\nrandaugment_library: torchvision\n", "randaugment"),
        ("sampling: dense\nrandaugment_at: anywhere\n", "randaugment_at"),
        ("sampling: dense\ninterpolation: lanczos\n", "interpolation"),
        ("sampling: dense\nantialias: sometimes\n", "antialias"),
        ("sampling: dense\nframe_indices: slowfast\n", "frame_indices"),
        ("sampling: dense\nshort_side_draw: gauss\n", "short_side_draw"),
        ("sampling: dense\ncrop_offsets: some\n", "crop_offsets"),
        ("sampling: dense\nhflip: maybe\n", "hflip"),
        ("num_frames: 8\n", "sampling"),
    ],
)
def test_bad_recipe_names_the_file_and_the_key(tmp_path, text, key):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=key) as raised:
        load_recipe(path)
    assert str(path) in str(raised.value) and key in str(raised.value)


def test_unknown_recipe_name_lists_the_available_ones():
    with pytest.raises(ValueError, match="k400"):
        load_recipe("kinetics-9000")


def test_recipe_sizes_scale_with_the_input_size():
    assert scaled_size(224, 32) == 32 and scaled_size(258, 32) == 37 and scaled_size(224, 224) == 224


# ---------------------------------------------------------------------------------------- transforms


@pytest.mark.parametrize("recipe_name", ["k400", "ssv2", "synthetic-appearance", "synthetic-motion"])
@pytest.mark.parametrize("input_size", [32, 56])
def test_train_output_shape_and_type(recipe_name, input_size):
    transform = train_transform(load_recipe(recipe_name), input_size, MEAN, STD)
    out = transform(still_clip())
    assert out.shape == (8, 3, input_size, input_size) and out.dtype == torch.float32


@pytest.mark.parametrize("recipe_name", ["k400", "ssv2", "synthetic-appearance", "synthetic-motion"])
def test_one_random_draw_applies_to_every_frame(recipe_name):
    # Includes RandAugment for SSv2: torchvision draws its ops once per call on the (T, 3, H, W) tensor.
    transform = train_transform(load_recipe(recipe_name), 32, MEAN, STD)
    torch.manual_seed(0)
    for seed in range(30):
        out = transform(still_clip(seed=seed))
        assert torch.equal(out, out[:1].expand_as(out)), f"frames differ (draw {seed})"


def test_ssv2_never_flips():
    # RandAugment's Solarize/Equalize could invert brightness, so check the flip on the recipe without it;
    # the geometry (random resized crop) is the recipe's own.
    recipe = dataclasses.replace(load_recipe("ssv2"), randaugment=None)
    transform = train_transform(recipe, 32, MEAN, STD)
    torch.manual_seed(0)
    for _ in range(200):
        frame = unnormalise(transform(left_dark_right_bright_clip()))[0].mean(0)
        assert frame[:, :4].mean() <= frame[:, -4:].mean()


def test_k400_flips_sometimes():
    transform = train_transform(load_recipe("k400"), 32, MEAN, STD)
    torch.manual_seed(0)
    flipped = 0
    for _ in range(100):
        frame = unnormalise(transform(left_dark_right_bright_clip()))[0].mean(0)
        flipped += bool(frame[:, :4].mean() > frame[:, -4:].mean())
    assert 25 < flipped < 75


def test_train_transform_is_reproducible_from_the_torch_seed():
    transform = train_transform(load_recipe("ssv2"), 32, MEAN, STD)
    outputs = []
    for _ in range(2):
        torch.manual_seed(123)
        outputs.append(transform(still_clip(height=90, width=120)))
    assert torch.equal(outputs[0], outputs[1])


def test_normalisation_uses_mean_and_std_on_the_unit_scale():
    recipe = Recipe(name="plain", sampling="dense", test_short_side=224)
    grey = torch.tensor([round(m * 255) for m in MEAN], dtype=torch.uint8)
    clip = grey.expand(4, 32, 32, 3).contiguous()
    out = test_views(recipe, 32, MEAN, STD)(clip)
    assert out.abs().max() < 0.01


def horizontal_ramp_clip(height: int, width: int) -> torch.Tensor:
    ramp = torch.linspace(0, 255, width).round().to(torch.uint8)
    return ramp.view(1, 1, width, 1).expand(2, height, width, 3).contiguous()


def test_three_test_crops_go_left_centre_right_on_wide_videos():
    recipe = Recipe(name="three", sampling="dense", test_crops=3)
    views = test_views(recipe, 32, MEAN, STD)(horizontal_ramp_clip(48, 128))
    assert views.shape == (3, 2, 3, 32, 32)
    means = [view.mean().item() for view in views]
    assert means[0] < means[1] < means[2]


def test_three_test_crops_go_top_centre_bottom_on_tall_videos():
    recipe = Recipe(name="three", sampling="dense", test_crops=3)
    tall = horizontal_ramp_clip(48, 128).transpose(1, 2).contiguous()  # ramp now runs top to bottom
    views = test_views(recipe, 32, MEAN, STD)(tall)
    means = [view.mean().item() for view in views]
    assert means[0] < means[1] < means[2]


def test_test_views_resize_the_short_side_then_crop_the_centre():
    recipe = Recipe(name="one", sampling="dense", test_crops=1)
    views = test_views(recipe, 32, MEAN, STD)(horizontal_ramp_clip(64, 96))
    assert views.shape == (1, 2, 3, 32, 32)
    pixels = unnormalise(views[0, 0])[0, 0]
    # short side 64 -> 32 halves the 96-wide ramp to 48 columns; the centre crop keeps columns 8..39.
    assert abs(pixels[0].item() - 255 * 16.5 / 95) < 2  # mean of source columns 16 and 17
    assert pixels[0] < pixels[-1]


def test_rejects_clips_of_the_wrong_layout():
    transform = train_transform(load_recipe("k400"), 32, MEAN, STD)
    with pytest.raises(ValueError, match="T, H, W, 3"):
        transform(torch.zeros(8, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8"):
        transform(torch.zeros(8, 32, 32, 3))


@pytest.mark.parametrize("recipe_name", ["k400", "ssv2"])
def test_transforms_pickle_for_spawned_dataloader_workers(recipe_name):
    import pickle  # only here: the one test that round-trips a transform through pickle, as spawn does

    recipe = load_recipe(recipe_name)
    for make in (train_transform, test_views):
        transform = pickle.loads(pickle.dumps(make(recipe, 32, MEAN, STD)))  # noqa: S301  -- our own bytes
        assert transform(still_clip()).shape[-2:] == (32, 32)


# ------------------------------------------------------------------------- the released augmentation

RELEASED_RANDAUGMENT = "rand-m7-n4-mstd0.5-inc1"


def moving_square_clip(num_frames: int = 4, height: int = 48, width: int = 64) -> torch.Tensor:
    """A noisy background with a bright square moving right: every frame differs."""
    generator = torch.Generator().manual_seed(5)
    clip = torch.randint(0, 120, (num_frames, height, width, 3), dtype=torch.uint8, generator=generator)
    for t in range(num_frames):
        clip[t, 10:26, 4 + 8 * t : 20 + 8 * t] = torch.tensor([250, 200, 40], dtype=torch.uint8)
    return clip


@pytest.mark.parametrize("seed", range(10))
def test_randaugment_is_timms_transform_with_the_same_draw_on_every_frame(seed):
    frames = moving_square_clip().numpy()
    ours = timm_randaugment_clip(frames, RELEASED_RANDAUGMENT, seed)
    # The released create_random_augment's hyper-parameters: translate_const from the short side, bicubic.
    timm_transform = rand_augment_transform(
        RELEASED_RANDAUGMENT, {"translate_const": int(48 * 0.45), "interpolation": Image.Resampling.BICUBIC}
    )
    for t, frame in enumerate(frames):
        random.seed(seed)  # timm draws ops from NumPy's global generator, probabilities and magnitudes from Python's
        np.random.seed(seed)
        assert np.array_equal(ours[t], np.asarray(timm_transform(Image.fromarray(frame)))), f"frame {t}"


def test_randaugment_changes_clips_and_leaves_the_callers_generators_alone():
    frames = moving_square_clip().numpy()
    random.seed(3)
    np.random.seed(3)
    before = random.random(), np.random.random()
    random.seed(3)
    np.random.seed(3)
    changed = sum(
        not np.array_equal(timm_randaugment_clip(frames, RELEASED_RANDAUGMENT, seed), frames) for seed in range(20)
    )
    assert (random.random(), np.random.random()) == before
    assert changed >= 15  # 4 ops at p = 0.5 each: a clip passes untouched 1 time in 16


@pytest.mark.parametrize("place,seen_size", [("before_crop", (72, 96)), ("after_crop", (32, 32))])
def test_ssv2_randaugment_sees_the_full_frames_before_the_crop(monkeypatch, place, seen_size):
    seen = []
    real = transforms_module.timm_randaugment_clip

    def spy(frames, *args, **kwargs):
        seen.append(frames.shape)
        return real(frames, *args, **kwargs)

    monkeypatch.setattr(transforms_module, "timm_randaugment_clip", spy)
    recipe = dataclasses.replace(load_recipe("ssv2"), randaugment_at=place)
    torch.manual_seed(0)
    out = train_transform(recipe, 32, MEAN, STD)(still_clip(height=72, width=96))
    assert out.shape == (8, 3, 32, 32)
    assert seen == [(8, *seen_size, 3)]


def test_ssv2_train_transform_is_reproducible_and_varies_with_the_torch_seed():
    transform = train_transform(load_recipe("ssv2"), 32, MEAN, STD)
    clip = moving_square_clip(8)
    outputs = {}
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        outputs.setdefault(seed, []).append(transform(clip))
    assert torch.equal(outputs[1][0], outputs[1][1]) and not torch.equal(outputs[1][0], outputs[2][0])


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_legacy_torchvision_randaugment_after_the_crop_still_runs(interpolation):
    # Only RandAugment changes here: the resizes keep the recipe's interpolation, whichever it is.
    recipe = dataclasses.replace(
        load_recipe("ssv2"),
        randaugment="rand-m7-n4",
        randaugment_library="torchvision",
        randaugment_at="after_crop",
        interpolation=interpolation,
    )
    torch.manual_seed(0)
    for seed in range(20):  # enough draws to meet its geometric ops
        out = train_transform(recipe, 32, MEAN, STD)(still_clip(seed=seed))
        assert out.shape == (8, 3, 32, 32) and torch.equal(out, out[:1].expand_as(out))


def test_test_resize_is_bicubic_without_antialias_and_rounds_the_long_side_down():
    clip = torch.randint(0, 256, (2, 64, 97, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    views = test_views(load_recipe("k400"), 32, MEAN, STD)(clip)
    x = clip.permute(0, 3, 1, 2).float()
    resized = nnf.interpolate(x, size=(32, 97 * 32 // 64), mode="bicubic", align_corners=False)  # 48 wide
    left = (resized.shape[-1] - 32) // 2
    expected = transforms_module.normalize(resized[..., left : left + 32], MEAN, STD)
    torch.testing.assert_close(views[0], expected)
    legacy = dataclasses.replace(load_recipe("k400"), interpolation="bilinear", antialias=True)
    assert not torch.allclose(test_views(legacy, 32, MEAN, STD)(clip)[0], expected, atol=1e-3)


def test_long_side_rounds_down_as_released_in_training_and_at_test():
    # 122 x 112 to a 224 short side: 122 / 112 * 224 is 243.99999999999997 in floating point.
    assert transforms_module.short_side_size(112, 122, 224, integer_division=False) == (224, 243)
    assert transforms_module.short_side_size(112, 122, 224, integer_division=True) == (224, 244)
    assert transforms_module.short_side_size(300, 200, 258, integer_division=True) == (387, 258)


def test_float_short_side_draw_gives_its_two_ends_half_weight():
    torch.manual_seed(0)
    draws = 8000
    floats = collections.Counter(draw_short_side(224, 226, "float") for _ in range(draws))
    integers = collections.Counter(draw_short_side(224, 226, "integer") for _ in range(draws))
    assert set(floats) == set(integers) == {224, 225, 226}
    # round(uniform(224, 226)): 224 for [224, 224.5), 225 for [224.5, 225.5], 226 for (225.5, 226).
    assert abs(floats[224] / draws - 0.25) < 0.02 and abs(floats[225] / draws - 0.5) < 0.02
    assert all(abs(count / draws - 1 / 3) < 0.02 for count in integers.values())


def test_released_crop_offsets_never_reach_the_bottom_or_right_edge():
    positions = torch.arange(10 * 12, dtype=torch.float32).view(1, 1, 10, 12)
    torch.manual_seed(0)
    corners = {"released": set(), "all": set()}
    for offsets, seen in corners.items():
        for _ in range(600):
            top_left = int(random_square_crop(positions, 8, offsets)[0, 0, 0, 0])
            seen.add(divmod(top_left, 12))
    assert corners["released"] == {(top, left) for top in range(2) for left in range(4)}  # randint(0, 2), (0, 4)
    assert corners["all"] == {(top, left) for top in range(3) for left in range(5)}


def test_recipe_settings_change_one_field_and_name_bad_ones():
    recipe = load_recipe("ssv2")
    changed = with_settings(recipe, {"interpolation": "bilinear", "train_random_resized_crop_area": [0.5, 1.0]})
    assert changed.interpolation == "bilinear" and changed.train_random_resized_crop_area == (0.5, 1.0)
    assert with_settings(recipe, recipe_settings(recipe)) == recipe
    assert "name" not in recipe_settings(recipe) and "num_frames" not in recipe_settings(recipe)
    for settings, message in [
        ({"interpolaton": "bilinear"}, "unknown key recipe.interpolaton"),
        ({"hflip": "often"}, "recipe.hflip"),
        ({"num_frames": 16}, "num_frames"),
    ]:
        with pytest.raises(ValueError, match=message):
            with_settings(recipe, settings)
