"""What a method costs: trainable parameters and GFLOPs (fvcore, attention counted), as the paper counts them.

May import ``track``, ``config``, ``method_api``, ``backbones``, ``data`` (the dataset specs) and the leaf modules
(``reference``: the paper's order of methods); never ``train``, ``report``, ``launch`` or ``cli``.
"""
