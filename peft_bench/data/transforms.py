"""Clip-level augmentations and test views.

By default these are the released ST-Adapter code's (linziyi96/st-adapter at b914b38: ``video_dataset/dataset.py``
and ``video_dataset/transform.py``): RandAugment through timm on the full frames before the crop, short-side
jitter or a random resized crop with bicubic resizing and no antialias, a horizontal flip after the crop.
Each choice is a recipe field, so the earlier peft-bench behaviour (and the fix of a released bug) stays one
setting away; ``peft_bench/data/recipes/*.yaml`` say which the released code used and where.

Every transform works on a whole clip at once, so one random draw (crop box, flip, RandAugment ops and
magnitudes) applies to every frame: per-frame draws would add fake motion. Randomness comes from torch's
global generator only, so a dataset can make an item reproducible by seeding that generator (inside
`torch.random.fork_rng`); timm's RandAugment draws from Python's and NumPy's global generators, which are
seeded from torch's for the clip and restored afterwards.

Recipe sizes are written for 224-pixel input and scaled by `input_size / 224`, so one recipe serves both
ViT-B/16 at 224 px and a 32-px toy backbone.
"""

from __future__ import annotations

import contextlib
import math
import random
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Literal, TypeGuard, get_args

import numpy as np
import torch
import torch.nn.functional as nnf
from PIL import Image
from torch import Tensor
from torchvision.transforms import InterpolationMode, RandAugment, RandomResizedCrop

from peft_bench.data.sampling import FRAME_INDEX_FORMULAS, FrameIndexFormula
from peft_bench.errors import UserError

REFERENCE_INPUT_SIZE = 224
# The recipe's choice fields: each Literal is the field's type, and its tuple what _validate_recipe accepts.
Sampling = Literal["dense", "segment"]
Interpolation = Literal["bicubic", "bilinear"]
ShortSideDraw = Literal["float", "integer"]
CropOffsets = Literal["released", "all"]
RandAugmentLibrary = Literal["timm", "torchvision"]
RandAugmentPlace = Literal["before_crop", "after_crop"]
SAMPLINGS: tuple[Sampling, ...] = get_args(Sampling)
INTERPOLATIONS: tuple[Interpolation, ...] = get_args(Interpolation)
SHORT_SIDE_DRAWS: tuple[ShortSideDraw, ...] = get_args(ShortSideDraw)
CROP_OFFSETS: tuple[CropOffsets, ...] = get_args(CropOffsets)
RANDAUGMENT_LIBRARIES: tuple[RandAugmentLibrary, ...] = get_args(RandAugmentLibrary)
RANDAUGMENT_PLACES: tuple[RandAugmentPlace, ...] = get_args(RandAugmentPlace)
# RandAugment magnitudes follow the 0..10 scale of the RandAugment paper and timm ("m7" = 7/10 of the
# maximum), so torchvision gets 11 bins instead of its default 31.
RANDAUGMENT_MAGNITUDE_BINS = 11

ClipTransform = Callable[[Tensor], Tensor]


