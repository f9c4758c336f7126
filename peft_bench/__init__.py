"""peft-bench: benchmark parameter-efficient image-to-video transfer.

Where things live, top floor first (a module imports only from floors below it; docs/architecture.md):
``cli.py`` (the ``peft-bench`` command); ``launch/`` (a command's runs side by side, SLURM sweeps);
``report/`` (tables, plots, the leaderboard page); ``train/`` (one run: the runner's stages, feature cache,
DDP, preemption); ``measure/`` (parameters and GFLOPs); ``track/`` (the tracker and its journal, result
records); ``config.py`` (what a run is); the methods themselves (the repository's ``methods/``, installed as
``peft_bench.methods``) on ``method_api/`` (registry, classifier, shared layers, optimizer, checks);
``backbones/`` (image models behind one interface); ``data/`` (dataset specs, decoding, sampling,
augmentation); and the leaf modules ``dataclass_io.py``, ``precision.py``, ``system.py``, ``errors.py``,
``reference/`` (the figures reported by others, package data).
"""

__version__ = "0.1.0"
