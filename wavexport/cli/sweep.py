"""``sweep``: hyper-parameter sweeps on Optuna (a grid, or ranges for a sampler), run by local workers or by
workers on many machines sharing a database; ``sweep worker`` joins one, ``sweep report`` shows one."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .common import RegistryChoice, task_names
from .train import train as _train_cmd

# train's options a sweep passes on to every trial (the run directory, resume and output are the sweep's to set)
_NOT_PASSED = {"out", "resume", "dry_run", "quiet"}


class SweepGroup(click.Group):
    """``wavexport sweep TASK ...`` is ``wavexport sweep run TASK ...``: a first word that is not one of the
    group's commands (a task name) runs a sweep."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


@click.group(cls=SweepGroup, context_settings={"max_content_width": 110})
def sweep():
    """Hyper-parameter sweeps on Optuna: every trial an ordinary run directory, any number of workers.

    \b
    wavexport sweep adding --grid lr=1e-3,1e-4 --grid grad_clip=0,1,10,100,1000 --seq 100 --steps 600 --jobs 2
    wavexport sweep worker --storage postgresql://... --study NAME    join a sweep from another machine
    wavexport sweep report sweeps/adding-wrnn                          table, best setting, heat map
    (`wavexport sweep TASK ...` is short for `wavexport sweep run TASK ...`; see docs/SCALING.md)
    """


@sweep.command("run")
@click.argument("task", type=RegistryChoice(task_names))
@click.option("--grid", "grids", multiple=True, metavar="NAME=V1,V2,...",
              help="A swept train option and its values, e.g. lr=1e-3,1e-4 (repeat for more; the grid is their "
              "product, each point run once).")
@click.option("--range", "ranges", multiple=True, metavar="NAME=LOW:HIGH[:log]",
              help="A search range for a sampler, e.g. lr=1e-5:1e-2:log (needs --trials).")
@click.option("--trials", type=click.IntRange(1), help="Trials to run with --range [a grid: its size].")
@click.option("--sampler", type=click.Choice(["grid", "tpe", "random"]),
              help="grid for a grid alone; tpe (default) or random with --range.")
@click.option("--sampler-seed", type=int, default=0, show_default=True, help="Seed of the sampler.")
@click.option("--out", type=click.Path(file_okay=False),
              help="The sweep folder: sweep.db, sweep.json, trials/ [default: sweeps/TASK-ARCH[-quick]].")
@click.option("--storage", metavar="URL", help="Optuna storage, any SQLAlchemy URL, e.g. "
              "postgresql://user:pass@host/db, so workers on other machines can join [default: "
              "sqlite:///OUT/sweep.db].")
@click.option("--study", metavar="NAME", help="Study name [default: the sweep folder's name].")
@click.option("--jobs", type=click.IntRange(1), default=1, show_default=True,
              help="Worker processes on this machine (each runs one trial at a time).")
@click.option("--heartbeat", type=click.IntRange(1), default=10, show_default=True, metavar="SECONDS",
              help="A worker's heartbeat; its trial is run again (resumed) by another after 3 missed.")
@click.option("--prune", type=click.Choice(["auto", "median", "off"]), default="auto", show_default=True,
              help="auto: stop a trial only when it can no longer win (adding: past the best iterations-to-solve); "
              "median: Optuna's median rule on the validation metric; off.")
@click.option("--plot/--no-plot", default=True, show_default=True, help="Write the heat map (OUT/heatmap.png).")
@click.pass_context
def run_cmd(ctx, task, grids, ranges, trials, sampler, sampler_seed, out, storage, study, jobs, heartbeat, prune,
            plot, **train_opts):
    """Sweep train options of TASK: a study whose trials are run directories under the sweep folder.

    \b
    Every other option is a train option (see `wavexport train --help`), fixed for all trials.
    The objective: adding, iterations to solve (--stop-when-solved; unsolved ranks last); copy, the final
    held-out loss; image tasks, the best validation accuracy. Running the same command again continues the
    sweep: finished trials are kept, interrupted ones resume their run directories.
    """
    from ..sweep.launch import prepare_sweep, run_local
    from ..sweep.spec import SweepSpec, parse_grid, parse_ranges

    given = {k: v for k, v in train_opts.items()
             if ctx.get_parameter_source(k) == click.core.ParameterSource.COMMANDLINE}
    arch, preset = train_opts["arch"], train_opts["preset"]
    threads = given.pop("threads", None) or 1
    for k in ("arch", "preset"):
        given.pop(k, None)
    spec = SweepSpec.create(task, arch, preset, given, parse_grid(grids), parse_ranges(ranges), trials, sampler,
                            sampler_seed, prune, heartbeat, threads)
    out = Path(out or f"sweeps/{task}-{arch}{'-quick' if preset == 'quick' else ''}")
    url, name, spec = prepare_sweep(spec, out, storage, study)
    from ..sweep.study import redact

    click.echo(f"sweep {name}: {spec.describe()}\nstorage {redact(url)} | {jobs} worker{'s' if jobs > 1 else ''} "
               f"here | trials in {Path(spec.root) / 'trials'}\nmore workers: wavexport sweep worker --storage "
               f"{redact(url)} --study {name}", err=True)
    result = run_local(url, name, spec.root, jobs)
    lost = [c for c in result.worker_status if c not in (0, 1, 130)]
    if lost:
        click.echo(f"{len(lost)} worker(s) ended abnormally (status {', '.join(map(str, lost))}); a trial they "
                   "left running goes back to the queue (resumed by another worker, or by this command run again)",
                   err=True)
    sys.exit(_finish(url, name, Path(spec.root), plot, interrupted=result.interrupted))


