"""From tracked runs to what a reader sees: the tables (gathered, aggregated, beside the paper's figures,
written as Markdown, CSV, LaTeX, HTML, JSON), the plots and the static leaderboard page.

May import ``track``, ``measure``, ``config``, ``method_api``, ``data``, ``backbones``, ``reference`` and the leaf
modules; never ``train``, ``launch`` or ``cli``.
"""