class RecipeValueError(UserError):
    """A recipe field has a bad value; `key` names the field."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


@dataclass
class Recipe:
    """Frame sampling and augmentation of one benchmark, with sizes written for 224-pixel input.

    Defaults are the released ST-Adapter code's choices; the alternatives are peft-bench's earlier ones
    (``legacy``, ``integer``, ``bilinear`` with ``antialias``, torchvision's RandAugment after the crop) and
    the fix of a released off-by-one (``crop_offsets: all``).
    """

    name: str
    sampling: Sampling  # "dense" (fixed stride) or "segment" (TSN uniform segments)
    num_frames: int = 8
    stride: int = 16  # dense sampling only
    frame_indices: FrameIndexFormula = "released"  # the sampler's formula: "released" or "legacy" (see sampling.py)
    train_short_side_range: tuple[int, int] | None = None  # short-side jitter, then a random square crop
    short_side_draw: ShortSideDraw = "float"  # "float": round(uniform(low, high)); "integer": uniform over low..high
    crop_offsets: CropOffsets = "released"  # "released": never the last offset (an off-by-one); "all": every offset
    train_random_resized_crop_area: tuple[float, float] | None = None  # e.g. (0.08, 1.0)
    hflip: bool = False
    randaugment: str | None = None  # timm's grammar, e.g. "rand-m7-n4-mstd0.5-inc1"
    randaugment_library: RandAugmentLibrary = "timm"  # "timm", or "torchvision" (ops always applied; only m and n)
    randaugment_at: RandAugmentPlace = "before_crop"  # "before_crop" (the full frame) or "after_crop"
    interpolation: Interpolation = "bicubic"  # of every resize, and of RandAugment's geometric ops
    antialias: bool = False  # when shrinking
    test_short_side: int = 224
    test_crops: int = 1  # 1 centre crop, or 3 along the long side
    test_clips: int = 1

    def __post_init__(self) -> None:
        # YAML gives lists; keep tuples so recipes compare and hash predictably.
        for key in ("train_short_side_range", "train_random_resized_crop_area"):
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
    """The field values a recipe was given (from YAML or --set, so not yet of the fields' types) checked."""
    name: object = recipe.name
    if not isinstance(name, str) or not name:
        raise RecipeValueError("name", f"must be a non-empty string, got {name!r}")
    choices = {
        "sampling": SAMPLINGS,
        "frame_indices": FRAME_INDEX_FORMULAS,
        "short_side_draw": SHORT_SIDE_DRAWS,
        "crop_offsets": CROP_OFFSETS,
        "randaugment_library": RANDAUGMENT_LIBRARIES,
        "randaugment_at": RANDAUGMENT_PLACES,
        "interpolation": INTERPOLATIONS,
    }
    for key, allowed in choices.items():
        if getattr(recipe, key) not in allowed:
            raise RecipeValueError(key, f"must be one of {', '.join(allowed)}; got {getattr(recipe, key)!r}")
    for key in ("num_frames", "stride", "test_short_side", "test_clips", "test_crops"):
        _require_positive_int(key, getattr(recipe, key))
    if recipe.test_crops not in (1, 3):
        raise RecipeValueError("test_crops", f"must be 1 or 3, got {recipe.test_crops}")
    if recipe.test_short_side < REFERENCE_INPUT_SIZE:
        raise RecipeValueError(
            "test_short_side", f"must be at least the {REFERENCE_INPUT_SIZE}-pixel crop, got {recipe.test_short_side}"
        )
    for key in ("hflip", "antialias"):
        if not isinstance(getattr(recipe, key), bool):
            raise RecipeValueError(key, f"must be true or false, got {getattr(recipe, key)!r}")
    _validate_short_side_range(recipe.train_short_side_range)
    _validate_crop_area(recipe.train_random_resized_crop_area)
    if recipe.train_short_side_range is not None and recipe.train_random_resized_crop_area is not None:
        raise RecipeValueError(
            "train_random_resized_crop_area", "give either train_short_side_range or a random resized crop, not both"
        )
    if recipe.randaugment is not None:
        _randaugment_settings(recipe.randaugment, recipe.randaugment_library)


def _require_positive_int(key: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RecipeValueError(key, f"must be a positive integer, got {value!r}")


def _is_pair(value: object) -> TypeGuard[tuple[object, object]]:
    return isinstance(value, tuple) and len(value) == 2


def _is_number(value: object, kinds: type | tuple[type, ...]) -> bool:
    return isinstance(value, kinds) and not isinstance(value, bool)


def _is_int_pair(value: object) -> TypeGuard[tuple[int, int]]:
    return _is_pair(value) and all(_is_number(v, int) for v in value)


def _is_number_pair(value: object) -> TypeGuard[tuple[float, float]]:
    return _is_pair(value) and all(_is_number(v, (int, float)) for v in value)


def _validate_short_side_range(value: object) -> None:
    if value is None:
        return
    if not _is_int_pair(value):
        raise RecipeValueError("train_short_side_range", f"must be two integers [low, high], got {value!r}")
    low, high = value
    if not REFERENCE_INPUT_SIZE <= low <= high:
        raise RecipeValueError(
            "train_short_side_range", f"needs {REFERENCE_INPUT_SIZE} <= low <= high, got {list(value)}"
        )


def _validate_crop_area(value: object) -> None:
    if value is None:
        return
    if not _is_number_pair(value):
        raise RecipeValueError("train_random_resized_crop_area", f"must be two numbers [low, high], got {value!r}")
    low, high = value
    if not 0 < low <= high <= 1:
        raise RecipeValueError("train_random_resized_crop_area", f"needs 0 < low <= high <= 1, got {list(value)}")


def _randaugment_settings(config: object, library: RandAugmentLibrary) -> dict[str, int]:
    """The m and n of a RandAugment string in timm's grammar ("rand-m7-n4-mstd0.5-inc1").

    timm's own parser judges a string meant for timm; torchvision's RandAugment has no magnitude noise and
    one op set, so for it only m (0..10) and n may be given.
    """
    if not isinstance(config, str) or not config.startswith("rand"):
        raise RecipeValueError("randaugment", f"must be a string like 'rand-m7-n4-mstd0.5-inc1', got {config!r}")
    if library == "timm":
        # heavy (timm): only for a timm RandAugment
        from timm.data.auto_augment import rand_augment_transform

        try:
            rand_augment_transform(config, {})
        except (AssertionError, ValueError, KeyError) as error:
            raise RecipeValueError(
                "randaugment", f"timm does not accept {config!r} ({str(error) or 'unknown section'})"
            ) from None
        return {}
    settings = {}
    for section in config.split("-")[1:]:
        match = re.fullmatch(r"([mn])(\d+)", section)
        if match is None:
            raise RecipeValueError(
                "randaugment", f"torchvision's RandAugment takes only m and n, got {config!r} (use timm)"
            )
        settings[match.group(1)] = int(match.group(2))
    if not 0 <= settings.get("m", 10) < RANDAUGMENT_MAGNITUDE_BINS or settings.get("n", 2) < 1:
        raise RecipeValueError("randaugment", f"needs n >= 1 and 0 <= m <= 10, got {config!r}")
    return settings


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


def resize(clip: Tensor, size: tuple[int, int], interpolation: Interpolation, antialias: bool) -> Tensor:
    """Float (T, 3, H, W) -> (T, 3, *size); bicubic values may overshoot 0..255, as in the released code."""
    if tuple(clip.shape[-2:]) == tuple(size):
        return clip
    return nnf.interpolate(clip, size=size, mode=interpolation, align_corners=False, antialias=antialias)


def short_side_size(height: int, width: int, short_side: int, *, integer_division: bool) -> tuple[int, int]:
    """(height, width) with the short side at `short_side` and the long one rounded down.

    The released code rounds down in two ways: float division for training (``random_short_side_scale_jitter``)
    and integer division for test (``VideoDataset.__getitem__``); they disagree by a pixel on rare sizes.
    """
    if height <= width:
        long = width * short_side // height if integer_division else math.floor(width / height * short_side)
        return short_side, long
    long = height * short_side // width if integer_division else math.floor(height / width * short_side)
    return long, short_side


def draw_short_side(low: int, high: int, draw: ShortSideDraw) -> int:
    if draw == "integer":
        return int(torch.randint(low, high + 1, (1,)))
    # round(uniform(low, high)), as released: the two ends come up half as often as the sizes between.
    return round(low + (high - low) * float(torch.rand((), dtype=torch.float64)))


def random_square_crop(clip: Tensor, size: int, offsets: CropOffsets) -> Tensor:
    height, width = clip.shape[-2:]
    top, left = _crop_offset(height, size, offsets), _crop_offset(width, size, offsets)
    return clip[..., top : top + size, left : left + size]


def _crop_offset(length: int, size: int, offsets: CropOffsets) -> int:
    if length == size:
        return 0
    # The released random_crop draws np.random.randint(0, length - size), whose upper end is exclusive: the
    # last offset (a crop touching the bottom or right edge) never comes up.
    last = length - size - 1 if offsets == "released" else length - size
    return int(torch.randint(0, last + 1, (1,)))


def random_resized_crop(
    clip: Tensor, area: tuple[float, float], size: int, interpolation: Interpolation, antialias: bool
) -> Tensor:
    # One box for the whole clip: get_params reads only the clip's height and width. Its draw has the
    # distribution of the released _get_param_spatial_crop (area, log aspect ratio 3/4..4/3, 10 tries,
    # then the centre).
    top, left, height, width = RandomResizedCrop.get_params(clip, scale=list(area), ratio=[3 / 4, 4 / 3])
    return resize(clip[..., top : top + height, left : left + width], (size, size), interpolation, antialias)


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


def to_uint8(clip: Tensor) -> Tensor:
    return clip if clip.dtype == torch.uint8 else clip.round().clamp(0, 255).to(torch.uint8)


# ------------------------------------------------------------------------------------------ RandAugment


@contextlib.contextmanager
def replayed_global_rngs(seed: int) -> Iterator[Callable[[], None]]:
    """Seed Python's and NumPy's global generators; yield a function that puts them back to that seeded state;
    restore the caller's states on exit. Calling it before each frame gives every frame the same draws."""
    saved = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed)
    seeded = random.getstate(), np.random.get_state()

    def replay() -> None:
        random.setstate(seeded[0])
        np.random.set_state(seeded[1])

    try:
        yield replay
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])


