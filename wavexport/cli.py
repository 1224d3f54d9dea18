"""The ``wavexport`` command line."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from . import __version__
from .cliutil import int_list
from .errors import WavexportError


class Group(click.Group):
    """Turns the toolkit's own errors into one line on stderr and exit status 2: no traceback for a user mistake."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except WavexportError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="wavexport")
def main():
    """Train the Wave-RNN and its baselines on the paper's tasks, export them to ONNX, stream them.

    \b
    wavexport train psmnist --preset quick     train a small wRNN on a CPU in minutes
    wavexport eval runs/psmnist-wrnn-quick     test accuracy of its best checkpoint
    wavexport list                             tasks, architectures and paper parameter counts
    """


def _fmt_duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def _fmt_metrics(metrics: dict) -> str:
    keys = [k for k in ("test_acc", "test_loss", "val_acc", "val_loss", "acc", "loss", "solved_at") if k in metrics]
    return ", ".join(f"{k} {metrics[k]:.4f}" if isinstance(metrics[k], float) else f"{k} {metrics[k]}"
                     for k in keys)


# --- train -------------------------------------------------------------------------------------------------------
@main.command()
@click.argument("task", type=click.Choice(["copy", "adding", "smnist", "psmnist", "nscifar10"]))
@click.option("--arch", default="wrnn", show_default=True, help="Architecture (see `wavexport list`).",
              type=click.Choice(["wrnn", "wrnn-identity", "wrnn-mlp", "irnn", "irnn-shift", "lstm", "gru"]))
@click.option("--preset", default="paper", show_default=True, type=click.Choice(["paper", "quick"]),
              help="paper: the authors' settings for TASK and ARCH; quick: a CPU-sized run of a few minutes.")
@click.option("--seq", "seq", type=click.IntRange(1), help="copy/adding: the paper's T; nscifar10: total length.")
@click.option("--channels", type=click.IntRange(1), help="wRNN channels C.")
@click.option("--ring", type=click.IntRange(1), help="wRNN ring size N (units per channel).")
@click.option("--kernel", type=click.IntRange(1), help="wRNN kernel size k (odd).")
@click.option("--hidden", type=click.IntRange(1), help="iRNN/LSTM/GRU hidden size.")
@click.option("--readout", type=click.Choice(["linear", "mlp"]), help="Readout from the state.")
@click.option("--epochs", type=click.IntRange(1), help="Passes over the training split (image tasks).")
@click.option("--steps", type=click.IntRange(1), help="Training iterations (synthetic tasks), or a cap.")
@click.option("--batch-size", type=click.IntRange(1))
@click.option("--lr", type=click.FloatRange(0, min_open=True), help="Adam learning rate.")
@click.option("--lr-milestones", callback=int_list, help="Divide the LR by 1/--lr-gamma at these epochs "
              "(image tasks) or steps (synthetic), e.g. 100.")
@click.option("--lr-gamma", type=click.FloatRange(0, 1, min_open=True))
@click.option("--grad-clip", type=click.FloatRange(0), help="Max gradient norm, 0 = off.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds init, data order, psMNIST permutation.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Data root [default: $WAVEXPORT_DATA, "
              "else ~/.cache/wavexport]. Holds MNIST/raw/ and cifar-10-batches-py/.")
@click.option("--out", type=click.Path(file_okay=False), help="Run directory [default: runs/TASK-ARCH[-quick]].")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its checkpoint.pt.")
@click.option("--limit", type=click.IntRange(1), help="Train on the first N training examples only.")
@click.option("--eval-limit", type=click.IntRange(1), help="Validate/test on the first N examples only.")
@click.option("--eval-every", type=click.IntRange(1), help="Synthetic tasks: steps between evaluations.")
@click.option("--eval-batch", type=click.IntRange(1), help="Synthetic tasks: size of the held-out batch.")
@click.option("--checkpoint-every", type=click.IntRange(1), help="Also checkpoint every N steps.")
@click.option("--threads", type=click.IntRange(1), help="CPU threads for torch [default: torch's choice, one per "
              "core]. 1 avoids stalls when other jobs share the cores.")
