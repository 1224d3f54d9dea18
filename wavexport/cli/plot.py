"""``wavexport plot``: waves, speed, curves. Heavy imports stay inside the commands so ``wavexport --help`` is fast
and works without matplotlib."""
from __future__ import annotations

import json
from pathlib import Path

import click


def _size(ctx, param, value):
    if value is None:
        return None
    try:
        w, h = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter("expected WIDTHxHEIGHT in pixels, e.g. 1100x800") from None
    if not (64 <= w <= 8000 and 64 <= h <= 8000):
        raise click.BadParameter("width and height must be between 64 and 8000 pixels")
    return w, h


@click.group("plot")
def plot():
    """See the waves: space-time diagrams of the hidden state, ring animations, training curves.

    \b
    wavexport plot waves runs/copy-wrnn-quick           space-time image per channel -> waves.png
    wavexport plot waves RUN --gif                      ... and the ring as an animation -> waves.gif
    wavexport plot speed RUN                            the wave speed, as numbers (no matplotlib needed)
    wavexport plot curves RUN_A RUN_B --metric val_loss training curves of several runs -> curves.png

    Drawing needs the plot extra: pip install 'wavexport[plot]'.
    """


def _check_format(out, gif: bool) -> None:
    """Refuse an --out whose format cannot be written before any work (save_figure would, after it)."""
    from ..plot.waves import PlotError

    formats = (".png", ".pdf", ".svg") + ((".gif",) if gif else ())
    if Path(out).suffix.lower() not in formats:
        raise PlotError(f"{out}: cannot write a {Path(out).suffix.lstrip('.') or 'suffix-less'} file; use "
                        f"{', '.join(formats[:-1])} or {formats[-1]}")


def _trajectory(checkpoint, task_sample, input_path, data_dir, threads=None):
    """(source, inputs [T, n_in], states [T, C, N], what the sequence is, its target or None)."""
    from ..plot.waves import PlotError, load_input, open_source, task_sample as sample_of
    from .common import set_torch_threads

    set_torch_threads(threads)  # one sequence: 1 thread unless --threads
    source = open_source(checkpoint)
    target = None
    if input_path is not None:
        if task_sample is not None:
            raise PlotError("give --task-sample or --input, not both")
        xs, what = load_input(input_path, source.n_in), Path(input_path).name
    else:
        index = task_sample or 0
        xs, target = sample_of(source, index, data_dir)
        what = f"test sequence {index}"
    return source, xs, source.states(xs), what, target


def _task_text(source) -> str:
    task = source.task
    if task is None:
        return "?"
    args = task.args()
    return f"{task.name} (T={args['T']})" if "T" in args else task.name


_source_opts = [
    click.argument("checkpoint", type=click.Path()),
    click.option("--task-sample", type=click.IntRange(0), metavar="I",
                 help="Use sequence I of the run's held-out test set (the one `wavexport eval` scores) [default: 0]."),
    click.option("--input", "input_path", type=click.Path(), metavar="SEQ.npy",
                 help="Use this model-input sequence instead: [T, n_in] (or [T] for one input), as the model sees it."),
    click.option("--data-dir", type=click.Path(file_okay=False), help="Data root for image tasks (as for train)."),
    click.option("--threads", type=click.IntRange(1), metavar="N",
                 help="CPU threads for torch [default: 1, what one sequence needs]."),
]


def _with_source_opts(f):
    for deco in reversed(_source_opts):
        f = deco(f)
    return f


@plot.command()
@_with_source_opts
@click.option("--channels", metavar="0,1,2|all", help="Channels to draw [default: the first 3].")
@click.option("--out", type=click.Path(dir_okay=False), default="waves.png", show_default=True,
              help="Image file (.png, .pdf, .svg; .gif writes only the animation).")
@click.option("--gif", is_flag=True, help="Also write the ring animation next to --out (same name, .gif).")
@click.option("--gif-frames", type=click.IntRange(2, 2000), default=120, show_default=True,
              help="At most this many animation frames (every k-th step).")
@click.option("--gif-size", type=click.IntRange(64, 2000), default=360, show_default=True, metavar="PX",
              help="Side of the square animation, in pixels.")
