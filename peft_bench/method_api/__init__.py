"""The method API: what a method in ``methods/`` builds on.

- ``registry``: ``@register_method``, what a method's ``build`` must be (``BuildMethod``), ``MethodSpec``.
- ``context``: ``RunContext``, what a method may know about the run it is built for.
- ``model``: ``VideoClassifier`` (backbone -> features -> pooling -> head) and the shared pooling heads.
- ``optim``: the optimizer's view of a model (weight-decay exemptions, parameter groups) and ``make_optimizer``.
- ``layers`` and ``temporal``: building blocks several methods share (hooking into a block, temporal layers).
- ``checks``: what every registered method claims, measured on randomly initialised backbones.

May import: ``backbones``, ``reference`` and the leaf modules (``dataclass_io``, ``precision``, ``system``);
never ``config``, ``train``, ``track``, ``report``, ``launch`` or ``cli``.
"""
