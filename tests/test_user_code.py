"""User code that escapes the usual `Exception`: one `error:` line, nothing RUNNING, and an exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from bln_search.cli import app
from tests.fixtures import models

FIX = str(Path(models.__file__).resolve())
BIN = Path(sys.executable).parent

ESCAPES = [
    (["--model", f"{FIX}:build_raises_base_exception"], "raised FactoryAbort: the factory gave up"),
    (["--model", f"{FIX}:build_exits"], "model factory called sys.exit(3)"),
    (
        ["--model", f"{FIX}:build", "--data", f"{FIX}:data_raises_base_exception"],
        "raised FactoryAbort: the data function gave up",
    ),
    (
        ["--model", f"{FIX}:build_gives_up_in_a_trial", "--strategy", "per-trial"],
        "raised FactoryAbort: the factory gave up in a trial",
    ),
]


@pytest.mark.parametrize("args, message", ESCAPES, ids=[m for _, m in ESCAPES])
def test_user_code_raising_any_base_exception_is_one_line(storage, args, message):
    result = CliRunner().invoke(
        app, ["run", *args, "--storage", storage, "--study", "escapes", "--epochs", "1", "-q"]
    )
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1, result.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    try:
        study = optuna.load_study(study_name="escapes", storage=storage)
    except KeyError:
        return  # stopped before the study was created
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))


@pytest.mark.slow
def test_the_process_exits_when_the_search_ends_although_user_code_left_a_thread(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("BLN_SEARCH_STORAGE", None)
    command = [str(BIN / "bln-search"), "run", "--model", f"{FIX}:build_leaves_a_thread"]
    result = subprocess.run(
        [*command, "--epochs", "1", "-q"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=240,  # the thread sleeps 600 s: without the fix the process waits for it
    )
    assert result.returncode == 0, result.stderr
    assert "stored in study" in result.stderr and "Traceback" not in result.stderr


def test_the_fast_exit_after_tensorflow_still_runs_exit_handlers_and_keeps_the_exit_code(tmp_path):
    """`program` skips TensorFlow's slow interpreter teardown, but not what `atexit` promises."""
    proof = tmp_path / "proof"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "EXIT_PROOF": str(proof)}
    env.pop("BLN_SEARCH_STORAGE", None)
    result = subprocess.run(
        [str(BIN / "bln-search"), "run", "--model", f"{FIX}:build_registers_an_exit_handler"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: model factory raised RuntimeError: the factory broke after registering an exit "
        "handler"
    ]
    assert proof.read_text() == "ran"
