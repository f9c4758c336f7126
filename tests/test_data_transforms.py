"""Clip transforms and recipes: one draw per clip, no flip for SSv2, test views, YAML loading."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from peft_bench.data.recipes import available_recipes, load_recipe
from peft_bench.data.transforms import Recipe, scaled_size, test_views, train_transform

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
    assert (recipe.sampling, recipe.num_frames, recipe.stride) == ("dense", 8, 16)
    assert recipe.train_short_side_range == (224, 258) and recipe.hflip
    assert recipe.randaugment is None and recipe.train_random_resized_crop_area is None
    assert (recipe.test_short_side, recipe.test_crops, recipe.test_clips) == (224, 1, 3)


def test_ssv2_recipe_matches_the_released_code():
    recipe = load_recipe("ssv2")
    assert (recipe.sampling, recipe.num_frames) == ("segment", 8)
    assert recipe.train_random_resized_crop_area == (0.08, 1.0)
    assert recipe.randaugment == (4, 7)
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
        ("sampling: dense\nrandaugment: [4]\n", "randaugment"),
        ("sampling: dense\nhflip: maybe\n", "hflip"),
        ("num_frames: 8\n", "sampling"),
    ],
)
def test_bad_recipe_names_the_file_and_the_key(tmp_path, text, key):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as raised:
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
    import pickle

    recipe = load_recipe(recipe_name)
    for make in (train_transform, test_views):
        transform = pickle.loads(pickle.dumps(make(recipe, 32, MEAN, STD)))
        assert transform(still_clip()).shape[-2:] == (32, 32)
