"""The commands that read a study: `leaderboard`, `studies`, `export`, `report`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from bln_search.cli._app import (
    StorageOption,
    StudyOption,
    app,
    choices,
    console,
    handles_errors,
    open_study,
    output_path,
    quiet_libraries,
    stderr,
)
from bln_search.formats import FORMATS

Format = choices("Format", FORMATS)


def print_leaderboard(study, fmt: str = "table", to=None) -> None:
    """One table per batch size for people; one frame (with a batch_size column) for machines."""
    from bln_search.formats import natural_width, rich_table, to_text
    from bln_search.results import leaderboard, study_metric

    frame = leaderboard(study)
    if fmt != "table":
        sys.stdout.write(to_text(frame, fmt))
        return
    from rich.markup import escape

    to = to or console()
    metric, direction = study_metric(study)
    groups = list(frame.groupby("batch_size", sort=True)) if not frame.empty else [(None, frame)]
    for batch_size, group in groups:
        size = f", batch size {batch_size}" if batch_size is not None else ""
        title = escape(
            f"{study.study_name}{size}: {len(group)} candidates by {metric} ({direction})"
        )
        table = rich_table(group, title=title, width=to.width)
        terminal = to.width
        to.width = max(terminal, natural_width(table))  # too narrow: wrapped lines, whole cells
        try:
            to.print(table, crop=False)
        finally:
            to.width = terminal


@app.command()
@handles_errors
def leaderboard(
    study: StudyOption = None,
    storage: StorageOption = None,
    format: Annotated[
        Format,
        typer.Option(
            "--format", "-f", help="table for people; csv, json, markdown go to stdout alone."
        ),
    ] = "table",
):
    """Show one row per configuration, best first."""
    quiet_libraries()
    print_leaderboard(open_study(storage, study), Format(format).value)


@app.command()
@handles_errors
def studies(storage: StorageOption = None):
    """List the studies in a storage."""
    quiet_libraries()
    from rich.table import Table
    from rich.text import Text

    from bln_search.storage import list_studies, open_existing_storage

    summaries = list_studies(open_existing_storage(storage))
    table = Table(title="studies")
    for column in ("study", "trials", "direction", "metric", "started"):
        table.add_column(column)
    for summary in sorted(summaries, key=lambda s: s.study_name):
        started = (
            summary.datetime_start.strftime("%Y-%m-%d %H:%M") if summary.datetime_start else "–"
        )
        table.add_row(  # names are the user's text, never markup
            Text(summary.study_name),
            str(summary.n_trials),
            summary.direction.name.lower(),
            Text(str(summary.user_attrs.get("metric", "–"))),
            started,
        )
    console().print(table)


@app.command()
@handles_errors
def export(
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Where to write the JSON document; - for stdout.")
    ] = Path("best.json"),
    study: StudyOption = None,
    storage: StorageOption = None,
    model: Annotated[
        Path | None,
        typer.Option(
            "--model",
            help=(
                "Also write the winner's own trained model (.keras): its best epoch's weights "
                "from the search, the winning flags set; no training."
            ),
        ),
    ] = None,
    artifacts: Annotated[
        Path | None,
        typer.Option(
            help="The artifact folder the search kept its models in. Default: the one it used."
        ),
    ] = None,
):
    """Write the best configuration as a versioned JSON document (read back by `train` and `bln_search.load_config`)."""
    import json

    output_path(output)
    if model is not None:
        output_path(model)
        if model.suffix != ".keras":
            from bln_search.errors import UsageError

            raise UsageError(f"--model must end in .keras, got {model}")
    quiet_libraries(tensorflow=model is not None)
    from bln_search.results import export_document

    found = open_study(storage, study)
    document = export_document(found)
    if model is not None:
        from bln_search.checkpoints import trained_model
        from bln_search.interrupts import deferred

        trained, trial = trained_model(found, artifacts)
        with deferred():  # never half a model file
            trained.save(model)
        document["model"] = {
            "file": str(model),
            "trial": trial.number,
            "epoch": trial.user_attrs.get("model_epoch"),
            "value": trial.value,
        }
    text = json.dumps(document, indent=2) + "\n"
    if str(output) == "-":
        sys.stdout.write(text)
    else:
        output.write_text(text, encoding="utf-8")
        stderr().print(
            (
                f"wrote {output}: {document['config']} ({document['metric']['name']} "
                f"{document['metric']['value']:.4f})"
            ),
            highlight=False,
            markup=False,
        )


@app.command()
@handles_errors
def report(
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", help="The HTML page to write (self-contained, works offline)."
        ),
    ] = Path("report.html"),
    study: StudyOption = None,
    storage: StorageOption = None,
    png: Annotated[
        bool,
        typer.Option(
            "--png",
            help="Also write the figures as PNG files next to the page, for the terminal crowd.",
        ),
    ] = False,
):
    """Verdicts, ranked intervals, flag effects, curves and leaderboards per batch size, as HTML (and PNG)."""
    output_path(output)
    quiet_libraries()
    from bln_search.report import write_html, write_pngs

    found = open_study(storage, study)
    written = [write_html(found, output)]
    if png:
        written += write_pngs(found, output)
    stderr().print("wrote " + ", ".join(map(str, written)), highlight=False, markup=False)


def print_test(study, console) -> None:
    """The test metric of each batch size's winner, after a `run` with test data."""
    from bln_search.trials import STUDY_TEST

    for batch_size, result in (study.user_attrs.get(STUDY_TEST) or {}).items():
        shown = ", ".join(f"{name} {value:.4f}" for name, value in result["metrics"].items())
        console.print(
            f"test (batch size {batch_size}, winner [cyan]{result['label']}[/], retrained as "
            f"in the search; not used for selection): {shown}",
            highlight=False,
        )
