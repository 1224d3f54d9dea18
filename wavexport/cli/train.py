"""``train``, ``eval``, ``average`` and ``list``: runs and checkpoints."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import click

from ..core.errors import TrainingError, WavexportError
from ..core.io import is_onnx_path
from ..core.procs import wait_passing_interrupts
from ..core.text import fmt_duration
from .common import (RegistryChoice, arch_names, fmt_metrics, int_list, preset_names, set_torch_threads,
                     task_names, threads_option)


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
@click.option("--kernel", type=click.IntRange(1), help="wRNN kernel size k, odd (taps of the ring convolution).")
@click.option("--hidden", type=click.IntRange(1), help="iRNN/LSTM/GRU hidden size.")
@click.option("--readout", type=click.Choice(["linear", "mlp"]), help="Readout from the state.")
@click.option("--epochs", type=click.IntRange(1), help="Passes over the training split (image tasks).")
@click.option("--steps", type=click.IntRange(1), help="Training iterations (synthetic tasks), or a cap.")
@click.option("--batch-size", type=click.IntRange(1), help="Sequences per iteration (the global batch under --nproc).")
@click.option("--lr", type=click.FloatRange(0, min_open=True), help="Adam learning rate.")
@click.option("--lr-milestones", callback=int_list, help="Multiply the LR by --lr-gamma at these epochs "
              "(image tasks) or steps (synthetic), e.g. 100.")
@click.option("--lr-gamma", type=click.FloatRange(0, 1, min_open=True),
              help="The LR's factor at each milestone [default: 0.1].")
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
@click.option("--snapshot-every", type=click.IntRange(1), metavar="N", help="Keep the weights every N steps in "
              "RUN/snapshots/, to average later (`wavexport average`). May be added on --resume.")
@click.option("--stop-when-solved", is_flag=True, default=None,
              help="Adding: end the run at the first evaluation whose held-out MSE is <= 0.05.")
@threads_option()
@click.option("--skip-nonfinite", is_flag=True, help="Skip a batch whose loss or gradient is NaN/inf instead of "
              "stopping the run (it still stops after 20 such batches in a row).")
@click.option("--nproc", type=click.IntRange(1), metavar="N",
              help="Data-parallel on N processes of this machine: runs this command under `torchrun --standalone "
              "--nproc_per_node=N` (gloo on CPU, NCCL on GPUs). --batch-size stays the global batch. Several "
              "machines: start torchrun yourself (docs/SCALING.md).")
@click.option("--dry-run", is_flag=True, help="Print the resolved config and parameter count; train nothing.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar (for logs).")
@click.pass_context
def train(ctx, task, arch, preset, out, resume, threads, skip_nonfinite, nproc, dry_run, quiet, **opts):
    """Train ARCH on TASK; writes checkpoint.pt, best.pt and metrics.jsonl to the run directory.

    \b
    Options without a default shown take the --preset's value for TASK and ARCH (--dry-run prints them all).
    Ctrl-C (or SIGTERM) finishes the current step, saves a checkpoint and exits; --resume continues it.
    Image tasks report test accuracy at the epoch of best validation accuracy (the paper's protocol).
    A NaN/inf loss stops the run with exit status 1, keeping its last finite checkpoint (see --skip-nonfinite).
    Under torchrun (or with --nproc) each process trains on its share of every batch (DistributedDataParallel);
    rank 0 writes the run directory, which resumes with any number of processes.
    """
    from ..config import build_run, check_applicable, make_config
    from ..training import Trainer
    from ..training.distributed import env_world, init_from_env, shutdown
    from ..training.trainer import check_milestones

    check_applicable(task, arch, {k: v for k, v in opts.items()
                                  if ctx.get_parameter_source(k) == click.core.ParameterSource.COMMANDLINE})
    try:
        cfg = make_config(task, arch, preset, **opts)
    except ValueError as e:
        raise TrainingError(str(e)) from None
    if ctx.get_parameter_source("lr_milestones") == click.core.ParameterSource.COMMANDLINE:
        check_milestones(cfg.lr_milestones)
    out = Path(out or f"runs/{task}-{arch}{'-quick' if preset == 'quick' else ''}")
    if dry_run:
        run = build_run(cfg, meta=True)
        n_params = run.model.num_parameters()
        click.echo(json.dumps({"train": cfg.to_dict(), "model": run.model_config, "task": run.task.describe(),
                               "parameters": n_params, "out": str(out)}, indent=2))
        click.echo(f"{task}/{arch}: {n_params:,} parameters")
        return
    if nproc and nproc > 1:
        if env_world().active:
            raise TrainingError("--nproc: this is already one process of a torchrun group; leave --nproc out")
        sys.exit(_under_torchrun(nproc, ["train", *command_line(ctx, exclude=("nproc",))]))
    explicit = {k: v for k, v in {**opts, "arch": arch, "preset": preset}.items()
                if ctx.get_parameter_source(k) == click.core.ParameterSource.COMMANDLINE}
    world = env_world()  # under torchrun: this process's rank; else a single process
    quiet = quiet or not world.is_main  # rank 0 speaks for the run
    clean = False
    try:
        init_from_env(opts.get("device") or "auto")  # join torchrun's process group (nothing without torchrun)
        trainer = Trainer(cfg, out, resume=resume, quiet=quiet, resume_overrides=explicit,
                          skip_nonfinite=skip_nonfinite)
        run_cfg = trainer.cfg  # a resumed run's own config: its arch, not the CLI's default
        n_threads = set_torch_threads(threads, trainer.model_config, run_cfg.batch_size)
        name = f"{run_cfg.task}/{run_cfg.arch}"
        if not quiet:
            procs = f" x {world.size} processes" if world.active else ""
            click.echo(f"{trainer.task.describe()} | {run_cfg.arch} {trainer.model.num_parameters():,} params | "
                       f"device {trainer.device}, {n_threads} thread{'s' if n_threads > 1 else ''}{procs} | "
                       f"run dir {out}", err=True)
        result = trainer.run()
        clean = True
    except WavexportError as e:
        if not world.is_main:  # every rank raises it; rank 0 prints it
            sys.exit(e.exit_code)
        raise
    finally:
        shutdown(clean)  # distributed: barrier (every rank got here), then leave the group
    if result["interrupted"]:
        if world.is_main:
            click.echo(f"interrupted at step {result['step']}/{result['total_steps']}: checkpoint saved in {out}; "
                       f"continue with: wavexport train {run_cfg.task} --out {out} --resume", err=True)
        sys.exit(128 + (result["signal"] or signal.SIGINT))  # the shell's convention: 130 (Ctrl-C), 143 (SIGTERM)
    if world.is_main:
        click.echo(f"done: {name} {result['step']} steps in {fmt_duration(result['seconds'])} | "
                   f"best: {fmt_metrics(result['metrics'])} | {out / 'best.pt'}")


def command_line(ctx, exclude=()) -> list[str]:
    """The arguments and the options given explicitly on this command's line, as a list to run it again."""
    args, opts = [], []
    for p in ctx.command.params:
        if p.name in exclude or p.name not in ctx.params:
            continue
        value = ctx.params[p.name]
        if isinstance(p, click.Argument):
            args.append(str(value))
        elif ctx.get_parameter_source(p.name) == click.core.ParameterSource.COMMANDLINE:
            flag = max(p.opts, key=len)
            if p.is_flag:
                opts += [flag] if value else []
            elif isinstance(value, (list, tuple)):
                opts += [flag, ",".join(map(str, value))]
            else:
                opts += [flag, str(value)]
    return args + opts


def _under_torchrun(nproc: int, args: list[str]) -> int:
    """Run ``wavexport ARGS`` as ``nproc`` processes under torchrun; its exit status (130 after a Ctrl-C, 143
    after a SIGTERM).

    torchrun runs in its own process group: a Ctrl-C (or SIGTERM) here is passed to it once, and it passes it to
    each rank once: the ranks finish the step they agree on, rank 0 checkpoints, and the run resumes with
    ``--resume``."""
    from ..training.distributed import torchrun_command

    proc = subprocess.Popen(torchrun_command(nproc, args), preexec_fn=os.setpgrp)
    (rc,), signum = wait_passing_interrupts([proc])
    return 128 + signum if signum else rc  # 130 after a Ctrl-C, 143 after a SIGTERM


# --- eval --------------------------------------------------------------------------------------------------------
@click.command("eval")
@click.argument("checkpoint", metavar="MODEL", type=click.Path())
@click.option("--split", default="test", show_default=True, type=click.Choice(["test", "valid"]),
              help="Held-out split: image tasks' test set or validation images; synthetic tasks' test or "
                   "validation draw.")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Data root (default as for train).")
@click.option("--limit", type=click.IntRange(1), help="Evaluate the first N examples only.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@threads_option("CPU threads for torch, or for ONNX Runtime with a .onnx MODEL")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object of metric name -> value.")
def eval_cmd(checkpoint, split, data_dir, limit, device, threads, as_json):
    """Task metric of a checkpoint (a .pt file or a run directory, whose best.pt is used) or of an exported .onnx
    model (run through ONNX Runtime on the real test set; --device cuda picks its CUDA provider)."""
    from tqdm import tqdm

    if is_onnx_path(checkpoint):
        from ..config import resolve_device
        from ..core.contract import read_contract
        from ..evaluation import EVAL_BATCH, evaluate_export, export_draw
        from ..runtime import StreamingSession, providers_for
        from ..models.flops import step_flops
        from .common import auto_threads

        if split != "test":
            raise TrainingError("an exported model carries no validation split: use --split test")
        # ONNX Runtime's CUDA provider for auto when this onnxruntime has one; cpu/cuda as asked; else refused
        provider = "auto" if device == "auto" else resolve_device(device).type
        if not threads and os.path.exists(checkpoint):
            threads = auto_threads(EVAL_BATCH * step_flops(read_contract(checkpoint).model_config))
        sess = StreamingSession(checkpoint, providers=providers_for(provider), threads=threads or 1)
        c = sess.contract
        total = export_draw(c, limit)[2] or 10_000
        with tqdm(total=total, desc="eval (onnx)", unit="seq", disable=as_json, leave=False) as bar:
            metrics = evaluate_export(sess, limit, data_dir, progress=bar.update)
        name = f"{c.task}/{c.arch} ({os.path.basename(checkpoint)}, onnx)"
    else:
        from ..checkpoint import Checkpoint
        from ..evaluation import EVAL_BATCH, evaluate_checkpoint

        ckpt = Checkpoint.load(checkpoint)
        if os.path.isdir(checkpoint) and ckpt.path and os.path.basename(ckpt.path) != "best.pt":
            click.echo(f"note: {checkpoint} has no best.pt yet (no evaluation so far): evaluating its "
                       f"{os.path.basename(ckpt.path)}, step {ckpt.progress.get('step', '?')}", err=True)
        set_torch_threads(threads, ckpt.model_config, EVAL_BATCH)
        name = f"{ckpt.task_name}/{ckpt.arch}"

        @contextlib.contextmanager
        def bar(split, total):
            with tqdm(total=total, desc=f"eval {split}", unit="seq", disable=as_json, leave=False) as b:
                yield b.update

        metrics = evaluate_checkpoint(ckpt, split, data_dir, limit, device, bar)
    if as_json:
        click.echo(json.dumps(metrics))
    else:
        click.echo(f"{name} {split} ({metrics['n']} samples): {fmt_metrics(metrics)}")


# --- average -----------------------------------------------------------------------------------------------------
@click.command("average")
@click.argument("sources", nargs=-1, required=True, metavar="SOURCE...")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="The averaged checkpoint (.pt).")
@click.option("--from-step", type=click.IntRange(0), help="A run directory's snapshots from this step on.")
@click.option("--to-step", type=click.IntRange(0), help="A run directory's snapshots up to this step.")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Data root (default as for train).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda (for scoring).")
@threads_option()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object of the averaged model's metrics.")
def average_cmd(sources, out, from_step, to_step, data_dir, device, threads, as_json):
    """Average the weights of checkpoints of one run: stochastic weight averaging, after the fact.

    \b
    SOURCE: a run directory (its snapshots/, kept by `train --snapshot-every N`, within --from-step/--to-step)
    or checkpoint files. The mean is scored on the validation and test splits exactly as training scores a
    checkpoint, and written to --out, which `eval` and `export` take like any best.pt.
    Snapshots taken at a small constant learning rate (after an LR drop) average well.
    \b
    wavexport train psmnist --out RUN --lr-milestones 10 --epochs 14 --snapshot-every 25
    wavexport average RUN --from-step 4460 --out RUN/average.pt   # the snapshots at lr 1e-4
    """
    from tqdm import tqdm

    from ..checkpoint import RUN_FILES, SNAPSHOTS, average_checkpoints, snapshot_files
    from ..config import resolve_device
    from ..core.io import check_output, is_stdout
    from ..evaluation import EVAL_BATCH, score_held_out

    files = [f for src in sources for f in snapshot_files(src, from_step, to_step)]
    check_output(out, [("a checkpoint averaged", f) for f in files], suffix=".pt", what="--out")
    folder, name = os.path.split(os.path.abspath(out))
    if name in RUN_FILES and os.path.exists(os.path.join(folder, "checkpoint.pt")):
        raise TrainingError(f"--out {out} would replace a run's own {name}; choose another name")
    if os.path.basename(folder) == SNAPSHOTS:
        raise TrainingError(f"--out {out} is in a run's {SNAPSHOTS}/ folder, where it would be taken for a "
                            "snapshot; choose another folder")
    resolve_device(device)  # refused now, before the files are read
    ck = average_checkpoints(files)
    set_torch_threads(threads, ck.model_config, EVAL_BATCH)

    @contextlib.contextmanager
    def bar(split, total):
        with tqdm(total=total, desc=f"eval {split}", unit="seq", disable=as_json, leave=False) as b:
            yield b.update

    ck.metrics = score_held_out(ck, data_dir, device, bar)
    ck.best = {"step": ck.progress["step"], **{k: v for k, v in ck.metrics.items() if k != "eval_limit"}}
    ck.save(out)
    steps = ck.progress["averaged_steps"]
    report = json.dumps({**ck.metrics, "averaged_steps": steps}) if as_json else (
        f"{ck.task_name}/{ck.arch}: mean of {len(files)} checkpoints (steps {min(steps)}..{max(steps)}) | "
        f"{fmt_metrics(ck.metrics)} | {out}")
    click.echo(report, err=is_stdout(out))  # the checkpoint's bytes went to stdout: the report goes to stderr


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
            model = build_run(cfg, meta=True).model
            size = " x ".join(str(v) for v in cfg.model_overrides().values())
            budget = f"{cfg.epochs} epochs" if cfg.epochs else f"{cfg.steps} steps"
            click.echo(f"  {task:10s} {arch:5s} {size:>9s}  {model.num_parameters():>8,} params  "
                       f"batch {cfg.batch_size}, lr {cfg.lr:g}, {budget}")


