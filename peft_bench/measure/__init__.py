"""What a method costs: trainable parameters and GFLOPs (fvcore, attention counted), as the paper counts them.

May import ``track``, ``config``, ``method_api``, ``backbones`` and the leaf modules; never ``train``, ``report``,
``launch`` or ``cli``.
"""
