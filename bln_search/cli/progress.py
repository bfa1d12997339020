"""Terminal progress for `bln-search run`: a rich live display, or plain log lines."""

from __future__ import annotations

import optuna
from rich.markup import escape

from bln_search.baselines import BASELINES, get
from bln_search.config import StatisticsConfig
from bln_search.observer import SearchObserver
from bln_search.trials import (
    ATTR_BASELINE,
    ATTR_FAIL_MESSAGE,
    ATTR_FAIL_REASON,
    COMPLETE,
    FAIL,
    NON_FINITE,
    TrainingSetup,
    is_duplicate,
)


class LiveProgress(SearchObserver):
    """Trial i of n, the running configuration, its epoch and metric, and the best so far.

    In a shared training the bar also moves with every evaluation: each live
    configuration counts the fraction of its epochs done, so 16 configurations
    halfway through read as 8 trials' worth; the status names the epoch, how
    many configurations were evaluated in it, and the leader at that epoch.
    """

    def __init__(self, console, metric: str):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.table import Column

        self.metric = metric
        self.progress = Progress(
            TextColumn("[bold]trials", table_column=Column(no_wrap=True, min_width=6)),
            BarColumn(bar_width=12, table_column=Column(min_width=12)),
            MofNCompleteColumn(table_column=Column(no_wrap=True, min_width=5)),
            TimeElapsedColumn(table_column=Column(no_wrap=True, min_width=7)),
            # On a narrow terminal the status gives way, not the trial count or the time.
            TextColumn(
                "{task.fields[status]}",
                table_column=Column(no_wrap=True, overflow="ellipsis", ratio=1),
            ),
            console=console,
            transient=False,
        )
        self.task = None
        self.best = None
        self.direction = "minimize"
        self.current = ""
        self.shared_epoch = None  # the epoch a shared training is in, None in per-trial mode
        self.labels: dict[int, str] = {}  # trial number -> what it runs
        self.fractions: dict[int, float] = {}  # live trial -> fraction of its epochs done
        self.epoch_values: dict[int, float] = {}  # this epoch's values, by trial (shared mode)
        self.finished = 0

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def _status(self, epoch_text: str = "") -> str:
        best = "–" if self.best is None else f"{self.best:.4f}"
        return f"{self.current} {escape(epoch_text)} [dim]best {escape(self.metric)}[/] {best}"

    def _refresh(self) -> int:
        """Finished trials and the best BLN value so far, read from the storage: other workers count too."""
        done = [
            t
            for t in self.study.get_trials(deepcopy=False)
            if t.state.is_finished() and not is_duplicate(t)
        ]
        complete = [
            t.value for t in done if t.state == COMPLETE and ATTR_BASELINE not in t.user_attrs
        ]
        if complete:
            self.best = min(complete) if self.direction == "minimize" else max(complete)
        finished = sum(
            t.state != FAIL or t.user_attrs.get(ATTR_FAIL_REASON) == NON_FINITE for t in done
        )
        return min(finished, self.planned or finished)

    def _completed(self) -> float:
        done = self.finished + sum(self.fractions.values())
        return min(done, self.planned) if self.planned else done

    def on_search_start(self, study: optuna.Study, planned: int | None) -> None:
        self.study, self.planned = study, planned
        self.direction = study.direction.name.lower()
        self.finished = self._refresh()
        self.task = self.progress.add_task(
            "search", total=planned, completed=self._completed(), status=self._status()
        )

    def on_training_start(self, setup: TrainingSetup, configs: list[StatisticsConfig]) -> None:
        what = (
            f"{get(setup.variant).short} baseline"
            if setup.is_baseline
            else f"{len(configs)} configs"
        )
        self.current = f"seed {setup.seed} bs {setup.batch_size} [cyan]{what}[/]"
        self.shared_epoch = 0
        self.progress.update(self.task, status=self._status("starting"))

    def on_trial_start(self, number: int, config: StatisticsConfig) -> None:
        self.labels[number] = config.label if config else "baseline"
        if self.shared_epoch is not None:
            self.fractions[number] = 0.0  # live in this training, no epoch evaluated yet
        if self.shared_epoch is None:
            self.current = f"#{number} [cyan]{config.label if config else 'baseline'}[/]"
            self.progress.update(self.task, status=self._status("starting"))

    def on_epoch_end(self, number: int, epoch: int, epochs: int, value: float) -> None:
        if self.shared_epoch is None:
            self.progress.update(
                self.task, status=self._status(f"epoch {epoch}/{epochs} {self.metric} {value:.4f}")
            )
        else:
            if epoch != self.shared_epoch:
                self.shared_epoch, self.epoch_values = epoch, {}
            self.epoch_values[number] = value
            self.fractions[number] = epoch / epochs
            pick = min if self.direction == "minimize" else max
            leader = pick(self.epoch_values, key=self.epoch_values.__getitem__)
            status = (  # the leader at this epoch stands in for the best so far
                f"epoch {epoch}/{epochs} {len(self.epoch_values)}/{len(self.fractions)} evaluated,"
                f" leader [cyan]{escape(self.labels.get(leader, '?'))}[/]"
                f" {self.epoch_values[leader]:.4f}"
            )
            self.progress.update(self.task, completed=self._completed(), status=status)

    def on_trial_end(self, trial: optuna.trial.FrozenTrial) -> None:
        self.fractions.pop(trial.number, None)
        self.finished = self._refresh()
        self.progress.update(
            self.task, completed=self._completed(), status=self._status(trial.state.name.lower())
        )


class LogProgress(SearchObserver):
    """One plain line per finished trial (for `--quiet` and log files)."""

    def __init__(self, console, metric: str):
        self.console = console
        self.metric = metric
        self.configs = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def on_training_start(self, setup: TrainingSetup, configs: list[StatisticsConfig]) -> None:
        what = (
            f"{get(setup.variant).label} baseline"
            if setup.is_baseline
            else f"{len(configs)} configurations evaluated after every epoch"
        )
        self.console.print(
            f"shared training (seed {setup.seed}, batch size {setup.batch_size}): {what}",
            highlight=False,
            markup=False,
        )

    def on_trial_start(self, number: int, config: StatisticsConfig) -> None:
        self.configs[number] = config

    def on_trial_end(self, trial: optuna.trial.FrozenTrial) -> None:
        config = self.configs.get(trial.number)
        value = "" if trial.value is None else f" {self.metric}={trial.value:.4f}"
        reason = trial.user_attrs.get(ATTR_FAIL_MESSAGE, "")
        baseline = BASELINES.get(trial.user_attrs.get(ATTR_BASELINE))
        label = config.label if config else (baseline.label if baseline else "-")
        self.console.print(
            f"trial {trial.number} [{label}] {trial.state.name.lower()}{value} {reason}".rstrip(),
            highlight=False,
            markup=False,
        )
