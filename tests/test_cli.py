"""The `bln-search` command line: bad input in-process, the whole workflow through real subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

import bln_search
from bln_search.cli import app
from tests.fixtures import models

FIXTURES = Path(models.__file__).resolve()
FIX = str(FIXTURES)
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def bln_search_command(*args, cwd, timeout=600, env=None):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    return subprocess.run(
        [str(BIN / "bln-search"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_help_does_not_import_tensorflow():
    code = (
        "import sys; from typer.testing import CliRunner; from bln_search.cli import app; "
        "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output; "
        "assert 'run' in r.output; "
        "print(sorted(m for m in ('tensorflow', 'keras', 'optuna', 'pandas') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_version_is_an_eager_option():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"bln-search {bln_search.__version__}"


@pytest.mark.parametrize("command", [[], ["run"], ["export"], ["leaderboard"], ["train"]])
def test_help_shows_flags_as_flags(command):
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.output
    assert "--help" in result.output


@pytest.fixture(scope="module")
def existing(tmp_path_factory):
    """A storage holding one finished study, which no bad input may change."""
    folder = tmp_path_factory.mktemp("cli")
    url = f"sqlite:///{folder / 'study.db'}"
    data = bln_search.check_data(models.load_data())
    bln_search.search(
        models.build,
        data,
        study_name="existing",
        storage=url,
        epochs=1,
        sampler=optuna.samplers.RandomSampler(0),
        n_trials=2,
    )
    return folder, url


def snapshot(url):
    study = optuna.load_study(study_name="existing", storage=url)
    return [(t.number, t.state, t.value, t.params) for t in study.trials]


BAD_RUNS = [
    (["--model", "nocolon"], "expected MODULE:FUNCTION"),
    (["--model", "no_such_module_xyz:build"], "module not found: no_such_module_xyz"),
    (["--model", f"{FIX}:nope"], "has no function 'nope'"),
    (["--model", "missing/file.py:build"], "file not found"),
    (["--model", f"{FIX}:build_raises"], "raised RuntimeError: the factory broke"),
    (["--model", f"{FIX}:build_none"], "must return a keras.Model, got NoneType"),
    (["--model", f"{FIX}:build_uncompiled"], "uncompiled model"),
    (["--model", f"{FIX}:build_without_bln"], "without any bln_search.BatchLayerNormalization"),
    (["--model", f"{FIX}:build", "--data", f"{FIX}:data_three_parts"], "(train, validation) pair"),
    (
        ["--model", f"{FIX}:build", "--data", f"{FIX}:data_mismatched_lengths"],
        "x has 96 samples but y has 91",
    ),
    (["--model", f"{FIX}:build", "--data", f"{FIX}:data_empty"], "training data is empty"),
    (
        ["--model", f"{FIX}:build", "--data", f"{FIX}:data_wrong_shape"],
        "data has sample shape (4,) but the model expects (6,)",
    ),
    (["--model", f"{FIX}:build", "--data", "nowhere.npz"], "cannot read nowhere.npz"),
    (
        ["--model", f"{FIX}:build", "--metric", "val_nosuch", "--direction", "minimize"],
        "metric 'val_nosuch' is not one the model reports",
    ),
    (["--model", f"{FIX}:build", "--metric", "val_accuracy"], 'metric: "val_loss" in the study'),
    (["--model", f"{FIX}:build", "--metric", "accuracy"], "'accuracy' is a training metric"),
    (["--model", f"{FIX}:build", "--metric", "val_acuracy"], "'val_acuracy' is not one the model"),
    (
        ["--model", f"{FIX}:build", "--data", f"{FIX}:data_bad_labels"],
        "training labels must be class indices 0..1 for the model's 2 outputs, found 15",
    ),
    (
        ["--model", f"{FIX}:build_subclassed", "--baselines"],
        "cannot build the BatchNormalization baseline",
    ),
    (
        [
            "--model",
            f"{FIX}:build",
            "--data",
            f"{FIX}:data_batched_dataset",
            "--batch-sizes",
            "4,64",
        ],
        "the training dataset comes batched at 16",
    ),
    (
        ["--model", f"{FIX}:build_other", "--sampler", "random", "--trials", "3"],
        "cannot take this run's results (model: build [",
    ),
    (["--model", f"{FIX}:build", "--sampler", "tpe"], "needs --trials"),
    (
        ["--model", f"{FIX}:build", "--batch-sizes", "8,97"],
        "cannot search at batch size 97: the training data has only 96 samples",
    ),
    (
        ["--model", f"{FIX}:build", "--strategy", "per-trial", "--configs-per-training", "4"],
        "--configs-per-training only applies to the shared strategy",
    ),
    (["--model", f"{FIX}:build_with_trial", "--strategy", "shared"], "set --strategy to per-trial"),
    (
        ["--model", f"{FIX}:build", "--data", f"{FIX}:data_generators"],
        "training data: x and y must be arrays, got generator",
    ),
]


@pytest.mark.parametrize("args, message", BAD_RUNS, ids=[m for _, m in BAD_RUNS])
def test_bad_run_input_is_one_line_and_leaves_the_study_untouched(existing, args, message):
    folder, url = existing
    before = snapshot(url)
    result = CliRunner().invoke(
        app, ["run", *args, "--storage", url, "--study", "existing", "--epochs", "1", "-q"]
    )
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.output
    assert snapshot(url) == before


@pytest.mark.parametrize(
    "storage, message",
    [
        (
            "postgresql://someone:hunter2@127.0.0.1:1/nodb",
            "cannot open storage postgresql://someone:***@127.0.0.1:1/nodb",
        ),
        ("not-a-url", "must be a database URL"),
        ("nosuchdriver://x/y", "cannot open storage"),
    ],
)
def test_unreachable_or_malformed_storage(storage, message):
    result = CliRunner().invoke(app, ["run", "--model", f"{FIX}:build", "--storage", storage, "-q"])
    assert result.exit_code == 1
    assert message in result.stderr and "hunter2" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_nan_loss_in_every_trial(tmp_path):
    url = f"sqlite:///{tmp_path / 'nan.db'}"
    result = CliRunner().invoke(
        app,
        [
            "run",
            "--model",
            f"{FIX}:build_nan",
            "--storage",
            url,
            "--epochs",
            "1",
            "-q",
            "--pruner",
            "none",
        ],
    )
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: all 16 trials failed")
    assert len(optuna.load_study(study_name="models-build_nan", storage=url).trials) == 16


@pytest.mark.parametrize("command", ["leaderboard", "export"])
def test_unknown_study(existing, command):
    _, url = existing
    result = CliRunner().invoke(app, [command, "--storage", url, "--study", "nosuch"])
    assert result.exit_code == 1
    assert "no study named 'nosuch'; studies here: existing" in result.stderr


BEST = {"schema": "bln-search/best-config", "schema_version": 1, "config": {
    "batch_moving_mean": True, "batch_moving_var": True,
    "feature_moving_mean": False, "feature_moving_var": False,
}}  # fmt: skip
BAD_CONFIGS = [
    ("{broken", "is not valid JSON"),
    ('{"a": 1}', "not a bln-search configuration"),
    (b'{"schema": "\xff\xfe"}', "is not UTF-8 text"),
    ("[" * 200_000 + "]" * 200_000, "is nested too deeply"),
    (json.dumps({**BEST, "schema_version": True}), "has schema_version True"),
]


@pytest.mark.parametrize("content, message", BAD_CONFIGS, ids=[m for _, m in BAD_CONFIGS])
def test_train_rejects_malformed_config(tmp_path, content, message):
    path = tmp_path / "best.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--model",
            f"{FIX}:build",
            "--config",
            str(path),
            "-o",
            str(tmp_path / "m.keras"),
        ],
    )
    assert result.exit_code == 1 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "unexpected" not in result.stderr
    assert not (tmp_path / "m.keras").exists()


@pytest.mark.parametrize("command", ["train", "export", "report"])
def test_writing_into_a_missing_folder_fails_before_any_work(existing, tmp_path, command):
    (tmp_path / "best.json").write_text(json.dumps(BEST))
    args = {
        "train": ["--model", f"{FIX}:build", "-c", str(tmp_path / "best.json"), "--epochs", "500"],
        "export": ["--storage", existing[1]],
        "report": ["--storage", existing[1]],
    }[command]
    target = tmp_path / "no" / "out.keras"
    result = CliRunner().invoke(app, [command, *args, "-o", str(target)])
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"folder {tmp_path / 'no'} does not exist" in lines[0], result.stderr


@pytest.mark.parametrize("name", ["a[/]b", "[bold red]red[/]"])
def test_user_strings_print_as_text_not_markup(tmp_path, name):
    url = f"sqlite:///{tmp_path / 's.db'}"
    wide = {"COLUMNS": "400"}
    ran = CliRunner().invoke(
        app,
        ["run", "--model", f"{FIX}:build", "--storage", url, "--study", name, "--epochs", "1",
         "--sampler", "random", "--trials", "2", "-q"],
        env=wide,
    )  # fmt: skip
    assert ran.exit_code == 0, ran.output
    assert f"stored in study {name}; export the best with: bln-search export --study '{name}'" in (
        ran.stderr
    )
    for command in (["studies"], ["leaderboard", "--study", name]):
        shown = CliRunner().invoke(app, [*command, "--storage", url], env=wide)
        assert shown.exit_code == 0, shown.output
        assert name in shown.output


@pytest.mark.slow
def test_run_leaderboard_export_train_through_real_subprocesses(tmp_path):
    """The README's workflow on the digits CNN, each step a real `bln-search` process."""
    model = f"{ROOT / 'studies' / 'digits_cnn.py'}:build"
    run = bln_search_command(
        "run", "--model", model, "--epochs", "2", "--pruner", "none", cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr and (tmp_path / "bln-search.db").exists()

    board = bln_search_command("leaderboard", "--format", "json", cwd=tmp_path)
    assert board.returncode == 0, board.stderr
    rows = json.loads(board.stdout)
    assert len(rows) == 16 and [r["rank"] for r in rows] == list(range(1, 17))
    assert {r["state"] for r in rows} == {"complete"}

    exported = bln_search_command("export", "-o", "best.json", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    document = json.loads((tmp_path / "best.json").read_text())
    assert document["study"] == "digits_cnn-build" and document["metric"]["name"] == "val_loss"
    assert document["config"] == {k: rows[0][k] for k in document["config"]}
    assert document["metric"]["value"] == pytest.approx(rows[0]["val_loss"])

    # Optuna's own CLI reads the same storage and agrees with the export.
    optuna_cli = subprocess.run(
        [
            str(BIN / "optuna"),
            "best-trial",
            "--storage",
            "sqlite:///bln-search.db",
            "--study-name",
            "digits_cnn-build",
            "-f",
            "json",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert optuna_cli.returncode == 0, optuna_cli.stderr
    best = json.loads(optuna_cli.stdout)
    assert best["number"] == document["trial"]
    assert best["value"] == pytest.approx(document["metric"]["value"])
    assert best["params"] == document["config"]

    # `train` takes its defaults from the export: the search's epochs, batch size and seed.
    trained = bln_search_command(
        "train", "--model", model, "--config", "best.json", "-o", "final.keras", cwd=tmp_path
    )
    assert trained.returncode == 0, trained.stderr
    last = trained.stderr.strip().splitlines()[-1]
    assert "trained epochs 1-2 at batch size 32, seed 0" in last, last
    assert "(best on validation)" in last and "saved final.keras" in last
    import keras

    import bln_search.layer  # noqa: F401  (registers the layer for load_model)

    loaded = keras.saving.load_model(tmp_path / "final.keras")
    assert all(
        layer.statistics_config.as_dict() == document["config"]
        for layer in bln_search.find_bln_layers(loaded)
    )


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["per-trial", "shared"])
def test_sigint_stops_cleanly_and_a_rerun_completes(tmp_path, strategy):
    import signal
    import time

    # The same command for the re-run (a study refuses other epochs), on a model slow enough to stop.
    # Shared: the signal must come before the one training ends, and 4 epochs leave it time.
    epochs = "2" if strategy == "per-trial" else "4"
    args = ["run", "--model", f"{FIX}:build_slow", "--epochs", epochs, "-q", "--pruner", "none"]
    args += ["--strategy", strategy]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.Popen(
        [str(BIN / "bln-search"), *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    url = f"sqlite:///{tmp_path / 'bln-search.db'}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until a trial has finished and the next one runs
        time.sleep(0.5)
        if (tmp_path / "bln-search.db").exists():
            try:
                trials = optuna.load_study(study_name="models-build_slow", storage=url).trials
            except Exception:
                continue
            states = [t.state for t in trials]
            if (
                strategy == "per-trial"
                and optuna.trial.TrialState.COMPLETE in states
                and optuna.trial.TrialState.RUNNING in states
            ):
                break  # a trial has finished and the next one runs
            if (
                strategy == "shared"
                and optuna.trial.TrialState.RUNNING in states
                and any(t.intermediate_values for t in trials)
            ):
                break  # the shared training has evaluated every configuration at least once
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert (
        "rank" in err and "running" not in err
    )  # the leaderboard so far, on stderr with the other human output
    study = optuna.load_study(study_name="models-build_slow", storage=url)
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    interrupted = [t for t in study.trials if t.user_attrs.get("fail_reason") == "interrupted"]
    assert len(interrupted) == (1 if strategy == "per-trial" else 16)
    rerun = bln_search_command(*args, cwd=tmp_path, env={"BLN_TEST_PAUSE": "0"})
    assert rerun.returncode == 0, rerun.stderr
    study = optuna.load_study(study_name="models-build_slow", storage=url)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len({tuple(sorted(t.params.items())) for t in complete}) == len(complete) == 16


def test_a_foreign_optuna_study_is_refused_by_run_and_export(tmp_path):
    url = f"sqlite:///{tmp_path / 'foreign.db'}"
    foreign = optuna.create_study(study_name="foreign", storage=url, direction="maximize")
    foreign.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    before = [(t.number, t.state, t.values, t.params) for t in foreign.trials]
    for args in (
        ["run", "--model", f"{FIX}:build", "--epochs", "1", "-q"],
        ["export", "-o", str(tmp_path / "best.json")],
        ["leaderboard"],
    ):
        result = CliRunner().invoke(app, [*args, "--storage", url, "--study", "foreign"])
        assert result.exit_code == 1, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "not created by bln-search" in lines[0], result.stderr
        assert "--study" in lines[0]
    after = optuna.load_study(study_name="foreign", storage=url).trials
    assert [(t.number, t.state, t.values, t.params) for t in after] == before
    assert not (tmp_path / "best.json").exists()


@pytest.mark.slow
def test_train_replays_a_trial_factory_s_values_and_continues_a_saved_model(tmp_path):
    url = f"sqlite:///{tmp_path / 'lr.db'}"
    common = ["--storage", url, "--study", "lr", "-q"]
    searched = CliRunner().invoke(
        app,
        ["run", "--model", f"{FIX}:build_with_trial", "--epochs", "2", "--batch-size", "16"]
        + ["--sampler", "random", "--trials", "2", "--pruner", "none", *common],
    )
    assert searched.exit_code == 0, searched.output
    best = tmp_path / "best.json"
    assert CliRunner().invoke(app, ["export", "-o", str(best), *common[:4]]).exit_code == 0
    document = json.loads(best.read_text())
    assert set(document["params"]) == {"learning_rate"}
    assert document["training"]["batch_size"] == 16 and document["training"]["epochs"] == 2

    first = tmp_path / "first.keras"
    trained = CliRunner().invoke(
        app, ["train", "-m", f"{FIX}:build_with_trial", "-c", str(best), "-o", str(first)]
    )
    assert trained.exit_code == 0, trained.output
    line = trained.stderr.strip().splitlines()[-1]
    rate = document["params"]["learning_rate"]
    assert "at batch size 16, seed 0, under" in line and f"learning_rate={rate!r}" in line

    more = CliRunner().invoke(
        app,
        ["train", "-m", f"{FIX}:build_with_trial", "-c", str(best), "-o", str(tmp_path / "m.keras")]
        + ["--from", str(first), "--initial-epoch", "2", "--epochs", "3", "--keep-last"],
    )
    assert more.exit_code == 0, more.output
    assert "trained epochs 3-3" in more.stderr and "kept epoch 3 (last)" in more.stderr
    assert f"trained epochs 3-3 from {first} at batch size 16" in more.stderr


def test_train_keeps_the_best_epoch_on_validation(data):
    """The kept weights are the best epoch's under the configuration, as the search scores a trial."""
    config = bln_search.StatisticsConfig(True, True, False, False)
    model, best, epoch = bln_search.train(models.build_jumpy, data, config, epochs=6)
    curve = model.history.history["val_loss"]
    assert curve.index(min(curve)) + 1 == epoch < len(curve)  # the fixture's best is not its last
    assert best["val_loss"] == pytest.approx(min(curve), rel=1e-5)
    model, last, epoch = bln_search.train(models.build_jumpy, data, config, epochs=6, keep="last")
    assert last["val_loss"] == pytest.approx(model.history.history["val_loss"][-1], rel=1e-5)


def export_file(tmp_path, **training):
    """An export as `bln-search export` writes it: batch sizes 8 and 16, 2 epochs, seed 0."""
    from bln_search.config import StatisticsConfig, config_document

    winners = {8: StatisticsConfig(True, True, False, False), 16: StatisticsConfig()}
    winners[16] = StatisticsConfig(False, False, False, True)
    own = training.pop("params", {})
    document = config_document(
        winners[8], metric="val_loss", value=0.5, direction="minimize", study="s", trial=0,
        extra={
            "training": {"epochs": 2, "batch_size": 8, "seed": 0, **training},
            "params": own,
            "by_batch_size": {
                str(b): {"config": c.as_dict(), "value": 0.5, "params": own}
                for b, c in winners.items()
            },
        },
    )  # fmt: skip
    path = tmp_path / "best.json"
    path.write_text(json.dumps(document))
    return path


def train_cli(tmp_path, *args, model="build"):
    result = CliRunner().invoke(
        app,
        ["train", "-m", f"{FIX}:{model}", "-c", str(tmp_path / "best.json")]
        + ["-o", str(tmp_path / "m.keras"), *args],
    )
    assert result.exit_code == 0, result.output
    return result.stderr.strip().splitlines()[-1]


def saved(tmp_path):
    import keras

    return keras.saving.load_model(tmp_path / "m.keras")


def trained_at(model) -> int:
    """The batch size the saved model's BLN layers were trained at (the layer records it)."""
    return int(bln_search.find_bln_layers(model)[0].training_batch_size.numpy())


def test_train_defaults_come_from_the_export(tmp_path):
    """`train` trained at 32 and 10 epochs whatever the search had used."""
    export_file(tmp_path)
    line = train_cli(tmp_path)
    assert line.startswith("trained epochs 1-2 at batch size 8, seed 0, under BM BV -- --;"), line
    model = saved(tmp_path)
    assert trained_at(model) == 8 and model.optimizer.iterations.numpy() == 2 * 96 // 8


def test_train_replays_a_trial_factory_s_exported_values(tmp_path):
    """A `trial` factory was called without a trial: 'NoneType' has no 'suggest_float'."""
    export_file(tmp_path, params={"learning_rate": 0.0123})
    line = train_cli(tmp_path, model="build_with_trial")
    assert "at batch size 8, seed 0, under BM BV -- --, learning_rate=0.0123;" in line, line
    assert float(saved(tmp_path).optimizer.learning_rate.numpy()) == pytest.approx(0.0123)


def test_train_at_another_searched_batch_size_takes_that_batch_size_s_winner(tmp_path):
    export_file(tmp_path)
    line = train_cli(tmp_path, "--batch-size", "16")
    assert "at batch size 16, seed 0, under -- -- -- FV;" in line, line
    layer = bln_search.find_bln_layers(saved(tmp_path))[0]
    assert layer.statistics_config == bln_search.StatisticsConfig(False, False, False, True)
    line = train_cli(tmp_path, "--batch-size", "12")
    assert "under BM BV -- -- (the winner at batch size 8; the search did not try 12);" in line


@pytest.mark.parametrize(
    "args, training, message",
    [
        (["--batch-size", "97"], {}, "the training data has only 96 samples"),
        (["--data", f"{FIX}:data_batched_dataset"], {},
         "the training dataset comes batched at 16, which sets the batch size; batch it with "
         ".batch(8) (the winner in"),
        (["--data", f"{FIX}:data_batched_dataset", "--batch-size", "8"], {"batch_size": 16},
         "cannot train at batch size 8: the training dataset comes batched at 16"),
        (["--initial-epoch", "1"], {}, "--initial-epoch continues a saved model: name it with --from"),
        ([], {"epochs": None}, "does not record the search's epochs: pass the number of epochs (--epochs)"),
        (["--from", "missing.keras", "--initial-epoch", "2"], {},
         "--initial-epoch (2) must be below --epochs (2)"),
    ],
)  # fmt: skip
def test_train_refuses_what_the_data_or_flags_make_impossible(tmp_path, args, training, message):
    export_file(tmp_path, **training)
    lines = refused_train(tmp_path, *args)
    assert len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "m.keras").exists()


def refused_train(tmp_path, *args, output=None) -> list[str]:
    """`train` of the plain fixture on tmp_path's export, which must exit 1: its stderr lines."""
    result = CliRunner().invoke(
        app,
        ["train", "-m", f"{FIX}:build", "-c", str(tmp_path / "best.json")]
        + ["-o", str(output or tmp_path / "m.keras"), *args],
    )
    assert result.exit_code == 1, result.output
    return result.stderr.strip().splitlines()


def test_train_refuses_searched_values_its_factory_cannot_take(tmp_path):
    """An export of a `trial` factory's study, trained with a plain factory, printed the
    searched learning rate as used (exit 0) while the factory trained at its own."""
    export_file(tmp_path, params={"learning_rate": 0.0123})
    lines = refused_train(tmp_path)
    assert len(lines) == 1 and "(learning_rate), but" in lines[0] and "takes none" in lines[0]
    assert not (tmp_path / "m.keras").exists()


def test_train_refuses_an_output_it_cannot_write_before_training(tmp_path):
    """An output that is a folder was found only after the whole training: 'unexpected
    IsADirectoryError', the trained model lost."""
    export_file(tmp_path)
    (tmp_path / "d.keras").mkdir()
    lines = refused_train(tmp_path, output=tmp_path / "d.keras")
    assert lines == [f"error: cannot write {tmp_path / 'd.keras'}: it is a folder"]


def test_sigterm_stops_train_in_one_line_and_saves_nothing(tmp_path):
    """`train` installed no handler: SIGTERM killed it without a word (and a background job's
    `kill -INT`, which a shell ignores, let it train to the end and exit 0)."""
    import signal
    import time

    export_file(tmp_path)
    process = subprocess.Popen(
        [str(BIN / "bln-search"), "train", "-m", f"{FIX}:build_slow", "-q"]
        + ["-c", str(tmp_path / "best.json"), "--epochs", "200", "-o", str(tmp_path / "m.keras")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    time.sleep(6)  # mid-training: 200 epochs of a model that pauses in every batch
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    assert err.strip().splitlines() == ["error: interrupted by SIGTERM"]
    assert not (tmp_path / "m.keras").exists()


def test_train_keeps_the_best_epoch_and_says_so(tmp_path):
    """`train` kept the last epoch, worse than the best, without a word."""
    export_file(tmp_path, epochs=6, batch_size=32)
    best = train_cli(tmp_path, model="build_jumpy")
    last = train_cli(tmp_path, "--keep-last", model="build_jumpy")
    epoch = int(best.split("kept epoch ")[1].split()[0])
    assert epoch < 6 and "(best on validation)" in best and "kept epoch 6 (last)" in last

    def loss(line):
        return float(line.split("val_loss ")[1].split(";")[0])

    assert loss(best) < loss(last)


@pytest.mark.parametrize("quiet", [False, True], ids=["terminal", "quiet"])
def test_train_shows_keras_progress_on_a_terminal(tmp_path, quiet):
    """`train` said nothing for as long as it trained; now Keras's bar, on stderr, unless -q."""
    import pty

    export_file(tmp_path)
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [str(BIN / "bln-search"), "train", "-m", f"{FIX}:build", "-c", "best.json"]
        + ["-o", "m.keras"] + (["-q"] if quiet else []),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=follower,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )  # fmt: skip
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    stdout = process.stdout.read()
    assert process.wait(timeout=120) == 0, b"".join(chunks).decode()
    shown = b"".join(chunks).decode()
    assert stdout == b""  # results only there, and `train` has none
    assert ("Epoch 2/2" in shown and "━" in shown) is not quiet, shown
    assert shown.strip().splitlines()[-1].startswith("trained epochs 1-2 at batch size 8"), shown


def test_train_from_a_file_that_is_no_bln_model_is_one_line(tmp_path):
    """A truncated file said "File not found"; a model without BLN, "unexpected ValueError"."""
    import keras

    export_file(tmp_path)
    keras.utils.set_random_seed(0)
    models.build_without_bln().save(tmp_path / "plain.keras")
    models.build().save(tmp_path / "whole.keras")
    data = (tmp_path / "whole.keras").read_bytes()
    (tmp_path / "cut.keras").write_bytes(data[: len(data) // 2])
    for name, message in (
        ("missing.keras", "no such file"),
        ("cut.keras", "not a Keras model file (a .keras zip archive), or a truncated one"),
        ("plain.keras", "has no BatchLayerNormalization layer: there is nothing for the"),
    ):
        lines = refused_train(tmp_path, "--from", str(tmp_path / name))
        assert lines == [f"error: cannot load {tmp_path / name}: {message}"] or (
            len(lines) == 1 and message in lines[0]
        ), lines
    assert not (tmp_path / "m.keras").exists()


def test_a_negative_seed_is_refused_in_one_line(tmp_path, data):
    """`--seed -1` gave "unexpected ValueError" from Keras's seeding."""
    from bln_search.errors import UsageError

    config = bln_search.StatisticsConfig()
    with pytest.raises(UsageError, match="`seed` must be a whole number >= 0, got -1"):
        bln_search.train(models.build, data, config, epochs=1, seed=-1)
    with pytest.raises(UsageError, match="`seed` must be a whole number >= 0, got -1"):
        bln_search.search(models.build, data, study_name="s", storage=None, seed=-1)
    export_file(tmp_path)
    for command in ("run", "train"):
        args = ["-c", str(tmp_path / "best.json")] if command == "train" else []
        result = CliRunner().invoke(app, [command, "-m", f"{FIX}:build", *args, "--seed", "-1"])
        assert result.exit_code == 2 and "greater than or equal to 0" in result.output


def test_train_refuses_a_factory_that_builds_another_model_than_the_search_ran(tmp_path):
    """`train -m` was never compared with the model the export records."""
    from bln_search.manifest import fingerprint_model

    recorded = fingerprint_model(models.build, models.build(), False)
    export_file(tmp_path, model_check=recorded)
    lines = refused_train(tmp_path, "-m", f"{FIX}:build_other")
    assert len(lines) == 1 and "builds another model than the search ran (build)" in lines[0]
    assert "layers or compile settings differ" in lines[0], lines
    assert not (tmp_path / "m.keras").exists()
    assert "under BM BV -- --" in train_cli(tmp_path)  # the model the search ran trains


def test_train_from_a_saved_model_keeps_it_when_no_epoch_improves_on_it(tmp_path, data):
    """`--from X --initial-epoch N` never counted the loaded model itself as a candidate."""
    config = bln_search.StatisticsConfig(True, True, False, False)
    first = tmp_path / "first.keras"
    _, before, epoch = bln_search.train(models.build_jumpy, data, config, epochs=6, output=first)
    _, after, kept = bln_search.train(
        None, data, config, epochs=epoch + 2, initial_model=first, initial_epoch=epoch
    )
    assert kept == epoch and after["val_loss"] == pytest.approx(before["val_loss"], rel=1e-6)
