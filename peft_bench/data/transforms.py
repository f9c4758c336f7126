"""Clip-level augmentations and test views.

Every transform works on a whole clip at once, so one random draw (crop box, flip, RandAugment ops) applies
to every frame: per-frame draws would add fake motion. Randomness comes from torch's global generator only,
so a dataset can make an item reproducible by seeding that generator (inside `torch.random.fork_rng`).

Recipe sizes are written for 224-pixel input and scaled by `input_size / 224`, so one recipe serves both
ViT-B/16 at 224 px and a 32-px toy backbone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import torch
import torchvision.transforms.functional as F
from torch import Tensor
from torchvision.transforms import InterpolationMode, RandAugment, RandomResizedCrop

REFERENCE_INPUT_SIZE = 224
SAMPLINGS = ("dense", "segment")
# RandAugment magnitudes follow the 0..10 scale of the RandAugment paper and timm ("m7" = 7/10 of the
# maximum), so torchvision gets 11 bins instead of its default 31.
RANDAUGMENT_MAGNITUDE_BINS = 11

ClipTransform = Callable[[Tensor], Tensor]


class RecipeValueError(ValueError):
    """A recipe field has a bad value; `key` names the field."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


@dataclass
class Recipe:
    """Frame sampling and augmentation of one benchmark, with sizes written for 224-pixel input."""

    name: str
    sampling: str  # "dense" (fixed stride) or "segment" (TSN uniform segments)
    num_frames: int = 8
    stride: int = 16  # dense sampling only
    train_short_side_range: tuple[int, int] | None = None  # short-side jitter, then a random square crop
    train_random_resized_crop_area: tuple[float, float] | None = None  # e.g. (0.08, 1.0)
    hflip: bool = False
    randaugment: tuple[int, int] | None = None  # (num_ops n, magnitude m on the 0..10 scale)
    test_short_side: int = 224
    test_crops: int = 1  # 1 centre crop, or 3 along the long side
    test_clips: int = 1

    def __post_init__(self) -> None:
        # YAML gives lists; keep tuples so recipes compare and hash predictably.
        for key in ("train_short_side_range", "train_random_resized_crop_area", "randaugment"):
            value = getattr(self, key)
            if isinstance(value, list):
                setattr(self, key, tuple(value))
        _validate_recipe(self)

    @property
    def num_views(self) -> int:
        return self.test_crops * self.test_clips


def recipe_field_names() -> list[str]:
    return [field.name for field in fields(Recipe)]


def _validate_recipe(recipe: Recipe) -> None:
    if not isinstance(recipe.name, str) or not recipe.name:
        raise RecipeValueError("name", f"must be a non-empty string, got {recipe.name!r}")
    if recipe.sampling not in SAMPLINGS:
        raise RecipeValueError("sampling", f"must be one of {SAMPLINGS}, got {recipe.sampling!r}")
    for key in ("num_frames", "stride", "test_short_side", "test_clips"):
        _require_positive_int(key, getattr(recipe, key))
    _require_positive_int("test_crops", recipe.test_crops)
    if recipe.test_crops not in (1, 3):
        raise RecipeValueError("test_crops", f"must be 1 or 3, got {recipe.test_crops}")
    if recipe.test_short_side < REFERENCE_INPUT_SIZE:
        raise RecipeValueError(
            "test_short_side", f"must be at least the {REFERENCE_INPUT_SIZE}-pixel crop, got {recipe.test_short_side}"
        )
    if not isinstance(recipe.hflip, bool):
        raise RecipeValueError("hflip", f"must be true or false, got {recipe.hflip!r}")
    _validate_short_side_range(recipe.train_short_side_range)
    _validate_crop_area(recipe.train_random_resized_crop_area)
    if recipe.train_short_side_range is not None and recipe.train_random_resized_crop_area is not None:
        raise RecipeValueError(
            "train_random_resized_crop_area", "give either train_short_side_range or a random resized crop, not both"
        )
    _validate_randaugment(recipe.randaugment)


