"""``reproduce``: re-run one of the paper's experiments and render its table beside the paper's numbers."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

EXPERIMENT_NAMES = ("adding", "copy", "psmnist", "smnist", "ablation")  # checked against the registry by the tests


@click.command("reproduce")
@click.argument("experiment", type=click.Choice(EXPERIMENT_NAMES))
@click.option("--scale", type=click.Choice(["cpu", "paper", "smoke"]), default="cpu", show_default=True,
              help="cpu: budgets for a 2-core machine (hours); paper: the authors' protocol (a GPU's work); "
                   "smoke: tiny models, seconds, to check the pipeline.")
@click.option("--out", type=click.Path(file_okay=False), default="results", show_default=True,
              help="Results folder: runs in OUT/runs/, tables and figures in OUT/EXPERIMENT/.")
@click.option("--jobs", type=click.IntRange(1), default=1, show_default=True,
              help="Runs side by side (each one process with --threads threads).")
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True, help="CPU threads per run.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda (passed to every run).")
@click.option("--report-only", is_flag=True, help="Train nothing: render the table from the runs already there.")
@click.option("--no-figures", is_flag=True, help="Tables only (no matplotlib needed).")
def reproduce_cmd(experiment, scale, out, jobs, threads, device, report_only, no_figures):
    """Run (or resume) every run EXPERIMENT needs, then write OUT/EXPERIMENT/results.md, results.json and figures.

    \b
    Each run is an ordinary run directory under OUT/runs/ (named like adding-T100-wrnn-s0): interrupt with
    Ctrl-C and run the same command again to resume; finished runs are not run again.
    \b
    wavexport reproduce adding                    adding T=100/200/400, wRNN 27x100 vs iRNN-100, 3 seeds
    wavexport reproduce copy --jobs 2             copy T=80 and 480, two runs at a time
    wavexport reproduce ablation --report-only    re-render the table from what has run
    """
    from tqdm import tqdm

    from ..reproduce import get_experiment
    from ..reproduce.report import write_report
    from ..reproduce.runner import run_all

    exp = get_experiment(experiment, scale)
    root = Path(out)
    specs = exp.runs()
    command = "wavexport reproduce " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if sys.argv[1:2] == [
        "reproduce"] else f"wavexport reproduce {experiment} --scale {scale}"
    if not report_only:
        click.echo(f"{exp.title}: {len(specs)} runs in {root / 'runs'} ({jobs} at a time)", err=True)
        failed = []
        with tqdm(total=len(specs), unit="run", desc=experiment, dynamic_ncols=True) as bar:
            def done(o):
                if not o.ok and not o.interrupted:
                    failed.append(o)
                bar.set_postfix_str(f"{o.spec.name} {'already done' if o.skipped else 'done' if o.ok else 'exit %d' % o.returncode}")
                bar.update(1)

            outcomes = run_all(specs, root, jobs, threads, device, on_done=done)
        if any(o.interrupted for o in outcomes):
            click.echo(f"interrupted: run the same command again to resume ({root / 'runs'})", err=True)
            sys.exit(130)
        for o in failed:
            click.echo(f"run {o.spec.name} failed (exit {o.returncode}); see {o.path / 'train.log'}", err=True)
    table = write_report(exp, root, scale, command, figures=not no_figures)
    click.echo(table["markdown"])
    click.echo(f"wrote {root / exp.name / 'results.md'}", err=True)
    if not report_only and failed:
        sys.exit(1)