def _finish(url: str, name: str, root: Path, plot: bool, interrupted: bool = False) -> int:
    """Print the report (and write the heat map); the exit status: 0 done, 1 trials failed, 130 interrupted."""
    from ..sweep.launch import sweep_state
    from ..sweep.report import plot_heatmap, sweep_report, trial_rows

    state = sweep_state(url, name)
    study, spec = state["study"], state["spec"]
    click.echo(sweep_report(study, spec, root))
    if plot and any(r["state"] == "COMPLETE" for r in trial_rows(study, spec)):
        click.echo(f"heat map: {plot_heatmap(trial_rows(study, spec), spec, root / 'heatmap.png')}")
    if interrupted or not state["done"]:
        click.echo(f"sweep not finished ({', '.join(f'{n} {s.lower()}' for s, n in state['counts'].items())}): "
                   f"run the same command again to continue it", err=True)
        return 130 if interrupted else 1
    if state["failed"]:
        click.echo(f"{len(state['failed'])} trial(s) failed: {', '.join(map(str, state['failed']))} (see their "
                   "train.log)", err=True)
        return 1
    return 0


# the train options, passed on to every trial
run_cmd.params.extend(p for p in _train_cmd.params if isinstance(p, click.Option) and p.name not in _NOT_PASSED)


@sweep.command("worker")
@click.argument("folder", required=False, type=click.Path(file_okay=False))
@click.option("--storage", metavar="URL", help="The sweep's storage (SQLAlchemy URL) [default: FOLDER/sweep.db].")
@click.option("--study", metavar="NAME", help="The study [default: the only one in the storage].")
@click.option("--out", type=click.Path(file_okay=False),
              help="Where this worker's trial run directories go [default: FOLDER, else the sweep folder recorded "
              "in the study; share it between machines (e.g. NFS) so a trial resumes wherever it is run again].")
@click.option("--device", help="Device for this worker's trials (e.g. cuda) [default: the sweep's].")
@click.option("--threads", type=click.IntRange(1), metavar="N", help="Torch threads per trial [default: the sweep's].")
def worker_cmd(folder, storage, study, out, device, threads):
    """Work on an existing sweep: take its queued trials one at a time until none is left or running.

    \b
    On another machine: wavexport sweep worker --storage postgresql://user:pass@host/db --study NAME
    Ctrl-C: the running trial checkpoints and goes back to the queue; exit status 130.
    """
    from ..sweep.launch import locate
    from ..sweep.worker import run_worker

    url, name = locate(folder, storage, study)
    stats = run_worker(url, name, out or folder, device, threads)
    if stats.interrupted:
        sys.exit(130)
    sys.exit(1 if stats.failed else 0)


@sweep.command("report")
@click.argument("folder", required=False, type=click.Path(file_okay=False))
@click.option("--storage", metavar="URL", help="The sweep's storage [default: FOLDER/sweep.db].")
@click.option("--study", metavar="NAME", help="The study [default: the only one in the storage].")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="Heat map file [default: FOLDER/heatmap.png, else STUDY-heatmap.png].")
@click.option("--no-plot", is_flag=True, help="No heat map.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: the spec, the trials, the best trial.")
def report_cmd(folder, storage, study, plot_path, no_plot, as_json):
    """The sweep's trials as a table, the best trial and its setting, and the heat map of the objective over the
    grid (lr x gradient clip when both are swept)."""
    from ..sweep.launch import locate
    from ..sweep.report import best_row, plot_heatmap, sweep_report, trial_rows
    from ..sweep.study import load_sweep

    url, name = locate(folder, storage, study)
    st, spec = load_sweep(url, name)
    rows = trial_rows(st, spec)
    if as_json:
        click.echo(json.dumps({"study": st.study_name, "spec": spec.to_dict(), "trials": rows,
                               "best": best_row(rows, spec)}, default=str))
    else:
        click.echo(sweep_report(st, spec, Path(folder) if folder else Path(spec.root)))
    if not no_plot and any(r["state"] == "COMPLETE" for r in rows):
        path = Path(plot_path or (Path(folder) / "heatmap.png" if folder else f"{st.study_name}-heatmap.png"))
        written = plot_heatmap(rows, spec, path)
        click.echo(f"heat map: {written}", err=as_json)