def _require_positive_int(key: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RecipeValueError(key, f"must be a positive integer, got {value!r}")


def _is_pair(value: object) -> bool:
    return isinstance(value, tuple) and len(value) == 2


def _validate_short_side_range(value: object) -> None:
    if value is None:
        return
    if not _is_pair(value) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise RecipeValueError("train_short_side_range", f"must be two integers [low, high], got {value!r}")
    low, high = value
    if not REFERENCE_INPUT_SIZE <= low <= high:
        raise RecipeValueError(
            "train_short_side_range", f"needs {REFERENCE_INPUT_SIZE} <= low <= high, got {list(value)}"
        )


def _validate_crop_area(value: object) -> None:
    if value is None:
        return
    if not _is_pair(value) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise RecipeValueError("train_random_resized_crop_area", f"must be two numbers [low, high], got {value!r}")
    low, high = value
    if not 0 < low <= high <= 1:
        raise RecipeValueError("train_random_resized_crop_area", f"needs 0 < low <= high <= 1, got {list(value)}")


def _validate_randaugment(value: object) -> None:
    if value is None:
        return
    if not _is_pair(value) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise RecipeValueError("randaugment", f"must be two integers [n, m], got {value!r}")
    num_ops, magnitude = value
    if num_ops < 1 or not 0 <= magnitude < RANDAUGMENT_MAGNITUDE_BINS:
        raise RecipeValueError(
            "randaugment", f"needs n >= 1 and 0 <= m <= {RANDAUGMENT_MAGNITUDE_BINS - 1}, got {list(value)}"
        )


# ----------------------------------------------------------------------------------------------- pieces


def scaled_size(value: float, input_size: int) -> int:
    """A size written for 224-pixel input, at `input_size`."""
    return max(1, round(value * input_size / REFERENCE_INPUT_SIZE))


def clip_to_tchw(clip: Tensor) -> Tensor:
    """(T, H, W, 3) uint8 -> (T, 3, H, W) uint8."""
    if clip.ndim != 4 or clip.shape[-1] != 3:
        raise ValueError(f"expected a clip of shape (T, H, W, 3), got {tuple(clip.shape)}")
    if clip.dtype != torch.uint8:
        raise ValueError(f"expected a uint8 clip, got {clip.dtype}")
    return clip.permute(0, 3, 1, 2)


def resize_short_side(clip: Tensor, short_side: int) -> Tensor:
    height, width = clip.shape[-2:]
    if min(height, width) == short_side:
        return clip
    if height <= width:
        size = [short_side, max(short_side, round(width * short_side / height))]
    else:
        size = [max(short_side, round(height * short_side / width)), short_side]
    return F.resize(clip, size, interpolation=InterpolationMode.BILINEAR, antialias=True)


def random_square_crop(clip: Tensor, size: int) -> Tensor:
    height, width = clip.shape[-2:]
    top = int(torch.randint(0, height - size + 1, (1,)))
    left = int(torch.randint(0, width - size + 1, (1,)))
    return clip[..., top : top + size, left : left + size]


def random_resized_crop(clip: Tensor, area: tuple[float, float], size: int) -> Tensor:
    # One box for the whole clip: get_params reads only the clip's height and width.
    top, left, height, width = RandomResizedCrop.get_params(clip, scale=list(area), ratio=[3 / 4, 4 / 3])
    return F.resized_crop(
        clip, top, left, height, width, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True
    )


def random_horizontal_flip(clip: Tensor) -> Tensor:
    return clip.flip(-1) if bool(torch.rand(()) < 0.5) else clip


def long_side_crops(clip: Tensor, size: int, num_crops: int) -> list[Tensor]:
    """1 centre crop, or 3 crops spread along the long side (left/centre/right or top/centre/bottom)."""
    height, width = clip.shape[-2:]
    centre_top, centre_left = (height - size) // 2, (width - size) // 2
    if num_crops == 1:
        boxes = [(centre_top, centre_left)]
    elif width >= height:
        boxes = [(centre_top, 0), (centre_top, centre_left), (centre_top, width - size)]
    else:
        boxes = [(0, centre_left), (centre_top, centre_left), (height - size, centre_left)]
    return [clip[..., top : top + size, left : left + size] for top, left in boxes]


def normalize(clip: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """(..., 3, H, W) pixel values 0..255 (uint8 or float) -> float32 normalised by mean/std on the 0..1
    scale (e.g. CLIP's)."""
    mean_t = torch.as_tensor(mean, dtype=torch.float32).view(3, 1, 1) * 255.0
    std_t = torch.as_tensor(std, dtype=torch.float32).view(3, 1, 1) * 255.0
    return (clip.float() - mean_t) / std_t


# --------------------------------------------------------------------------------------------- pipelines
# Transforms are dataclasses rather than closures so that datasets holding them pickle into DataLoader
# workers started with "spawn" or "forkserver" (macOS, Python 3.14+).


@dataclass
class TrainTransform:
    """uint8 (T, H, W, 3) -> float32 (T, 3, S, S): the recipe's training augmentation, one draw per clip."""

    recipe: Recipe
    input_size: int
    mean: Sequence[float]
    std: Sequence[float]

    def __post_init__(self) -> None:
        self.randaugment = None
        if self.recipe.randaugment is not None:
            num_ops, magnitude = self.recipe.randaugment
            # torchvision draws the ops once per call and applies them to the whole (T, 3, H, W) tensor, so
            # every frame gets the same ops and magnitudes (AutoContrast/Equalize still use each frame's own
            # histogram).
            self.randaugment = RandAugment(
                num_ops=num_ops,
                magnitude=magnitude,
                num_magnitude_bins=RANDAUGMENT_MAGNITUDE_BINS,
                interpolation=InterpolationMode.BILINEAR,
            )
        side_range = self.recipe.train_short_side_range or (REFERENCE_INPUT_SIZE, REFERENCE_INPUT_SIZE)
        self.short_side_range = tuple(max(scaled_size(v, self.input_size), self.input_size) for v in side_range)

    def __call__(self, clip: Tensor) -> Tensor:
        recipe, size = self.recipe, self.input_size
        x = clip_to_tchw(clip)
        if self.randaugment is None:
            x = x.float()  # resizing floats skips the round trip back to uint8 after every resize
        if recipe.train_random_resized_crop_area is not None:
            x = random_resized_crop(x, recipe.train_random_resized_crop_area, size)
        else:
            low, high = self.short_side_range
            short_side = int(torch.randint(low, high + 1, (1,)))
            x = random_square_crop(resize_short_side(x, short_side), size)
        if recipe.hflip:
            x = random_horizontal_flip(x)
        if self.randaugment is not None:
            x = self.randaugment(x.contiguous())
        return normalize(x, self.mean, self.std)


@dataclass
class TestViews:
    """uint8 (T, H, W, 3) -> float32 (crops, T, 3, S, S): short side to test_short_side, then the crops."""

    __test__ = False  # not a pytest test class, despite its name

    recipe: Recipe
    input_size: int
    mean: Sequence[float]
    std: Sequence[float]

    def __call__(self, clip: Tensor) -> Tensor:
        short_side = max(scaled_size(self.recipe.test_short_side, self.input_size), self.input_size)
        x = resize_short_side(clip_to_tchw(clip).float(), short_side)
        crops = long_side_crops(x, self.input_size, self.recipe.test_crops)
        return normalize(torch.stack(crops), self.mean, self.std)


def train_transform(
    recipe: Recipe, input_size: int, mean: Sequence[float], std: Sequence[float]
) -> ClipTransform:
    """The recipe's training augmentation at `input_size` (see TrainTransform)."""
    return TrainTransform(recipe, input_size, tuple(mean), tuple(std))


def test_views(recipe: Recipe, input_size: int, mean: Sequence[float], std: Sequence[float]) -> ClipTransform:
    """The recipe's test views at `input_size` (see TestViews)."""
    return TestViews(recipe, input_size, tuple(mean), tuple(std))


# The name starts with "test_": tell pytest it is not a test when a test module imports it.
test_views.__test__ = False
