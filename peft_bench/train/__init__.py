"""Training one run: the shared runner (build, data, train loop, evaluation, record), the frozen-feature
cache, data-parallel training, preemption and the step-cost options.

May import everything below it: ``track``, ``measure``, ``config``, ``method_api``, ``data``, ``backbones`` and
the leaf modules; never ``report``, ``launch`` or ``cli``.
"""
