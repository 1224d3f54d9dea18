"""``train``, ``eval`` and ``list``: runs and checkpoints."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from ..core.errors import TrainingError
from ..core.io import is_onnx_path
from .common import RegistryChoice, arch_names, fmt_duration, fmt_metrics, int_list, preset_names, task_names


# --- train -------------------------------------------------------------------------------------------------------
@click.command()
@click.argument("task", type=RegistryChoice(task_names))
@click.option("--arch", default="wrnn", show_default=True, help="Architecture (see `wavexport list`).",
              type=RegistryChoice(arch_names))
@click.option("--preset", default="paper", show_default=True, type=RegistryChoice(preset_names),
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
@click.option("--stop-when-solved", is_flag=True, default=None,
              help="Adding: end the run at the first evaluation whose held-out MSE is <= 0.05.")
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
    from ..config import build_run, make_config
    from ..training import Trainer

    try:
        cfg = make_config(task, arch, preset, **opts)
    except ValueError as e:
        raise TrainingError(str(e)) from None
    out = Path(out or f"runs/{task}-{arch}{'-quick' if preset == 'quick' else ''}")
    if dry_run:
        run = build_run(cfg)
        n_params = run.model.num_parameters()
        click.echo(json.dumps({"train": cfg.to_dict(), "model": run.model_config, "task": run.task.describe(),
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
    click.echo(f"done: {task}/{arch} {result['step']} steps in {fmt_duration(result['seconds'])} | "
               f"best: {fmt_metrics(result['metrics'])} | {out / 'best.pt'}")


# --- eval --------------------------------------------------------------------------------------------------------
@click.command("eval")
@click.argument("checkpoint", metavar="MODEL", type=click.Path())
@click.option("--split", default="test", show_default=True, type=click.Choice(["test", "valid"]))
@click.option("--data-dir", type=click.Path(file_okay=False), help="Data root (default as for train).")
@click.option("--limit", type=click.IntRange(1), help="Evaluate the first N examples only.")
@click.option("--device", default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object of metric name -> value.")
def eval_cmd(checkpoint, split, data_dir, limit, device, as_json):
    """Task metric of a checkpoint (a .pt file or a run directory, whose best.pt is used) or of an exported .onnx
    model (run through ONNX Runtime on the real test set; --device cuda picks its CUDA provider)."""
    from tqdm import tqdm

    if is_onnx_path(checkpoint):
        from ..config import resolve_device
        from ..evaluation import default_eval_size, evaluate_export, task_from_contract
        from ..runtime import StreamingSession, providers_for

        if split != "test":
            raise TrainingError("an exported model carries no validation split: use --split test")
        # ONNX Runtime's CUDA provider for auto when this onnxruntime has one; cpu/cuda as asked; else refused
        provider = "auto" if device == "auto" else resolve_device(device).type
        sess = StreamingSession(checkpoint, providers=providers_for(provider))
        c = sess.contract
        total = limit or default_eval_size(task_from_contract(c)) or 10_000
        with tqdm(total=total, desc="eval (onnx)", unit="seq", disable=as_json, leave=False) as bar:
            metrics = evaluate_export(sess, limit, data_dir, progress=bar.update)
        name = f"{c.task}/{c.arch} ({os.path.basename(checkpoint)}, onnx)"
    else:
        from ..checkpoint import Checkpoint
        from ..evaluation import evaluate_checkpoint

        ckpt = Checkpoint.load(checkpoint)
        name = f"{ckpt.task_name}/{ckpt.arch}"
        with tqdm(desc="eval", unit="seq", disable=as_json, leave=False) as bar:
            metrics = evaluate_checkpoint(ckpt, split, data_dir, limit, device, progress=bar.update)
    if as_json:
        click.echo(json.dumps(metrics))
    else:
        click.echo(f"{name} {split} ({metrics['n']} samples): {fmt_metrics(metrics)}")


# --- list --------------------------------------------------------------------------------------------------------
@click.command("list")
def list_cmd():
    """Tasks, architectures, and the parameter count of every paper configuration."""
    from ..config import build_run, make_config
    from ..models import ARCHS
    from ..tasks import TASKS

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
            model = build_run(cfg).model
            size = " x ".join(str(v) for v in cfg.model_overrides().values())
            budget = f"{cfg.epochs} epochs" if cfg.epochs else f"{cfg.steps} steps"
            click.echo(f"  {task:10s} {arch:5s} {size:>9s}  {model.num_parameters():>8,} params  "
                       f"batch {cfg.batch_size}, lr {cfg.lr:g}, {budget}")


