"""`python -m bln_search.cli`: how local workers are started (the same interpreter as their parent)."""

from bln_search.cli import program

program()