@click.option("--dry-run", is_flag=True, help="Print the resolved config and parameter count; train nothing.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar (for logs).")
@click.pass_context
def train(ctx, task, arch, preset, out, resume, threads, dry_run, quiet, **opts):
    """Train ARCH on TASK; writes checkpoint.pt, best.pt and metrics.jsonl to the run directory.

    \b
    Ctrl-C finishes the current step, saves a checkpoint and exits; --resume continues it.
    Image tasks report test accuracy at the epoch of best validation accuracy (the paper's protocol).
    """
    from .models import build_model, resolve_config
    from .tasks import make_task
    from .training import Trainer, TrainingError, make_config

    try:
        cfg = make_config(task, arch, preset, **opts)
    except ValueError as e:
        raise TrainingError(str(e)) from None
    out = Path(out or f"runs/{task}-{arch}{'-quick' if preset == 'quick' else ''}")
    if dry_run:
        try:
            t = make_task(task, cfg.seq, cfg.seed)
            model_cfg = resolve_config(arch, t.n_in, t.n_out, **cfg.model_overrides())
            n_params = build_model(model_cfg).num_parameters()
        except ValueError as e:
            raise TrainingError(str(e)) from None
        click.echo(json.dumps({"train": cfg.to_dict(), "model": model_cfg, "task": t.describe(),
                               "parameters": n_params, "out": str(out)}, indent=2))
        click.echo(f"{task}/{arch}: {n_params:,} parameters")
        return
    if threads:
        import torch

        torch.set_num_threads(threads)
    explicit = {k: v for k, v in {**opts, "arch": arch, "preset": preset}.items()
                if ctx.get_parameter_source(k) == click.core.ParameterSource.COMMANDLINE}
    trainer = Trainer(cfg, out, resume=resume, quiet=quiet, resume_overrides=explicit)
    if not quiet:
        click.echo(f"{trainer.task.describe()} | {arch} {trainer.model.num_parameters():,} params | "
                   f"device {trainer.device} | run dir {out}", err=True)
    result = trainer.run()
    if result["interrupted"]:
        click.echo(f"interrupted at step {result['step']}/{result['total_steps']}: checkpoint saved in {out}; "
                   f"continue with: wavexport train {task} --out {out} --resume", err=True)
        sys.exit(130)
    click.echo(f"done: {task}/{arch} {result['step']} steps in {_fmt_duration(result['seconds'])} | "
               f"best: {_fmt_metrics(result['metrics'])} | {out / 'best.pt'}")


# --- eval --------------------------------------------------------------------------------------------------------
@main.command("eval")
@click.argument("checkpoint", metavar="MODEL", type=click.Path())
@click.option("--split", default="test", show_default=True, type=click.Choice(["test", "valid"]))
@click.option("--data-dir", type=click.Path(file_okay=False), help="Data root (default as for train).")
@click.option("--limit", type=click.IntRange(1), help="Evaluate the first N examples only.")
@click.option("--device", default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object of metric name -> value.")
def eval_cmd(checkpoint, split, data_dir, limit, device, as_json):
    """Task metric of a checkpoint (a .pt file or a run directory, whose best.pt is used) or of an exported .onnx
    model (run through ONNX Runtime on the real test set; --device cuda picks its CUDA provider)."""
    from .runtime.commands import eval_onnx, is_onnx_path

    if is_onnx_path(checkpoint):
        from .training import resolve_device

        if device == "auto":  # ONNX Runtime's CUDA provider when this onnxruntime has one (the gpu extra)
            import onnxruntime as ort

            provider = "cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"
        else:
            provider = resolve_device(device).type  # cpu or cuda; anything else is refused as for checkpoints
        metrics, c = eval_onnx(checkpoint, split, data_dir, limit, provider, progress=not as_json)
        name = f"{c.task}/{c.arch} ({os.path.basename(checkpoint)}, onnx)"
    else:
        from .training import load_checkpoint
        from .training.trainer import evaluate_checkpoint

        ckpt = load_checkpoint(checkpoint)
        name = f"{ckpt['task']['name']}/{ckpt['model_config']['arch']}"
        metrics = evaluate_checkpoint(ckpt, split, data_dir, limit, device, progress=not as_json)
    if as_json:
        click.echo(json.dumps(metrics))
    else:
        click.echo(f"{name} {split} ({metrics['n']} samples): {_fmt_metrics(metrics)}")


# --- list --------------------------------------------------------------------------------------------------------
@main.command("list")
def list_cmd():
    """Tasks, architectures, and the parameter count of every paper configuration."""
    from .models import ARCHS, build_model, resolve_config
    from .tasks import TASKS, make_task
    from .training import make_config

    click.echo("tasks:")
    for name, about in TASKS.items():
        click.echo(f"  {name:10s} {about}")
    click.echo("architectures:")
    for name, spec in ARCHS.items():
        click.echo(f"  {name:14s} {spec.about}")
    click.echo("paper configurations (--preset paper):")
    for task in TASKS:
        for arch in ("wrnn", "irnn"):
            cfg = make_config(task, arch, "paper")
            t = make_task(task, cfg.seq)
            model = build_model(resolve_config(arch, t.n_in, t.n_out, **cfg.model_overrides()))
            size = " x ".join(str(v) for v in cfg.model_overrides().values())
            budget = f"{cfg.epochs} epochs" if cfg.epochs else f"{cfg.steps} steps"
            click.echo(f"  {task:10s} {arch:5s} {size:>9s}  {model.num_parameters():>8,} params  "
                       f"batch {cfg.batch_size}, lr {cfg.lr:g}, {budget}")


from .plot.commands import plot  # noqa: E402
main.add_command(plot)


from .exporters.commands import export_cmd, inspect_cmd  # noqa: E402

main.add_command(export_cmd, "export")
main.add_command(inspect_cmd, "inspect")

from .runtime.commands import bench_cmd, run_cmd, sample_cmd  # noqa: E402

main.add_command(run_cmd, "run")
main.add_command(bench_cmd, "bench")
main.add_command(sample_cmd, "sample")


if __name__ == "__main__":
    main()
