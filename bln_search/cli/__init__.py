"""The `bln-search` command line: each command parses its options, calls the Python API and renders.

`_app.py` holds the app, the shared options and the error handler; each
command group has its module. Nothing heavy is imported at module level.
"""

from __future__ import annotations

from bln_search.cli import results, run, train  # noqa: F401  (registers the commands)
from bln_search.cli._app import app, program

__all__ = ["app", "program"]
