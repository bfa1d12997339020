"""Loading the user's code: it is found, and it cannot replace the libraries bln-search uses."""

from __future__ import annotations

import subprocess
import sys


def test_the_working_directory_cannot_replace_an_installed_library(tmp_path):
    """`--model mymodel:build` finds mymodel.py in the working directory, after installed packages."""
    (tmp_path / "mymodel.py").write_text("def build():\n    return None\n")
    (tmp_path / "optuna_integration.py").write_text("raise SystemExit('the shadow ran')\n")
    code = (
        "from bln_search.loading import resolve_callable; resolve_callable('mymodel:build'); "
        "import optuna_integration; print(optuna_integration.__file__)"
    )
    # -P: like the `bln-search` script, python itself puts no working directory on sys.path.
    out = subprocess.run(
        [sys.executable, "-P", "-c", code], cwd=tmp_path, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "site-packages" in out.stdout
