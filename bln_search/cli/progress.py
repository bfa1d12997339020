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
    """Two rows: the trials, and the training running now.

    The `trials` row counts finished trials (of all workers, read from the
    storage when a trial ends) and names what trains and the best value so
    far. Its bar also fills with every evaluation of a shared training: each
    live configuration adds its share of the epochs done, so 16 configurations
    halfway through fill half of a 16-trial bar while the count still reads 0.

    The `epoch` row follows the training within the epoch: a bar over its
    batches (from a throttled Keras callback, never a storage read), then in
    a shared training over its evaluations, `evaluating k/16`, with the leader:
    the best value reported at the last fully evaluated epoch (the trials'
    intermediate values, as stored), or so far in the first.
    """

    def __init__(self, console, metric: str):
        from rich.progress import (
            BarColumn,
            Progress,
            ProgressColumn,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.table import Column
        from rich.text import Text

        class Status(ProgressColumn):
            """One line, cut with `…`: rich narrows only wrappable columns before all others."""

            def render(self, task):
                text = Text.from_markup(task.fields["status"], overflow="ellipsis")
                text.no_wrap = True
                return text

        self.metric = metric
        self.progress = Progress(
            TextColumn("[bold]{task.description}", table_column=Column(no_wrap=True, min_width=6)),
            BarColumn(bar_width=12, table_column=Column(min_width=12)),
            TextColumn(
                "{task.fields[count]}",
                justify="right",
                table_column=Column(no_wrap=True, min_width=5),
            ),
            TimeElapsedColumn(table_column=Column(no_wrap=True, min_width=7)),
            # On a narrow terminal the status gives way, not the bars, counts or time.
            Status(table_column=Column(ratio=1)),
            console=console,
            transient=False,
        )
        self.task = None
        self.epoch_task = None
        self.best = None
        self.direction = "minimize"
        self.current = ""
        self.shared = False  # in a shared training: evaluations fill the trials bar
        self.labels: dict[int, str] = {}  # trial number -> what it runs
        self.fractions: dict[int, float] = {}  # live trial -> fraction of its epochs done
        self.evaluating = 0  # configurations evaluated in this epoch (shared mode)
        self.epoch_values: dict[int, float] = {}  # this epoch's values so far, by trial
        self.leader_values: dict[int, float] = {}  # the last fully evaluated epoch's values
        self.finished = 0

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def _status(self, epoch_text: str = "") -> str:
        best = "" if self.best is None else f"[dim]best {escape(self.metric)}[/] {self.best:.4f}"
        return " ".join(part for part in (self.current, escape(epoch_text), best) if part)

    def _leader(self) -> str:
        values = self.leader_values or self.epoch_values
        if not values:
            return ""
        pick = min if self.direction == "minimize" else max
        leader = pick(values, key=values.__getitem__)
        return f" · leader [cyan]{escape(self.labels.get(leader, '?'))}[/] {values[leader]:.4f}"

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

    def _trials(self, **fields) -> None:
        done = self.finished + sum(self.fractions.values())
        count = f"{self.finished}/{self.planned}" if self.planned else str(self.finished)
        self.progress.update(
            self.task,
            completed=min(done, self.planned) if self.planned else done,
            count=count,
            **fields,
        )

    def _start_training(self) -> None:
        """The epoch row starts over (its clock too) for a new training."""
        self.epoch_values, self.leader_values = {}, {}
        self.progress.reset(self.epoch_task, total=None, visible=True, count="", status="starting")

    def on_search_start(self, study: optuna.Study, planned: int | None) -> None:
        self.study, self.planned = study, planned
        self.direction = study.direction.name.lower()
        self.finished = self._refresh()
        self.task = self.progress.add_task("trials", total=planned, count="", status="")
        self._trials(status=self._status())
        self.epoch_task = self.progress.add_task(
            "epoch", total=None, visible=False, count="", status=""
        )

    def on_training_start(self, setup: TrainingSetup, configs: list[StatisticsConfig]) -> None:
        what = (
            f"{get(setup.variant).short} baseline"
            if setup.is_baseline
            else f"{len(configs)} configs"
        )
        self.current = f"seed {setup.seed} bs {setup.batch_size} [cyan]{what}[/]"
        self.shared = True
        self._trials(status=self._status())
        self._start_training()

    def on_trial_start(self, number: int, config: StatisticsConfig) -> None:
        self.labels[number] = config.label if config else "baseline"
        if self.shared:
            self.fractions[number] = 0.0  # live in this training, no epoch evaluated yet
        else:
            self.current = f"#{number} [cyan]{config.label if config else 'baseline'}[/]"
            self._trials(status=self._status("starting"))
            self._start_training()

    def on_batch_start(self, epoch: int, epochs: int, batch: int, batches: int | None) -> None:
        of = f"/{batches}" if batches else ""
        self.progress.update(
            self.epoch_task,
            total=batches,
            completed=batch - 1,
            count=f"{epoch}/{epochs}",
            status=f"batch {batch}{of}{self._leader()}",
        )

    def on_evaluation_start(self, epoch: int, epochs: int, configs: int) -> None:
        if self.epoch_values:  # the previous epoch is fully evaluated now
            self.leader_values, self.epoch_values = self.epoch_values, {}
        self.evaluating = configs
        self.progress.update(
            self.epoch_task,
            total=configs,
            completed=0,
            count=f"{epoch}/{epochs}",
            status=f"evaluating 0/{configs}{self._leader()}",
        )

    def on_epoch_end(self, number: int, epoch: int, epochs: int, value: float) -> None:
        if not self.shared:
            self._trials(status=self._status(f"epoch {epoch}/{epochs} {self.metric} {value:.4f}"))
            return
        self.epoch_values[number] = value
        self.fractions[number] = epoch / epochs
        done = len(self.epoch_values)
        if done == self.evaluating:  # every live configuration has reported this epoch
            self.leader_values = self.epoch_values
        self.progress.update(
            self.epoch_task,
            completed=done,
            status=f"evaluating {done}/{self.evaluating}{self._leader()}",
        )
        self._trials()

    def on_trial_end(self, trial: optuna.trial.FrozenTrial) -> None:
        self.fractions.pop(trial.number, None)
        self.finished = self._refresh()
        # In a shared training one configuration's end says little: the count and best say it.
        self._trials(status=self._status("" if self.shared else trial.state.name.lower()))
        if not self.shared or not self.fractions:  # its training is over, even a failed one
            self.progress.update(self.epoch_task, visible=False)


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
