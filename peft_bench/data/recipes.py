"""Loading data recipes (frame sampling + augmentation) from `benchmarks/recipes/*.yaml` (package data of
`peft_bench.benchmarks`) or a given file."""

from __future__ import annotations

from pathlib import Path

import yaml

from peft_bench.benchmarks import recipe_folder
from peft_bench.data.transforms import Recipe, RecipeValueError, recipe_field_names


def available_recipes() -> list[str]:
    return sorted(entry.name[: -len(".yaml")] for entry in recipe_folder().iterdir() if entry.name.endswith(".yaml"))


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
    resource = recipe_folder() / f"{name_or_path}.yaml"
    if not resource.is_file():
        raise ValueError(f"unknown recipe {name_or_path!r}; available: {', '.join(available_recipes())}")
    return str(resource), resource.read_text(encoding="utf-8")
