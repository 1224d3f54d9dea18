"""The sweep's Optuna study: its storage, its creation with every trial queued, and the sampler and pruner each
worker rebuilds from the spec.

Every trial of a sweep is put in the study's queue (state WAITING) when the sweep is created: one per grid point
(carrying the GridSampler's ``grid_id``), or ``--trials`` empty ones for a sampler, which picks the parameters when
a worker takes the trial. A worker takes a trial by moving it from WAITING to RUNNING, which the database does for
one worker only, so no trial runs twice, and no worker ever creates a trial beyond the sweep's (GridSampler's own
assignment can repeat a point when workers ask at once). A worker that dies leaves its trial RUNNING without
heartbeats: the next worker that looks marks it failed and queues it again with the same parameters and run
directory (Optuna's heartbeat and RetryHeartbeatStaleTrialCallback), and that worker resumes the run.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

from .spec import DB_FILE, SPEC_ATTR, SweepError, SweepSpec

MAX_RETRY = 5          # a trial whose worker dies this many times is left failed (it likely kills its worker)
GRACE_HEARTBEATS = 3   # a RUNNING trial is stale after this many heartbeat intervals without one


def import_optuna():
    try:
        import optuna
    except ImportError:
        raise SweepError("wavexport sweep needs Optuna: pip install 'optuna>=5'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    return optuna


def default_storage(root) -> str:
    return f"sqlite:///{(Path(root) / DB_FILE).resolve()}"


def redact(url: str) -> str:
    """The URL without its password (for messages and sweep.json)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL sqlalchemy can read: say so when it is opened
        return url


def open_storage(url: str, heartbeat: int | None = None):
    """An RDBStorage for ``url`` (SQLite: waits up to 2 minutes for a lock instead of failing). With ``heartbeat``,
    trials record one every so many seconds, and a RUNNING trial silent for GRACE_HEARTBEATS of them is failed and
    queued again."""
    optuna = import_optuna()
    engine = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    hb = {}
    if heartbeat:
        hb = dict(heartbeat_interval=int(heartbeat), grace_period=GRACE_HEARTBEATS * int(heartbeat),
                  heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                      max_retry=MAX_RETRY))
    if url.startswith("sqlite:///"):
        folder = Path(url[len("sqlite:///"):]).parent
        if not folder.is_dir():
            raise SweepError(f"cannot open the storage {url}: {folder} is not a folder")
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine, **hb)
    except Exception as e:  # noqa: BLE001 - a driver missing, a server down, a bad URL: one line
        raise SweepError(f"cannot open the storage {redact(url)}: {type(e).__name__}: {str(e).splitlines()[0]}"
                         ) from None


# --- sampler and pruner ------------------------------------------------------------------------------------------
def sampler_for(spec: SweepSpec, salt: int = 0):
    """GridSampler for a grid; TPE or random sampling for ranges (``salt``: per worker, so that two workers with the
    same history do not propose the same point)."""
    optuna = import_optuna()
    if spec.sampler == "grid":
        return _grid_sampler_class()(spec.grid, seed=spec.seed)
    seed = spec.seed * 100_003 + salt
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


_GRID = None


def _grid_sampler_class():
    """GridSampler, less its habit of calling ``study.stop()`` after the last point (meant for study.optimize: the
    workers here end when the queue is empty and no trial runs)."""
    global _GRID
    if _GRID is None:
        optuna = import_optuna()

        class Grid(optuna.samplers.GridSampler):
            def after_trial(self, study, trial, state, values):
                pass

        _GRID = Grid
    return _GRID


def pruner_for(spec: SweepSpec):
    """``auto``: prune only what cannot win, for objectives whose progress bounds the result (steps_to_solve: a run
    still unsolved at step s ends at more than s; once s reaches the best complete trial, it cannot beat it).
    ``median``: Optuna's MedianPruner on the validation metric (a heuristic: it may stop a slow starter).
    ``off`` (and ``auto`` for other objectives): nothing is pruned."""
    optuna = import_optuna()
    if spec.prune == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if spec.prune == "auto" and spec.objective == "steps_to_solve":
        return _bound_pruner()
    return optuna.pruners.NopPruner()


