"""Where a run is written down: the mlflow tracker and its local journal, the JSON result record (and its
schema), and the provenance footer (commits, versions, hardware).

May import ``config``, ``method_api``, ``data``, ``backbones`` and the leaf modules; never ``train``,
``measure``, ``report``, ``launch`` or ``cli``.
"""
