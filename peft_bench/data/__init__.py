"""Video datasets: from annotation files and video files to clips a DataLoader batches.

What a dataset is lives in ``specs.py`` (one registered ``DatasetSpec`` per dataset); ``layouts.py`` reads its
annotation files, ``recipes/`` holds its sampling and augmentation, ``decode.py``, ``sampling.py`` and
``transforms.py`` turn a video into a clip, ``dataset.py`` is the PyTorch dataset, and ``build.py``'s
``build_dataset`` puts them together. Real datasets (Kinetics-400, Something-Something v2, list files) and the
embedded synthetic ones (``synthetic.py``) go through the same readers, decoders and recipes; ``check.py`` and
``prepare.py`` are ``peft-bench data``.

The package itself imports only the registry, so that the command line and the tables can name datasets
without importing torch. ``data`` is a floor above the leaf modules only: it imports nothing else of
peft_bench's.
"""

from __future__ import annotations

from peft_bench.data.specs import (
    DatasetSpec,
    available_datasets,
    embedded_datasets,
    find_dataset,
    get_dataset,
    register_dataset,
)

__all__ = ["DatasetSpec", "available_datasets", "embedded_datasets", "find_dataset", "get_dataset", "register_dataset"]
