"""``wavexport sweep``: the spec, the queue (each trial taken once, a dead worker's trial queued again with its run
directory), the objective read from a run directory, the report, and two workers over one SQLite study, one of them
killed mid-trial."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from cli_helpers import assert_one_line_error, cli  # noqa: E402
from wavexport.checkpoint import Checkpoint  # noqa: E402
from wavexport.config import make_config  # noqa: E402
from wavexport.sweep import SweepError, SweepSpec, parse_grid, parse_ranges  # noqa: E402
from wavexport.sweep.launch import prepare_sweep, sweep_state  # noqa: E402
from wavexport.sweep.report import best_line, format_table, plot_heatmap, trial_rows  # noqa: E402
from wavexport.sweep.spec import train_argv  # noqa: E402
from wavexport.sweep.study import load_sweep  # noqa: E402
from wavexport.sweep.worker import Worker, read_log, trial_result  # noqa: E402
from wavexport.training import Trainer  # noqa: E402

from optuna.trial import TrialState  # noqa: E402

TINY = dict(preset="quick", channels=2, ring=8, batch_size=16, eval_batch=32)


def tiny_spec(task="copy", grid=None, **train) -> SweepSpec:
    opts = {"seq": 5, "channels": 2, "ring": 8, "batch_size": 16, "eval_batch": 100 if task == "adding" else 32,
            "steps": 20, "eval_every": 10, "device": "cpu", **train}
    return SweepSpec.create(task, "wrnn", "quick", opts, parse_grid(grid or ["lr=1e-2,1e-3", "grad_clip=0,1"]), {},
                            heartbeat=1)


# --- the spec ----------------------------------------------------------------------------------------------------
def test_grids_and_ranges_parse_to_the_train_options_types():
    g = parse_grid(["lr=1e-3,1e-4", "grad-clip=0,1,10", "seq=100,200"])
    assert g == {"lr": [1e-3, 1e-4], "grad_clip": [0.0, 1.0, 10.0], "seq": [100, 200]}
    assert all(isinstance(v, float) for v in g["grad_clip"]) and all(isinstance(v, int) for v in g["seq"])
    r = parse_ranges(["lr=1e-5:1e-2:log", "seq=100:1000"])
    assert r["lr"].log and r["lr"].kind == "float" and r["seq"].kind == "int" and not r["seq"].log
    for bad, needle in ((["bogus=1,2"], "cannot sweep 'bogus'"), (["lr=1e-3,1e-3"], "repeated"),
                        (["seq=1.5"], "not an int"), (["lr"], "NAME=V1,V2"), (["lr=1,2", "lr=3"], "twice"),
                        (["task=copy"], "cannot sweep")):
        with pytest.raises(SweepError, match=needle):
            parse_grid(bad)
    with pytest.raises(SweepError, match="LOW must be below HIGH"):
        parse_ranges(["lr=1e-2:1e-5"])
    with pytest.raises(SweepError, match="log range needs LOW > 0"):
        parse_ranges(["grad_clip=0:10:log"])


def test_the_spec_checks_the_sweep_and_picks_the_tasks_objective():
    assert tiny_spec().objective == "final_val_loss" and tiny_spec().trials == 4
    adding = tiny_spec("adding", seq=10)
    assert adding.objective == "steps_to_solve" and adding.obj.minimize
    assert adding.train_options({"lr": 1e-3})["stop_when_solved"] is True  # iterations to solve: it stops there
    with pytest.raises(SweepError, match="nothing to sweep"):
        SweepSpec.create("copy", "wrnn", "quick", {}, {}, {})
    with pytest.raises(SweepError, match="lr: both fixed"):
        tiny_spec(lr=1e-3)
    with pytest.raises(SweepError, match="needs --trials"):
        SweepSpec.create("copy", "wrnn", "quick", {}, {}, parse_ranges(["lr=1e-4:1e-2:log"]))
    with pytest.raises(SweepError, match="the grid has 4 points"):
        SweepSpec.create("copy", "wrnn", "quick", {}, parse_grid(["lr=1,2", "seed=0,1"]), {}, trials=3)
    with pytest.raises(SweepError, match="first trial would not start"):
        SweepSpec.create("copy", "wrnn", "quick", {"kernel": 4}, parse_grid(["lr=1e-3,1e-4"]), {})
    # an option train refuses for the task (each trial's train would exit 2) is refused when the sweep is made
    with pytest.raises(SweepError, match="first trial would not start: --eval-every does not apply to psmnist"):
        SweepSpec.create("psmnist", "wrnn", "quick", {"eval_every": 100}, parse_grid(["lr=1e-3,1e-4"]), {})
    with pytest.raises(SweepError, match="--epochs does not apply to copy"):
        SweepSpec.create("copy", "wrnn", "quick", {}, parse_grid(["epochs=1,2"]), {})


def test_a_trials_command_line_is_the_config_the_sweep_means():
    spec = tiny_spec("adding", seq=10, lr_milestones=[5, 8])
    params = {"lr": 1e-2, "grad_clip": 0.0}
    r = cli("train", *train_argv(spec.task, spec.arch, spec.preset, spec.train_options(params)), "--dry-run")
    assert r.exit_code == 0, r.output
    printed = json.loads(r.output[:r.output.rindex("}") + 1])["train"]
    assert printed == spec.config(params).to_dict()


# --- the queue ---------------------------------------------------------------------------------------------------
def test_each_queued_trial_is_taken_once_and_a_dead_workers_trial_comes_back_with_its_run(tmp_path):
    url, name, spec = prepare_sweep(tiny_spec(grid=["lr=1e-2,1e-3,1e-4"]), tmp_path / "sw")
    prepare_sweep(tiny_spec(grid=["lr=1e-2,1e-3,1e-4"]), tmp_path / "sw")  # the same sweep again: nothing added
    a, b = Worker(url, name, poll=0.05), Worker(url, name, poll=0.05)
    taken = [a._take(), b._take(), a._take()]
    assert None not in taken and len(set(taken)) == 3 and b._take() is None
    study, _ = load_sweep(url, name)
    assert len(study.get_trials()) == 3 and all(t.state == TrialState.RUNNING for t in study.get_trials())
    # Worker a "dies" holding its first trial: no more heartbeats. After 3 missed ones the trial is failed and
    # queued again, with the same parameters and run directory.
    victim = taken[0]
    trial = optuna.Trial(a.study, victim)
    params = a._suggest(trial)
    trial.set_user_attr("run_dir", "trials/000-x")
    for other in taken[1:]:
        a.storage.set_trial_state_values(other, state=TrialState.COMPLETE, values=[1.0])
    time.sleep(3 * spec.heartbeat + 1.5)
    optuna.storages.fail_stale_trials(b.study)
    trials = load_sweep(url, name)[0].get_trials()
    assert [t.state for t in trials].count(TrialState.WAITING) == 1
    again = next(t for t in trials if t.state == TrialState.WAITING)
    assert again.params == params and again.user_attrs["run_dir"] == "trials/000-x"
    assert again.system_attrs["failed_trial"] == trials[0].number
    assert b._take() == again._trial_id and a._take() is None
    with pytest.raises(SweepError, match="holds another sweep"):
        prepare_sweep(tiny_spec(grid=["lr=1,2"]), tmp_path / "sw")


# --- the objective -----------------------------------------------------------------------------------------------
def test_the_objective_is_read_from_the_run_directory(tmp_path):
    cfg = make_config("adding", "wrnn", seq=10, steps=20, eval_every=10, stop_when_solved=True,
                      **{**TINY, "eval_batch": 100})  # the least adding's solved verdict takes
    Trainer(cfg, tmp_path / "add", quiet=True).run()
    res = trial_result(tmp_path / "add", "steps_to_solve")
    log = read_log(tmp_path / "add")
    assert res["steps"] == 20 and res["solved_at"] is None and res["val_loss"] == min(r["val_loss"] for r in log)
    assert res["value"] == pytest.approx(20 * (1 + min(res["val_loss"], 1.0)))  # unsolved: past the budget
    assert trial_result(tmp_path / "add", "steps_to_solve", diverged=True)["value"] == 40
    ck = Checkpoint.load(tmp_path / "add" / "checkpoint.pt")
    ck.solved_at = 10
    ck.save(tmp_path / "add" / "checkpoint.pt")
    assert trial_result(tmp_path / "add", "steps_to_solve")["value"] == 10
    assert trial_result(tmp_path / "add", "final_val_loss")["value"] == log[-1]["val_loss"]
    assert math.isinf(trial_result(tmp_path / "add", "final_val_loss", diverged=True)["value"])


# --- the report --------------------------------------------------------------------------------------------------
def test_the_report_names_the_best_setting_and_draws_the_grid(tmp_path):
    pytest.importorskip("matplotlib")
    spec = tiny_spec("adding", seq=10, grid=["lr=1e-2,1e-3", "grad_clip=0,1"])
    url, name, spec = prepare_sweep(spec, tmp_path / "sw")
    study, _ = load_sweep(url, name)
    outcomes = {(1e-2, 0.0): (TrialState.COMPLETE, 10, {"solved_at": 10, "steps": 10}),
                (1e-2, 1.0): (TrialState.PRUNED, 10, {"steps": 10}),
                (1e-3, 0.0): (TrialState.COMPLETE, 32.0, {"steps": 20}),
                (1e-3, 1.0): (TrialState.FAIL, None, {"error": "train exited with status 2: error: boom"})}
    w = Worker(url, name)
    while (tid := w._take()) is not None:
        trial = optuna.Trial(w.study, tid)
        p = w._suggest(trial)
        state, value, attrs = outcomes[(p["lr"], p["grad_clip"])]
        for k, v in {**attrs, "run_dir": f"trials/{trial.number:03d}"}.items():
            trial.set_user_attr(k, v)
        if state == TrialState.PRUNED:
            trial.report(value, value)
        w.study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
    rows = trial_rows(study, spec)
    table = format_table(rows, spec)
    assert "32 (unsolved)" in table and "> 10" in table and "error: boom" in table
    line = best_line(rows, spec, tmp_path / "sw")
    assert line.startswith("best: trial") and "lr=0.01 grad_clip=0" in line and "steps_to_solve 10" in line
    assert plot_heatmap(rows, spec, tmp_path / "h.png").stat().st_size > 1000
    r = cli("sweep", "report", tmp_path / "sw", "--no-plot")
    assert r.exit_code == 0 and "best: trial" in r.output and "lr=0.01 grad_clip=0" in r.output, r.output
    data = json.loads(cli("sweep", "report", tmp_path / "sw", "--json", "--no-plot").output)
    assert data["best"]["params"] == {"lr": 0.01, "grad_clip": 0.0} and len(data["trials"]) == 4
    state = sweep_state(url, name)
    assert state["done"] and len(state["failed"]) == 1


def test_sweep_mistakes_are_one_line_errors(tmp_path):
    assert_one_line_error(cli("sweep", "copy", "--out", tmp_path / "a", "--preset", "quick"), "nothing to sweep")
    assert_one_line_error(cli("sweep", "copy", "--grid", "colour=1,2", "--out", tmp_path / "b"), "cannot sweep")
    assert_one_line_error(cli("sweep", "report", tmp_path), "not a sweep folder")
    assert not (tmp_path / "a").exists()


# --- two workers, one killed -------------------------------------------------------------------------------------
def _stat(pid: int) -> list[str]:
    """/proc/PID/stat after the command name: [state, ppid, ...]; [] for a process that is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return _stat(pid)[:1] not in (["Z"], ["X"])  # a zombie (exited, not yet reaped) is not alive


