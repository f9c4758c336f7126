"""Data recipes (frame sampling + augmentation): the YAML files beside this module (package data, one per
dataset spec's `recipe`) or a given file, and changing one for a run (`--set recipe.KEY=VALUE`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from peft_bench.data.specs import recipe_file
from peft_bench.data.transforms import Recipe, RecipeValueError, recipe_field_names


def available_recipes() -> list[str]:
    return sorted(entry.name[: -len(".yaml")] for entry in files(__name__).iterdir() if entry.name.endswith(".yaml"))


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A packaged recipe by name (`k400`, `ssv2`, ...) or a YAML file by path.

    Unknown keys and bad values raise ValueError naming the file and the key.
    """
    source, text = _recipe_text(name_or_path)
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(f"recipe {source}: not valid YAML ({error})") from error
    if not isinstance(values, dict):
        raise ValueError(f"recipe {source}: expected a mapping of recipe keys, got {type(values).__name__}")
    known = set(recipe_field_names())
    for key in values:
        if key not in known:
            raise ValueError(f"recipe {source}: unknown key {key!r} (known keys: {', '.join(sorted(known))})")
    values.setdefault("name", Path(str(name_or_path)).stem)
    if "sampling" not in values:
        raise ValueError(f"recipe {source}: missing key 'sampling'")
    try:
        return Recipe(**values)
    except RecipeValueError as error:
        raise ValueError(f"recipe {source}: key {error.key!r} {error.problem}") from error


# Fields a run does not take from its recipe settings: the name is the dataset's, and the run's own
# `num_frames` sets the frame count.
NOT_SETTINGS = ("name", "num_frames")


def with_settings(recipe: Recipe, settings: Mapping[str, Any]) -> Recipe:
    """`recipe` with some fields changed (`{"interpolation": "bilinear"}`); a bad key or value raises
    ValueError naming it as `recipe.KEY`."""
    known = [name for name in recipe_field_names() if name not in NOT_SETTINGS]
    for key in settings:
        if key == "num_frames":
            raise ValueError("recipe.num_frames: set the run's num_frames instead")
        if key not in known:
            raise ValueError(f"unknown key recipe.{key}; valid keys: {', '.join(known)}")
    try:
        return dataclasses.replace(recipe, **settings)
    except RecipeValueError as error:
        raise ValueError(f"recipe.{error.key}: {error.problem}") from None
    except TypeError as error:  # a value YAML could not have meant
        raise ValueError(f"recipe: {error}") from None


def recipe_settings(recipe: Recipe) -> dict[str, Any]:
    """A recipe's fields as plain data for a run's config (lists, not tuples), without `NOT_SETTINGS`."""
    return {
        name: list(value) if isinstance(value, tuple) else value
        for name, value in dataclasses.asdict(recipe).items()
        if name not in NOT_SETTINGS
    }


def _looks_like_path(name_or_path: str | Path) -> bool:
    text = str(name_or_path)
    return isinstance(name_or_path, Path) or text.endswith((".yaml", ".yml")) or "/" in text or "\\" in text


def _recipe_text(name_or_path: str | Path) -> tuple[str, str]:
    """(a description of the source for messages, the YAML text)."""
    if _looks_like_path(name_or_path):
        path = Path(name_or_path)
        if not path.is_file():
            raise FileNotFoundError(f"recipe file {path} does not exist")
        return str(path), path.read_text(encoding="utf-8")
    resource = recipe_file(str(name_or_path))
    if not resource.is_file():
        raise ValueError(f"unknown recipe {name_or_path!r}; available: {', '.join(available_recipes())}")
    return str(resource), resource.read_text(encoding="utf-8")
