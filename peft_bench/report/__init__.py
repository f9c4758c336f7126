"""From tracked runs to what a reader sees: ``gather`` (runs or result records -> one frame, and which runs
count), ``aggregate`` (seeds -> mean ± std, the columns and the order of the rows), ``cells`` (numbers as text,
cost columns), ``paper`` (the paper's and the later methods' authors' figures beside the measurements, the
system tables), ``table`` (the reports and ``peft-bench table``), ``table_output`` (Markdown, CSV, LaTeX,
HTML, JSON), ``plot`` (Figure 1 and the Pareto plots) and ``page`` (the static leaderboard page).

May import ``track``, ``measure``, ``config``, ``method_api``, ``data``, ``backbones``, ``reference`` and the leaf
modules; never ``train``, ``launch`` or ``cli``.
"""