def _ppid(pid: int) -> int | None:
    st = _stat(pid)
    return int(st[1]) if len(st) > 1 else None


def _wait_until(what: str, ok, timeout: float = 300.0, every: float = 0.02):
    """Poll ``ok()`` until it returns something true (returned); the timeout is a safety net, not a schedule."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = ok()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _freeze_a_trainer_mid_run(out: Path, last_step: int, leader: subprocess.Popen, passed: set):
    """Stop (SIGSTOP) a trial's ``train`` process once it has a checkpoint at step <= ``last_step``: (run
    directory, train pid, checkpointed step), or None to look again. Stopped, it can neither finish its trial nor
    go on to the next, so the worker is then killed mid-trial however fast or slow the machine is."""
    assert leader.poll() is None, leader.communicate()[0]
    for run in sorted((out / "trials").glob("*")) if (out / "trials").is_dir() else ():
        if not (run / "checkpoint.pt").is_file():
            continue
        try:
            pid = int((run / ".lock").read_text().split()[1])  # "pid N on HOST, since ...": the run's holder
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if pid in passed or b"train" not in argv or not _alive(pid):  # that run's train has ended (or is not one)
            continue
        os.kill(pid, signal.SIGSTOP)
        _wait_until("the train process to stop", lambda: _stat(pid)[:1] in (["T"], ["t"], ["Z"], ["X"], []))
        step = Checkpoint.load(run / "checkpoint.pt").progress["step"]
        if _alive(pid) and step <= last_step:
            return run, pid, step
        os.kill(pid, signal.SIGCONT)  # caught too late: let it finish, and catch the other trial's
        passed.add(pid)
    return None


@pytest.mark.slow
def test_two_workers_run_every_trial_once_even_when_one_is_killed_mid_trial(tmp_path):
    out, steps, every = tmp_path / "sweep", 200, 10
    args = [sys.executable, "-m", "wavexport", "sweep", "copy", "--grid", "lr=1e-2,1e-3", "--preset", "quick",
            "--seq", "5", "--channels", "2", "--ring", "8", "--batch-size", "16", "--eval-batch", "32",
            "--steps", str(steps), "--eval-every", "50", "--checkpoint-every", str(every), "--device", "cpu",
            "--out", str(out), "--jobs", "2", "--heartbeat", "8", "--no-plot"]
    # An 8 s heartbeat (stale after 24 s): with 1 s (stale after 3) a worker busy on a loaded 2-core machine missed
    # 3 s of heartbeats in 3 of 8 runs (2026-11-26), and the other worker failed its trial while it still ran; with
    # 4 s (stale after 12) it happened once in a full-suite run on a loaded machine (2026-11-26).
    leader = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    trainer, passed = None, set()
    try:
        # Freeze a trial's train process mid-run, then kill -9 its worker: the trial is RUNNING in the storage, its
        # worker's heartbeats stop, and its run directory holds a checkpoint. A checkpoint at step <= budget - 2 x
        # checkpoint_every: the process is at most one interval past it, so it cannot reach the budget before it
        # stops on the SIGINT below, and the trial's retry must resume it.
        run, trainer, step = _wait_until("a trial with a checkpoint, mid-run",
                                         lambda: _freeze_a_trainer_mid_run(out, steps - 2 * every, leader, passed))
        rel = run.relative_to(out).as_posix()
        url = f"sqlite:///{out / 'sweep.db'}"
        trial = next(t for t in load_sweep(url)[0].get_trials() if t.user_attrs.get("run_dir") == rel)
        assert trial.state == TrialState.RUNNING, trial.state  # its train is stopped: it cannot have ended
        pid = int(trial.user_attrs["worker"].rsplit(":", 1)[1])
        assert _ppid(trainer) == pid  # the worker that runs this trial is the train process's parent
        os.kill(pid, signal.SIGKILL)
        # The kernel tells its train child (PDEATHSIG: SIGINT) and, the child's process group orphaned while it is
        # stopped, sends it SIGHUP (ignored: worker._child_setup) and SIGCONT. It finishes its step, checkpoints
        # and exits, so nothing trains twice. (Watching for the pending SIGINT instead raced with that SIGCONT.)
        os.kill(trainer, signal.SIGCONT)
        _wait_until("the killed worker's train process to exit", lambda: not _alive(trainer), timeout=120)
        assert "interrupt: finishing this step" in (run / "train.log").read_text()
        assert Checkpoint.load(run / "checkpoint.pt").progress["step"] < steps  # it stopped early, checkpointed
        output, _ = leader.communicate(timeout=600)  # the other worker picks the trial up after 3 missed heartbeats
    finally:
        if trainer is not None and _alive(trainer):
            os.kill(trainer, signal.SIGCONT)
        if leader.poll() is None:  # a failure above: Ctrl-C the sweep (its workers and trials stop), then kill
            leader.send_signal(signal.SIGINT)
            try:
                leader.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                leader.kill()
                leader.communicate()
    assert leader.returncode == 0, output
    assert "ended abnormally (status -9)" in output and "best: trial" in output, output
    trials = load_sweep(url)[0].get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.params["lr"] for t in complete) == [1e-3, 1e-2]  # every grid point exactly once
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert [t.number for t in failed] == [trial.number] and len(trials) == 3
    again = next(t for t in complete if t.system_attrs.get("failed_trial") == trial.number)
    assert again.params == trial.params and again.user_attrs["run_dir"] == rel
    assert f"trial {again.number} ({'lr=' + format(trial.params['lr'], 'g')}), again for trial {trial.number}" \
        f": resuming in {rel}" in output, output
    commands = [ln for ln in (run / "train.log").read_text().splitlines() if ln.startswith("$ ")]
    assert len(commands) == 2 and "--resume" not in commands[0] and commands[1].endswith("--resume")
    logged = [r["step"] for r in read_log(run)]
    assert logged == [50, 100, 150, 200]  # resumed, not started over: no evaluation logged twice
    assert Checkpoint.load(run / "checkpoint.pt").progress["step"] == steps
    for t in complete:
        assert t.value == read_log(out / t.user_attrs["run_dir"])[-1]["val_loss"]