def uses_bound(spec: SweepSpec) -> bool:
    """Whether the intermediate values reported are lower bounds of the objective (else: the validation metric)."""
    return spec.prune == "auto" and spec.objective == "steps_to_solve"


def _bound_pruner():
    optuna = import_optuna()
    from optuna.trial import TrialState

    class CannotWinPruner(optuna.pruners.BasePruner):
        """Minimisation, intermediate values that are lower bounds of the final value: prune once the bound
        reaches the best complete trial's value (the trial can no longer beat it)."""

        def prune(self, study, trial) -> bool:
            step = trial.last_step
            if step is None:
                return False
            done = [t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                    if t.value is not None]
            return bool(done) and trial.intermediate_values[step] >= min(done)

    return CannotWinPruner()


# --- creating and opening a sweep --------------------------------------------------------------------------------
def create_sweep(spec: SweepSpec, storage_url: str, study_name: str):
    """The study for ``spec`` in ``storage_url``, with every trial queued; an existing study of the same name must
    hold the same sweep (then it is continued: only what is missing from its queue is added)."""
    optuna = import_optuna()
    from optuna.trial import TrialState

    storage = open_storage(storage_url)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler_for(spec))
    except KeyError:
        study = None
    if study is None:
        try:
            study = optuna.create_study(storage=storage, study_name=study_name, direction=spec.obj.direction,
                                        sampler=sampler_for(spec))
        except optuna.exceptions.DuplicatedStudyError:  # another leader got there first
            study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler_for(spec))
    saved = study.user_attrs.get(SPEC_ATTR)
    if saved is None:
        study.set_user_attr(SPEC_ATTR, spec.to_dict())
    else:
        old = SweepSpec.from_dict(saved)
        if not old.same_sweep(spec):
            raise SweepError(f"the study {study_name!r} in {redact(storage_url)} holds another sweep "
                             f"({old.describe()}); choose another --out or --study")
    trials = study.get_trials(deepcopy=False)
    if spec.sampler == "grid":
        have = {t.system_attrs.get("grid_id") for t in trials}
        for i in range(spec.trials):
            if i not in have:
                study.add_trial(optuna.trial.create_trial(
                    state=TrialState.WAITING, system_attrs={"grid_id": i, "search_space": spec.grid}))
    else:
        originals = sum(1 for t in trials if "failed_trial" not in t.system_attrs)
        for _ in range(spec.trials - originals):
            study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING))
    return study


def study_names(storage_url: str) -> list[str]:
    optuna = import_optuna()
    return sorted(optuna.get_all_study_names(storage=open_storage(storage_url)))


def load_sweep(storage_url: str, study_name: str | None = None, heartbeat: bool = False, salt: int = 0):
    """(study, spec) of an existing sweep; ``study_name`` may be left out when the storage holds one study. With
    ``heartbeat``, the storage records and checks heartbeats at the sweep's interval (what a worker needs)."""
    optuna = import_optuna()
    if study_name is None:
        names = study_names(storage_url)
        if len(names) != 1:
            raise SweepError(f"{redact(storage_url)} holds {len(names)} studies"
                             f"{': ' + ', '.join(names) if names else ''}; name one with --study")
        study_name = names[0]
    try:
        plain = optuna.load_study(study_name=study_name, storage=open_storage(storage_url))
    except KeyError:
        raise SweepError(f"no study {study_name!r} in {redact(storage_url)}") from None
    spec = SweepSpec.from_dict(plain.user_attrs.get(SPEC_ATTR))
    storage = open_storage(storage_url, spec.heartbeat if heartbeat else None)
    study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler_for(spec, salt),
                              pruner=pruner_for(spec))
    return study, spec
