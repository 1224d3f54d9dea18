"""What a sweep is, as data: the task and the fixed train options, the swept parameters (a grid, or ranges for a
sampler), the objective, and how a trial becomes a ``wavexport train`` command line.

A :class:`SweepSpec` is stored in the study (its user attributes, JSON), so every worker, on any machine, runs the
same sweep from the database alone.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..config import TrainConfig, train_args
from ..core.errors import WavexportError

FORMAT = "wavexport.sweep/1"
SPEC_ATTR = "wavexport_sweep"         # the study user attribute that holds the spec
SPEC_FILE = "sweep.json"              # a readable copy in the sweep folder (and where its storage is)
DB_FILE = "sweep.db"                  # the default storage: SQLite in the sweep folder
TRIALS_DIR = "trials"                 # the trials' run directories, under the sweep folder
UNSOLVED_CAP = 1.0                    # steps_to_solve of an unsolved run: budget x (1 + min(best MSE, this))
NOT_SWEPT = {"task", "lr_milestones", "stop_when_solved", "data_dir", "device"}
RUN_OPTIONS = ("skip_nonfinite", "nproc")   # train options that are not part of the config


class SweepError(WavexportError):
    """A sweep cannot be made or run as asked (bad grid or range, a folder that holds another sweep, a study that
    is not there, a storage that cannot be opened)."""


# --- objectives --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Objective:
    """The number a trial is scored by: the task's primary metric, as the paper reports it."""
    name: str
    direction: str      # "minimize" or "maximize"
    about: str

    @property
    def minimize(self) -> bool:
        return self.direction == "minimize"


OBJECTIVES = {
    "steps_to_solve": Objective("steps_to_solve", "minimize",
                                "iterations until the held-out MSE first reaches the task's threshold "
                                "(unsolved: the step budget x (1 + best MSE, at most 1); diverged: 2 x budget)"),
    "final_val_loss": Objective("final_val_loss", "minimize",
                                "held-out loss at the last evaluation (diverged: inf)"),
    "best_val_acc": Objective("best_val_acc", "maximize",
                              "best validation accuracy (the paper's protocol; test accuracy is taken there)"),
}


def objective_for(task) -> Objective:
    """Image tasks: best validation accuracy. A synthetic task with a solved threshold (adding): iterations to solve.
    Other synthetic tasks (copy): the final held-out loss."""
    if task.kind == "dataset":
        return OBJECTIVES["best_val_acc"]
    if getattr(task, "solved_threshold", None) is not None:
        return OBJECTIVES["steps_to_solve"]
    return OBJECTIVES["final_val_loss"]


# --- swept parameters --------------------------------------------------------------------------------------------
def _field_kind(name: str) -> str:
    """``float``, ``int`` or ``str``: the type of a TrainConfig field, for parsing values given on a command line."""
    types = {f.name: str(f.type) for f in fields(TrainConfig)}
    t = types[name]
    if "list" in t or "bool" in t:
        return "other"
    return "float" if "float" in t else ("int" if "int" in t else "str")


def param_name(raw: str) -> str:
    """``grad-clip`` or ``grad_clip`` -> ``grad_clip``, checked against the train options that can be swept."""
    name = raw.strip().replace("-", "_")
    names = {f.name for f in fields(TrainConfig)}
    if name not in names or name in NOT_SWEPT or _field_kind(name) == "other":
        ok = sorted(n for n in names - NOT_SWEPT if _field_kind(n) != "other")
        raise SweepError(f"cannot sweep {raw!r}: choose among the train options {', '.join(ok)}")
    return name


def parse_value(name: str, text: str):
    kind = _field_kind(name)
    text = text.strip()
    try:
        if kind == "float":
            v = float(text)
            if not math.isfinite(v):
                raise ValueError
            return v
        if kind == "int":
            return int(text)
        return text
    except ValueError:
        raise SweepError(f"{name}: {text!r} is not a{'n' if kind == 'int' else ''} {kind}") from None


def parse_grid(items) -> dict[str, list]:
    """``["lr=1e-3,1e-4", "grad_clip=0,1,10"]`` -> ``{"lr": [0.001, 0.0001], "grad_clip": [0.0, 1.0, 10.0]}``."""
    grid: dict[str, list] = {}
    for item in items or ():
        name, sep, values = item.partition("=")
        if not sep or not values.strip():
            raise SweepError(f"--grid {item!r}: expected NAME=V1,V2,... e.g. lr=1e-3,1e-4")
        name = param_name(name)
        if name in grid:
            raise SweepError(f"--grid: {name} given twice")
        vals = [parse_value(name, v) for v in values.split(",") if v.strip()]
        if len(set(vals)) != len(vals):
            raise SweepError(f"--grid {item!r}: a value is repeated")
        grid[name] = vals
    return grid


