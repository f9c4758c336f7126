"""The one exception a user's mistake raises, so that the command line can tell it from a bug.

A :class:`UserError` (a bad config value or ``--set``, an unknown method, dataset or backbone, a damaged
tracking store, a flag out of range, ...) is printed by ``peft-bench`` as one line and exits 2; anything
else is a bug and keeps its traceback (exit 1). It is a ``ValueError``, so code and tests that catch
``ValueError`` around a user's input keep working. A leaf module: it imports nothing of peft-bench.
"""

from __future__ import annotations


class UserError(ValueError):
    """A mistake in what the user asked for; the message says what, and where possible how to fix it."""