def timm_randaugment_clip(
    frames: np.ndarray, config: str, seed: int, interpolation: Interpolation = "bicubic"
) -> np.ndarray:
    """timm's `rand_augment_transform(config)` on every frame of uint8 (T, H, W, 3) `frames`, with the same ops,
    probabilities, magnitudes and signs on each: its draws are replayed from `seed` for every frame.

    The hyper-parameters are the released code's (``transform.py`` ``create_random_augment``): translate_const
    45% of the short side, the recipe's interpolation, timm's grey fill. Histogram ops (AutoContrast,
    Equalize) read each frame's own histogram, as there, so they can change from frame to frame.
    """
    # heavy (timm): only for a timm RandAugment
    from timm.data.auto_augment import rand_augment_transform

    height, width = frames.shape[1:3]
    pil_mode = Image.Resampling.BICUBIC if interpolation == "bicubic" else Image.Resampling.BILINEAR
    transform = rand_augment_transform(
        config, {"translate_const": int(min(height, width) * 0.45), "interpolation": pil_mode}
    )
    out = np.empty_like(frames)
    with replayed_global_rngs(seed) as replay:
        for t, frame in enumerate(frames):
            replay()
            out[t] = np.asarray(transform(Image.fromarray(frame)))
    return out


@dataclass
class ClipRandAugment:
    """uint8 (T, 3, H, W) -> uint8 (T, 3, H, W): one RandAugment draw for the whole clip (timm or torchvision)."""

    config: str
    library: RandAugmentLibrary = "timm"
    interpolation: Interpolation = "bicubic"

    def __post_init__(self) -> None:
        self.torchvision = None
        if self.library == "torchvision":
            settings = _randaugment_settings(self.config, "torchvision")
            # torchvision draws the ops once per call and applies them to the whole (T, 3, H, W) tensor. Its
            # geometric ops on tensors take nearest or bilinear only: bilinear, as peft-bench used it.
            self.torchvision = RandAugment(
                num_ops=settings.get("n", 2),
                magnitude=settings.get("m", 10),
                num_magnitude_bins=RANDAUGMENT_MAGNITUDE_BINS,
                interpolation=InterpolationMode.BILINEAR,
            )

    def __call__(self, clip: Tensor) -> Tensor:
        if self.torchvision is not None:
            return self.torchvision(clip.contiguous())
        seed = int(torch.randint(0, 2**32, (), dtype=torch.int64))  # the clip's draw, from torch's generator
        frames = clip.permute(0, 2, 3, 1).contiguous().numpy()
        out = timm_randaugment_clip(frames, self.config, seed, self.interpolation)
        return torch.from_numpy(out).permute(0, 3, 1, 2)


