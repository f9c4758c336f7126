"""The benchmark's recipes and speed benchmarks; installed as ``peft_bench.benchmarks``."""

from importlib.resources import files
from importlib.resources.abc import Traversable


def recipe_folder() -> Traversable:
    """The packaged data recipes (``recipes/<dataset>.yaml``), read through importlib.resources."""
    return files(__name__) / "recipes"