@dataclass(frozen=True)
class Range:
    """A search-space dimension for a sampler: ``low..high``, on a log scale with ``log``."""
    low: float
    high: float
    log: bool = False
    kind: str = "float"   # or "int"

    def to_list(self) -> list:
        return [self.low, self.high, self.log, self.kind]

    @classmethod
    def from_list(cls, v) -> "Range":
        return cls(v[0], v[1], bool(v[2]), v[3])


def parse_ranges(items) -> dict[str, Range]:
    """``["lr=1e-5:1e-2:log", "seq=100:1000"]`` -> ranges (an int option gives integer values)."""
    out: dict[str, Range] = {}
    for item in items or ():
        name, sep, rest = item.partition("=")
        parts = rest.split(":")
        if not sep or len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("log", "lin", "linear")):
            raise SweepError(f"--range {item!r}: expected NAME=LOW:HIGH or NAME=LOW:HIGH:log, e.g. lr=1e-5:1e-2:log")
        name = param_name(name)
        kind = _field_kind(name)
        if kind == "str":
            raise SweepError(f"--range {name}: a text option has no range; give its values with --grid")
        low, high = parse_value(name, parts[0]), parse_value(name, parts[1])
        log = len(parts) == 3 and parts[2] == "log"
        if not low < high:
            raise SweepError(f"--range {item!r}: LOW must be below HIGH")
        if log and low <= 0:
            raise SweepError(f"--range {item!r}: a log range needs LOW > 0")
        if name in out:
            raise SweepError(f"--range: {name} given twice")
        out[name] = Range(low, high, log, kind)
    return out