@click.option("--size", callback=_size, metavar="WxH", help="Image size in pixels [default: from the channels].")
@click.option("--dpi", type=click.IntRange(50, 600), default=120, show_default=True)
def waves(checkpoint, task_sample, input_path, data_dir, threads, channels, out, gif, gif_frames, gif_size, size,
          dpi):
    """Space-time diagram of the hidden state of CHECKPOINT (a .pt file or a run directory) on one sequence.

    Each chosen channel is an image with time across and ring position up: a travelling wave shows as diagonal
    stripes, rising one unit per step for the paper's +1 shift. The input runs along the top with the task's events
    (copy symbols and recall cue, adding markers). For iRNN/LSTM/GRU the hidden units are drawn as one channel.
    """
    from ..plot.figures import _mpl, ring_animation, save_figure, waves_figure
    from ..plot.waves import channel_speeds, input_events, parse_channels, sample_caption, wave_speed

    from ..core.io import check_output

    _mpl()  # fail on a missing matplotlib or a bad --out before running anything
    _check_format(out, gif=True)
    inputs = [("the checkpoint", checkpoint), ("--input", input_path)]
    check_output(out, inputs, what="--out")
    if gif:
        check_output(Path(out).with_suffix(".gif"), inputs, what="the animation")
    source, xs, states, what, target = _trajectory(checkpoint, task_sample, input_path, data_dir, threads)
    chans = parse_channels(channels, states.shape[1])
    per_channel = channel_speeds(states)
    overall = wave_speed(states)
    task_name = source.task.name if source.task is not None else None
    events = input_events(task_name, xs)
    caption = sample_caption(source.task, source.outputs(xs), target)
    title = f"{source.describe()} on {_task_text(source)}, {what} ({len(xs)} steps)\n{caption}"
    out = Path(out)
    written = []
    if out.suffix.lower() != ".gif":
        fig = waves_figure(states, xs, chans, layout=source.layout, events=events,
                           speeds={c: per_channel[c] for c in chans}, title=title, task_name=task_name,
                           size_px=size, dpi=dpi)
        written.append(str(save_figure(fig, out, dpi)))
    if gif or out.suffix.lower() == ".gif":
        gif_path = out.with_suffix(".gif")
        n = ring_animation(states, chans, gif_path, events=events, layout=source.layout, max_frames=gif_frames,
                           size_px=gif_size, title=f"{source.describe()} on {_task_text(source)}, {what}")
        written.append(f"{gif_path} ({n} frames)")
    click.echo(f"wrote {', '.join(written)}")
    click.echo(f"{what}: {caption}")
    label = "wave speed" if source.layout == "ring" else "best lag (units as a ring)"
    click.echo(f"{label}, all {states.shape[1]} channel(s): {overall}")
    if source.layout == "ring":
        for c in chans:
            click.echo(f"  channel {c}: {per_channel[c]}")


@plot.command()
@_with_source_opts
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def speed(checkpoint, task_sample, input_path, data_dir, threads, as_json):
    """Dominant wave speed of CHECKPOINT's hidden state on one sequence, in ring units per step.

    \b
    The lag s that best maps each step's change of activity onto the next one's: the correlation of
    h_t - h_{t-1} with (h_{t-1} - h_{t-2}) rolled by s along the ring, summed over time and channels.
    Positive = the direction of the shift init (unit i -> i+1). r is that peak correlation (1 = a rigid wave).
    An untrained wrnn gives +1, wrnn-identity 0. For iRNN/LSTM/GRU the units are read as a ring in index
    order, which only means something for irnn-shift.
    """
    from ..plot.waves import channel_speeds, wave_speed

    source, xs, states, what, _ = _trajectory(checkpoint, task_sample, input_path, data_dir, threads)
    overall, per = wave_speed(states), channel_speeds(states)
    if as_json:
        click.echo(json.dumps({"layout": source.layout, "steps": len(xs), **overall.to_dict(),
                               "channels": [p.to_dict() for p in per]}))
        return
    click.echo(f"{source.describe()} on {_task_text(source)}, {what} ({len(xs)} steps)")
    click.echo(f"wave speed: {overall}")
    if len(per) > 1:
        for c, p in enumerate(per):
            click.echo(f"  channel {c}: {p}")


@plot.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(), metavar="RUN_DIR [RUN_DIR ...]")
@click.option("--metric", help="Key of metrics.jsonl to plot [default: val_acc, else val_loss].")
@click.option("--x", "x_key", type=click.Choice(["step", "epoch"]), default="step", show_default=True)
@click.option("--log/--linear", "logy", default=None, help="y axis scale [default: log for losses spanning >20x].")
@click.option("--out", type=click.Path(dir_okay=False), default="curves.png", show_default=True)
@click.option("--size", callback=_size, metavar="WxH", default="900x540", show_default=True)
@click.option("--dpi", type=click.IntRange(50, 600), default=120, show_default=True)
def curves(run_dirs, metric, x_key, logy, out, size, dpi):
    """Overlay the training curves of several runs (their metrics.jsonl), labelled by arch and config."""
    from ..plot.figures import _mpl, curves_figure, save_figure
    from ..plot.runs import check_metric, load_run, run_labels
    from ..plot.waves import PlotError

    from ..core.io import check_output

    _mpl()
    _check_format(out, gif=False)
    check_output(out, [("a run's log", Path(p) / "metrics.jsonl") for p in run_dirs], what="--out")
    runs = [load_run(p) for p in run_dirs]
    metric = check_metric(runs, metric)
    missing_x = [str(r.path) for r in runs if not r.series(metric, x_key)[0]]
    if missing_x:
        raise PlotError(f"{missing_x[0]}: no records with both {x_key!r} and {metric!r}"
                        + (" (synthetic-task runs have no epochs; use --x step)" if x_key == "epoch" else ""))
    labels = run_labels(runs)
    fig = curves_figure(runs, labels, metric, x=x_key, logy=logy, size_px=size, dpi=dpi)
    click.echo(f"wrote {save_figure(fig, out, dpi)}")
    higher = metric.endswith("acc")
    for run, label in zip(runs, labels):
        xs, ys = run.series(metric, x_key)
        i = max(range(len(ys)), key=lambda j: ys[j] if higher else -ys[j])
        click.echo(f"  {label}: {metric} last {ys[-1]:.4g} at {x_key} {xs[-1]}, best {ys[i]:.4g} at {x_key} {xs[i]}")
