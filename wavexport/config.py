"""config -> task -> model, in one place: the training configuration, its presets (``paper``: the authors'
settings; ``quick``: minutes on a CPU) and :func:`build_run`, which every command that needs a model from a config
(train, ``--dry-run``, list, the benchmarks) calls.

The paper's grid was lr {1e-3, 1e-4, 1e-5} x gradient-norm clip {0, 1, 10, 100, 1000}, with the winners unpublished.
Defaults here: Adam, lr 1e-3 and clip 1 for the Wave-RNN and the gated RNNs; lr 1e-4 and clip 1 for the iRNN,
which diverges at 1e-3 with identity recurrence on 784-step sequences.
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field, fields

import torch

from .core.errors import ModelConfigError, TrainingError
from .models import ARCHS, RecurrentModel, build_model, resolve_config
from .tasks import TASKS, Task, make_task

MODEL_KEYS = ("channels", "ring", "kernel", "hidden", "readout")


@dataclass
class TrainConfig:
    task: str
    arch: str = "wrnn"
    preset: str = "paper"
    seq: int | None = None              # copy/adding: the paper's T; nscifar10: total length
    channels: int | None = None
    ring: int | None = None
    kernel: int | None = None
    hidden: int | None = None
    readout: str | None = None
    epochs: int | None = None           # image tasks: passes over the training split
    steps: int | None = None            # cap on training iterations (the budget of the synthetic tasks)
    batch_size: int = 128
    lr: float = 1e-3
    lr_milestones: list[int] = field(default_factory=list)  # epochs (image tasks) or steps (synthetic)
    lr_gamma: float = 0.1
    grad_clip: float = 1.0              # max gradient norm; 0 disables clipping
    seed: int = 0
    device: str = "auto"
    data_dir: str | None = None
    limit: int | None = None            # train on the first N examples of the (shuffled) training split
    eval_limit: int | None = None       # evaluate on the first N validation/test examples (quick checks only)
    eval_every: int = 100               # synthetic tasks: steps between held-out evaluations
    eval_batch: int = 1000              # synthetic tasks: size of the fixed held-out batch
    checkpoint_every: int = 200         # also checkpoint every N steps inside an epoch
    snapshot_every: int | None = None   # keep the weights every N steps in snapshots/ (for `wavexport average`)
    stop_when_solved: bool = False      # adding: end the run at the first evaluation that solves the task

    def model_overrides(self) -> dict:
        return {k: getattr(self, k) for k in MODEL_KEYS if getattr(self, k) is not None}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _family(arch: str) -> str:
    return "wrnn" if arch.startswith("wrnn") else ("irnn" if arch.startswith("irnn") else "gated")


# (task, family) -> paper settings. Sizes from the paper; epochs/iterations and schedule from the authors' code.
PAPER = {
    ("psmnist", "wrnn"): dict(channels=16, ring=256, batch_size=128, epochs=120, lr_milestones=[100]),
    ("psmnist", "irnn"): dict(hidden=256, batch_size=128, epochs=250, lr_milestones=[100], lr=1e-4),
    ("psmnist", "gated"): dict(hidden=128, batch_size=128, epochs=120, lr_milestones=[100]),
    ("nscifar10", "wrnn"): dict(channels=16, ring=256, batch_size=256, epochs=120, lr_milestones=[100]),
    ("nscifar10", "irnn"): dict(hidden=256, batch_size=256, epochs=250, lr_milestones=[100], lr=1e-4),
    ("nscifar10", "gated"): dict(hidden=128, batch_size=256, epochs=120, lr_milestones=[100]),
    ("adding", "wrnn"): dict(channels=27, ring=100, batch_size=128, steps=60000),
    ("adding", "irnn"): dict(hidden=100, batch_size=128, steps=60000, lr=1e-4),
    ("adding", "gated"): dict(hidden=100, batch_size=128, steps=60000),
    ("copy", "wrnn"): dict(channels=6, ring=100, batch_size=128, steps=60000),
    ("copy", "irnn"): dict(hidden=100, batch_size=128, steps=60000, lr=1e-4),
    ("copy", "gated"): dict(hidden=100, batch_size=128, steps=60000),
}
for _fam in ("wrnn", "irnn", "gated"):
    PAPER[("smnist", _fam)] = PAPER[("psmnist", _fam)]

# CPU-sized runs that finish in minutes on 2 cores and still learn visibly.
QUICK = {
    ("psmnist", "wrnn"): dict(channels=8, ring=64, batch_size=64, epochs=1, steps=600, checkpoint_every=100),
    ("psmnist", "irnn"): dict(hidden=64, batch_size=64, epochs=1, steps=600, lr=1e-4, checkpoint_every=100),
    ("psmnist", "gated"): dict(hidden=32, batch_size=64, epochs=1, steps=600, checkpoint_every=100),
    ("nscifar10", "wrnn"): dict(seq=200, channels=8, ring=64, batch_size=64, epochs=1, steps=300),
    ("nscifar10", "irnn"): dict(seq=200, hidden=64, batch_size=64, epochs=1, steps=300, lr=1e-4),
    ("nscifar10", "gated"): dict(seq=200, hidden=32, batch_size=64, epochs=1, steps=300),
    ("adding", "wrnn"): dict(seq=50, channels=8, ring=50, batch_size=64, steps=400, eval_every=50, eval_batch=256),
    ("adding", "irnn"): dict(seq=50, hidden=50, batch_size=64, steps=400, lr=1e-4, eval_every=50, eval_batch=256),
    ("adding", "gated"): dict(seq=50, hidden=50, batch_size=64, steps=400, eval_every=50, eval_batch=256),
    ("copy", "wrnn"): dict(seq=20, channels=6, ring=40, batch_size=64, steps=300, eval_every=50, eval_batch=256),
    ("copy", "irnn"): dict(seq=20, hidden=40, batch_size=64, steps=300, lr=1e-4, eval_every=50, eval_batch=256),
    ("copy", "gated"): dict(seq=20, hidden=40, batch_size=64, steps=300, eval_every=50, eval_batch=256),
}
for _fam in ("wrnn", "irnn", "gated"):
    QUICK[("smnist", _fam)] = QUICK[("psmnist", _fam)]

PRESETS = {"paper": PAPER, "quick": QUICK}


def preset_values(task: str, arch: str, preset: str) -> dict:
    if preset not in PRESETS:
        raise TrainingError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    if arch not in ARCHS:
        raise TrainingError(f"unknown arch {arch!r}; choose one of: {', '.join(ARCHS)}")
    key = (task, _family(arch))
    if key not in PRESETS[preset]:
        raise TrainingError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")
    values = dict(PRESETS[preset][key])
    if _family(arch) == "irnn":
        values.setdefault("lr", 1e-4)
    return values


IMAGE_TASKS = ("smnist", "psmnist", "nscifar10")  # trained in epochs over a dataset; the others draw batches


def check_applicable(task: str, arch: str, options: dict) -> None:
    """Refuse options a user gave that do nothing for ``task`` or contradict ``arch``: ignoring them silently
    would leave a run that is not the one asked for. ``options``: TrainConfig names -> values, as given."""
    image = task in IMAGE_TASKS
    given = {k for k, v in options.items() if v is not None and v is not False}
    kind = "an image task: one evaluation per epoch, on its validation split" if image else \
        "a synthetic task: it trains for --steps iterations on fresh batches"
    for name, applies in (("epochs", image), ("eval_every", not image), ("eval_batch", not image),
                          ("limit", image), ("eval_limit", image)):
        if name in given and not applies:
            raise TrainingError(f"--{name.replace('_', '-')} does not apply to {task}, {kind}")
    if "stop_when_solved" in given and task != "adding":
        raise TrainingError(f"--stop-when-solved applies to adding only (solved: held-out MSE <= 0.05), not {task}")
    fixed = ARCHS[arch].defaults.get("readout") if arch in ARCHS else None
    if "readout" in given and fixed and options["readout"] != fixed:
        raise TrainingError(f"--arch {arch} has the {fixed} readout by definition; for a {options['readout']} "
                            f"readout use an arch without it (see `wavexport list`)")


# What a resumed run may change (everything else must agree with the saved run): its budget, where it runs, how
# often it saves, and the LR drops it has not reached yet (checked by the trainer: the past is not rewritten).
RESUME_MAY_CHANGE = ("epochs", "steps", "device", "data_dir", "checkpoint_every", "snapshot_every",
                     "stop_when_solved", "lr_milestones")


def resume_config(saved: TrainConfig, overrides: dict) -> TrainConfig:
    """The config a saved run resumed with ``overrides`` (the options given explicitly) trains with.

    An image run given a different ``epochs`` without ``steps`` trains that many epochs: a ``steps`` cap from an
    earlier command (a run stopped mid-epoch on purpose, or the quick preset's) would otherwise end it where it is,
    having trained nothing. The same ``epochs`` again (a command re-run with ``--resume``) keeps the cap."""
    merged = TrainConfig.from_dict(saved.to_dict())
    if saved.epochs is not None and "steps" not in overrides and overrides.get("epochs", saved.epochs) != saved.epochs:
        merged.steps = None
    for k, v in overrides.items():
        if k in RESUME_MAY_CHANGE:
            setattr(merged, k, v)
        elif hasattr(saved, k) and getattr(saved, k) != v:
            raise TrainingError(f"--resume: cannot change {k} of a saved run (it has {getattr(saved, k)!r})")
    return merged


def make_config(task: str, arch: str = "wrnn", preset: str = "paper", **overrides) -> TrainConfig:
    """The preset's values for (task, arch), then every override that is not None."""
    values = preset_values(task, arch, preset)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(task=task, arch=arch, preset=preset, **values)


def train_args(options: dict) -> list[str]:
    """``wavexport train`` arguments for train options (TrainConfig names, and the run options such as threads):
    ``--name-with-dashes VALUE``, a flag alone for True, a comma list for a list, nothing for None or False."""
    args: list[str] = []
    for k, v in options.items():
        if v is None or v is False:
            continue
        flag = "--" + k.replace("_", "-")
        if v is True:
            args.append(flag)
        elif isinstance(v, (list, tuple)):
            args += [flag, ",".join(str(x) for x in v)]
        else:
            args += [flag, str(v)]
    return args


def train_command(argv: list[str], out, threads: int, device: str | None = None) -> list[str]:
    """The ``wavexport train`` process for a run directory ``out`` (reproduce's runs and the sweep's trials):
    ``argv`` (task, arch and train options), quiet, ``threads`` threads, ``device`` when given, and ``--resume``
    when ``out`` already holds a checkpoint, so that relaunching a stopped run continues it."""
    import sys
    from pathlib import Path

    cmd = [sys.executable, "-m", "wavexport", "train", *argv, "--out", str(out), "--quiet", "--threads", str(threads)]
    if device is not None:
        cmd += ["--device", device]
    if (Path(out) / "checkpoint.pt").is_file():
        cmd.append("--resume")
    return cmd


def resolve_device(name: str):
    """A torch device from ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda asked for, but torch sees no CUDA device")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise TrainingError(f"unknown device {name!r} (auto, cpu or cuda)")
    return torch.device(name)


@dataclass
class Run:
    """What a config builds: the task, the resolved model config (what checkpoints and exports record) and the
    model, freshly initialised."""
    task: Task
    model_config: dict
    model: RecurrentModel


def build_run(cfg: TrainConfig, task_args: dict | None = None, meta: bool = False) -> Run:
    """config -> task -> model. ``task_args`` (a saved task's ``args()``, e.g. the psMNIST permutation) wins over
    the config's seed, so a resumed run rebuilds exactly its task. Bad combinations raise :class:`TrainingError`
    (a new run's held-out batch too small for its task's solved verdict too; a saved run resumes as it was).
    ``meta``: the model's tensors have shapes but no storage, for checks and parameter counts that must not
    allocate what a mistyped size asks for."""
    try:
        task = make_task(cfg.task, cfg.seq, cfg.seed, **(task_args or {}))
        least = getattr(task, "solved_min_samples", 0)
        if task_args is None and task.kind == "synthetic" and cfg.eval_batch < least:  # a new run (a saved one: as is)
            raise TrainingError(f"--eval-batch {cfg.eval_batch} is too small for {cfg.task}: its solved verdict "
                                f"(held-out MSE <= {task.solved_threshold}) needs at least {least} sequences")
        model_config = resolve_config(cfg.arch, task.n_in, task.n_out, **cfg.model_overrides())
        with torch.device("meta") if meta else contextlib.nullcontext():
            model = build_model(model_config)
        return Run(task, model_config, model)
    except (ModelConfigError, ValueError) as e:
        raise TrainingError(str(e)) from None
    except (MemoryError, RuntimeError) as e:  # torch.OutOfMemoryError is a RuntimeError too
        if not isinstance(e, MemoryError) and "alloc" not in str(e) and "out of memory" not in str(e):
            raise
        with torch.device("meta"):
            n = build_model(model_config).num_parameters()
        raise TrainingError(f"{cfg.arch} with {n:,} parameters does not fit in memory: choose a smaller "
                            f"size ({', '.join(f'--{k} {v}' for k, v in cfg.model_overrides().items())})") from None