def fmt_value(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def slug(params: dict) -> str:
    """A run directory's name part for ``params``: ``lr=0.001-grad_clip=10`` (safe characters only)."""
    text = "-".join(f"{k}={fmt_value(v)}" for k, v in params.items())
    return re.sub(r"[^A-Za-z0-9_.=+-]", "_", text)


def fmt_params(params: dict) -> str:
    return " ".join(f"{k}={fmt_value(v)}" for k, v in params.items())


# --- the spec ----------------------------------------------------------------------------------------------------
@dataclass
class SweepSpec:
    task: str
    arch: str = "wrnn"
    preset: str = "paper"
    train: dict = field(default_factory=dict)     # the fixed train options (TrainConfig names), as given
    grid: dict = field(default_factory=dict)      # name -> [values]
    ranges: dict = field(default_factory=dict)    # name -> Range.to_list()
    trials: int = 0                               # how many trials (a grid: its size)
    sampler: str = "grid"                         # grid | tpe | random
    seed: int = 0                                 # the sampler's seed
    objective: str = "final_val_loss"
    prune: str = "auto"                           # auto | median | off
    heartbeat: int = 10                           # seconds between a worker's heartbeats; stale after 3 missed
    threads: int = 1                              # torch threads per trial (--threads)
    root: str = ""                                # the sweep folder (trials' run directories under it)
    format: str = FORMAT

    # --- building --------------------------------------------------------------------------------------------
    @classmethod
    def create(cls, task: str, arch: str, preset: str, train: dict, grid: dict, ranges: dict[str, Range],
               trials: int | None = None, sampler: str | None = None, seed: int = 0, prune: str = "auto",
               heartbeat: int = 10, threads: int = 1, root: str = "") -> "SweepSpec":
        """Check everything a worker would trip on later, and build the spec: the options exist and fit, the first
        trial's config builds, no option is both fixed and swept, a grid or ranges are given."""
        from ..config import build_run, check_applicable, make_config
        from ..core.errors import TrainingError

        if not grid and not ranges:
            raise SweepError("nothing to sweep: give --grid NAME=V1,V2,... (or --range NAME=LOW:HIGH)")
        both = (set(grid) | set(ranges)) & set(train)
        if both:
            raise SweepError(f"{', '.join(sorted(both))}: both fixed (--{sorted(both)[0].replace('_', '-')}) and "
                             "swept; give it once")
        if set(grid) & set(ranges):
            raise SweepError(f"{', '.join(sorted(set(grid) & set(ranges)))}: given to both --grid and --range")
        if ranges:
            sampler = sampler or "tpe"
            if sampler not in ("tpe", "random"):
                raise SweepError(f"--sampler {sampler}: with --range choose tpe or random")
            if not trials:
                raise SweepError("--range needs --trials N (how many settings to try)")
        else:
            if sampler not in (None, "grid"):
                raise SweepError(f"--sampler {sampler}: a grid alone is swept by the grid sampler; give --range "
                                 "for tpe or random")
            sampler = "grid"
            n = math.prod(len(v) for v in grid.values())
            if trials and trials != n:
                raise SweepError(f"--trials {trials}: the grid has {n} points, each run once")
            trials = n
        if prune not in ("auto", "median", "off"):
            raise SweepError(f"--prune {prune}: choose auto, median or off")
        first = {k: v[0] for k, v in grid.items()}
        first.update({k: (r.low if r.kind == "float" else int(r.low)) for k, r in ranges.items()})
        try:
            # every option a trial's train is given must mean something there, or each trial would be refused
            check_applicable(task, arch, config_options({**train, **first}))
            cfg = make_config(task, arch, preset, **config_options({**train, **first}))
            run = build_run(cfg, meta=True)
        except (TrainingError, ValueError, TypeError) as e:
            raise SweepError(f"the sweep's first trial would not start: {e}") from None
        obj = objective_for(run.task)
        if obj.name == "steps_to_solve" and not cfg.steps:
            raise SweepError(f"{task}: set a step budget with --steps")
        return cls(task=task, arch=arch, preset=preset, train=dict(train), grid={k: list(v) for k, v in grid.items()},
                   ranges={k: r.to_list() for k, r in ranges.items()}, trials=int(trials), sampler=sampler,
                   seed=int(seed), objective=obj.name, prune=prune, heartbeat=int(heartbeat), threads=int(threads),
                   root=str(root))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SweepSpec":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise SweepError(f"not a wavexport sweep (no '{FORMAT}' spec in the study)")
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def same_sweep(self, other: "SweepSpec") -> bool:
        """The same trials (folder, heartbeat and threads may differ)."""
        keep = lambda s: {k: v for k, v in s.to_dict().items() if k not in ("root", "heartbeat", "threads")}
        return json.loads(json.dumps(keep(self))) == json.loads(json.dumps(keep(other)))

    @property
    def obj(self) -> Objective:
        return OBJECTIVES[self.objective]

    @property
    def range_specs(self) -> dict[str, Range]:
        return {k: Range.from_list(v) for k, v in self.ranges.items()}

    @property
    def params(self) -> list[str]:
        return list(self.grid) + list(self.ranges)

    def describe(self) -> str:
        dims = [f"{k} in {{{', '.join(fmt_value(v) for v in vals)}}}" for k, vals in self.grid.items()]
        dims += [f"{k} in [{fmt_value(r.low)}, {fmt_value(r.high)}]{' (log)' if r.log else ''}"
                 for k, r in self.range_specs.items()]
        return (f"{self.task}/{self.arch} ({self.preset}): {' x '.join(dims)}, {self.trials} trials "
                f"({self.sampler}); objective {self.objective} ({self.obj.direction})")

    # --- a trial as a command line ---------------------------------------------------------------------------
    def train_options(self, params: dict) -> dict:
        opts = {**self.train, **params}
        if self.objective == "steps_to_solve":
            opts["stop_when_solved"] = True  # iterations to solve: the run ends there
        return opts

    def config(self, params: dict) -> TrainConfig:
        from ..config import make_config

        return make_config(self.task, self.arch, self.preset, **config_options(self.train_options(params)))


def config_options(options: dict) -> dict:
    return {k: v for k, v in options.items() if k not in RUN_OPTIONS}


def train_argv(task: str, arch: str, preset: str, options: dict) -> list[str]:
    """``wavexport train`` arguments for these options (TrainConfig names, plus threads, skip_nonfinite, nproc)."""
    return [task, "--arch", arch, "--preset", preset, *train_args(options)]


def write_spec_file(root: Path, spec: SweepSpec, storage: str, study: str) -> None:
    from ..core.io import atomic_write

    text = json.dumps({"study": study, "storage": storage, "spec": spec.to_dict()}, indent=2) + "\n"
    atomic_write(root / SPEC_FILE, lambda tmp: Path(tmp).write_text(text))


def read_spec_file(root: Path) -> dict | None:
    path = Path(root) / SPEC_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SweepError(f"{path}: unreadable ({e})") from None