# --------------------------------------------------------------------------------------------- pipelines
# Transforms are dataclasses rather than closures so that datasets holding them pickle into DataLoader
# workers started with "spawn" or "forkserver" (macOS, Python 3.14+).


@dataclass
class TrainTransform:
    """uint8 (T, H, W, 3) -> float32 (T, 3, S, S): the recipe's training augmentation, one draw per clip.

    Order as released: RandAugment on the full frames, then the crop (short-side jitter and a random square,
    or a random resized crop), then the flip. ``randaugment_at: after_crop`` moves RandAugment last.
    """

    recipe: Recipe
    input_size: int
    mean: Sequence[float]
    std: Sequence[float]

    def __post_init__(self) -> None:
        recipe = self.recipe
        self.randaugment = None
        if recipe.randaugment is not None:
            self.randaugment = ClipRandAugment(recipe.randaugment, recipe.randaugment_library, recipe.interpolation)
        side_range = recipe.train_short_side_range or (REFERENCE_INPUT_SIZE, REFERENCE_INPUT_SIZE)
        low, high = (max(scaled_size(v, self.input_size), self.input_size) for v in side_range)
        self.short_side_range = (low, high)

    def __call__(self, clip: Tensor) -> Tensor:
        recipe, size = self.recipe, self.input_size
        x = clip_to_tchw(clip)
        if self.randaugment is not None and recipe.randaugment_at == "before_crop":
            x = self.randaugment(x)
        x = x.float()  # resizing floats: no rounding back to uint8 after a resize, as in the released code
        if recipe.train_random_resized_crop_area is not None:
            x = random_resized_crop(
                x, recipe.train_random_resized_crop_area, size, recipe.interpolation, recipe.antialias
            )
        else:
            short_side = draw_short_side(*self.short_side_range, recipe.short_side_draw)
            height, width = x.shape[-2:]
            new_size = short_side_size(height, width, short_side, integer_division=False)
            x = random_square_crop(
                resize(x, new_size, recipe.interpolation, recipe.antialias), size, recipe.crop_offsets
            )
        if recipe.hflip:
            x = random_horizontal_flip(x)
        if self.randaugment is not None and recipe.randaugment_at == "after_crop":
            x = self.randaugment(to_uint8(x))
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
        recipe = self.recipe
        short_side = max(scaled_size(recipe.test_short_side, self.input_size), self.input_size)
        x = clip_to_tchw(clip).float()
        height, width = x.shape[-2:]
        new_size = short_side_size(height, width, short_side, integer_division=True)
        x = resize(x, new_size, recipe.interpolation, recipe.antialias)
        crops = long_side_crops(x, self.input_size, recipe.test_crops)
        return normalize(torch.stack(crops), self.mean, self.std)


def train_transform(recipe: Recipe, input_size: int, mean: Sequence[float], std: Sequence[float]) -> ClipTransform:
    """The recipe's training augmentation at `input_size` (see TrainTransform)."""
    return TrainTransform(recipe, input_size, tuple(mean), tuple(std))


def test_views(recipe: Recipe, input_size: int, mean: Sequence[float], std: Sequence[float]) -> ClipTransform:
    """The recipe's test views at `input_size` (see TestViews)."""
    return TestViews(recipe, input_size, tuple(mean), tuple(std))


# The name starts with "test_": tell pytest it is not a test when a test module imports it.
test_views.__test__ = False  # type: ignore[attr-defined]  # pytest reads it; a function takes any attribute
