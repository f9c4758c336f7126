"""peft-bench: benchmark parameter-efficient image-to-video transfer.

Where things live: ``backbones/`` (image models behind one interface), ``registry.py`` (methods by
name; the methods themselves are the repository's ``methods/``, installed as ``peft_bench.methods``),
``data/`` (decoding, sampling, augmentation, datasets), ``runner.py`` (training and evaluation),
``tracking.py`` (mlflow), ``table.py`` (the paper's table from tracked runs), ``reference/`` (the paper's
figures, package data), ``cli.py`` (the ``peft-bench`` command).
"""

__version__ = "0.1.0"
