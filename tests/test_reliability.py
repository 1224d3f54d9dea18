"""Hardening: files, locks, integrity, non-finite numbers, resource bounds, threads, and small things users hit.

Every test here failed before the change it checks (docs/RELIABILITY.md lists them by fault). Models are tiny; the
file system faults are simulated (an OSError raised in the write path, a FIFO, a file posing as a character
device), so nothing here touches /dev or needs an unprivileged user.
"""
import errno
import io
import json
import math
import os
import re
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from wavexport.checkpoint import Checkpoint, load_checkpoint
from wavexport.cli.common import fmt_metrics
from wavexport.config import build_run, make_config
from wavexport.core import errors
from wavexport.core import io as wio
from wavexport.core.errors import ContractError, StreamError, TrainingError
from wavexport.core.io import atomic_write
from wavexport.exporters.pipeline import export_checkpoint
from wavexport.runtime import StreamingSession
from wavexport.runtime.protocol import stream
from wavexport.training import Trainer

# Names this change adds, looked up when a test runs (so that, on the code before it, each test fails by itself).
FileWriteError = getattr(errors, "FileWriteError", type("FileWriteErrorMissing", (Exception,), {}))
DivergedError = getattr(errors, "DivergedError", type("DivergedErrorMissing", (Exception,), {}))
DIGEST_KEY = "digest"

from cli_helpers import assert_one_line_error, cli

ROOT = Path(__file__).resolve().parents[1]
TINY = ["copy", "--seq", "5", "--channels", "3", "--ring", "12", "--batch-size", "16", "--eval-batch", "32"]


def tiny_cfg(**kw):
    args = dict(seq=5, channels=3, ring=12, batch_size=16, steps=6, eval_every=3, eval_batch=32)
    args.update(kw)
    return make_config("copy", "wrnn", "quick", **args)


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """An untrained tiny copy wRNN as a checkpoint and as a step-graph ONNX file (no training, no verification)."""
    d = tmp_path_factory.mktemp("tiny")
    cfg = tiny_cfg()
    run = build_run(cfg)
    Checkpoint.of(run.model, run.model_config, run.task, cfg).save(d / "m.pt")
    export_checkpoint(d / "m.pt", d / "m.onnx", verify=False)
    np.save(d / "x.npy", np.random.default_rng(0).random((2, 25, 10), dtype=np.float32))
    return {"pt": d / "m.pt", "onnx": d / "m.onnx", "npy": d / "x.npy"}


def strict_json(line: str):
    """JSON as a strict parser (Node's JSON.parse) reads it: NaN/Infinity are errors."""
    def bad(name):
        raise ValueError(f"not JSON: {name}")
    return json.loads(line, parse_constant=bad)


def temp_files(d: Path):
    return sorted(p.name for p in d.iterdir() if p.name.endswith(".tmp"))


# --- 1. writing over things that are not regular files --------------------------------------------------------------
def test_atomic_write_replaces_the_file_a_symlink_points_to_and_keeps_the_link(tmp_path):
    target = tmp_path / "real.txt"
    target.write_text("old")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    atomic_write(link, lambda tmp: Path(tmp).write_text("new"))
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text() == "new" and temp_files(tmp_path) == []
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "sub" / "made.txt")  # followed too: the file is created where it points
    atomic_write(dangling, lambda tmp: Path(tmp).write_text("x"))
    assert dangling.is_symlink() and (tmp_path / "sub" / "made.txt").read_text() == "x"


def test_atomic_write_writes_into_a_fifo_without_replacing_it(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(open(fifo, "rb").read()), daemon=True)
    reader.start()
    atomic_write(fifo, lambda tmp: Path(tmp).write_bytes(b"through the pipe"))
    reader.join(10)
    assert got == [b"through the pipe"]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and temp_files(tmp_path) == []


def test_a_character_device_is_written_to_never_renamed_over(tmp_path, monkeypatch):
    """A regular file poses as a character device (the real /dev/null is never touched): no rename, same inode;
    and a device that is full (/dev/full) is a one-line error, exit 2, from `export`."""
    dev = tmp_path / "fakedev"
    dev.write_bytes(b"")
    inode = os.stat(dev).st_ino
    real_stat = os.stat

    def file_mode(path):
        return stat.S_IFCHR | 0o666 if Path(path) == dev else real_stat(path).st_mode
    monkeypatch.setattr(wio, "_file_mode", file_mode, raising=False)

    def no_rename(*a, **k):
        raise AssertionError("renamed over a device")
    monkeypatch.setattr(os, "replace", no_rename)
    monkeypatch.setattr(os, "rename", no_rename)
    atomic_write(dev, lambda tmp: Path(tmp).write_bytes(b"to the device"))
    assert dev.read_bytes() == b"to the device" and os.stat(dev).st_ino == inode

    real_write = os.write

    def full(fd, data):
        if os.fstat(fd).st_ino == inode:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)
    monkeypatch.setattr(os, "write", full)
    with pytest.raises(FileWriteError, match="No space left on device"):
        atomic_write(dev, lambda tmp: Path(tmp).write_bytes(b"x"))


def test_export_to_a_full_device_is_one_line(tmp_path, monkeypatch, model_files):
    dev = tmp_path / "full"
    dev.write_bytes(b"")
    real_stat = os.stat
    monkeypatch.setattr(wio, "_file_mode",
                        lambda p: stat.S_IFCHR | 0o666 if Path(p) == dev else real_stat(p).st_mode, raising=False)
    real_write = os.write
    inode = os.stat(dev).st_ino

    def full(fd, data):
        if os.fstat(fd).st_ino == inode:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)
    monkeypatch.setattr(os, "write", full)
    r = cli("export", model_files["pt"], dev, "--no-verify")
    assert_one_line_error(r, f"cannot write {dev}: No space left on device (ENOSPC)")


def test_a_socket_or_a_directory_is_refused(tmp_path):
    sock_path = tmp_path / "s"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(sock_path))
    try:
        with pytest.raises(FileWriteError, match="it is a socket, not a regular file"):
            atomic_write(sock_path, lambda tmp: Path(tmp).write_text("x"))
    finally:
        s.close()
    with pytest.raises(FileWriteError, match="it is a directory"):
        atomic_write(tmp_path, lambda tmp: Path(tmp).write_text("x"))


def test_run_output_to_dev_stdout_writes_through_the_descriptor(model_files):
    """`run --input x.npy --output /dev/stdout | ...`: the array goes down the pipe (then the JSON summary)."""
    r = subprocess.run([sys.executable, "-m", "wavexport.cli", "run", str(model_files["onnx"]), "--input",
                        str(model_files["npy"]), "--output", "/dev/stdout"], capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    buf = io.BytesIO(r.stdout)
    ys = np.load(buf)
    assert ys.shape == (2, 25, 10)
    assert strict_json(buf.read().decode())["sequences"] == 2


# --- 2. file-system errors: one line, no partial file, the last good checkpoint kept ------------------------------------
@pytest.fixture
def failing_fsync(monkeypatch):
    """fsync (in every atomic write) fails with ``errno`` from its ``after``-th call on."""
    state = {"calls": 0, "after": 0, "errno": errno.ENOSPC}

    def fsync(fd):
        state["calls"] += 1
        if state["calls"] > state["after"]:
            raise OSError(state["errno"], os.strerror(state["errno"]))
    monkeypatch.setattr(os, "fsync", fsync)
    return state


@pytest.mark.parametrize("code, cause", [(errno.ENOSPC, "No space left on device"),
                                         (errno.EROFS, "Read-only file system")])
def test_a_full_or_read_only_disk_is_one_line_and_leaves_no_partial_file(tmp_path, model_files, failing_fsync,
                                                                          code, cause):
    failing_fsync["errno"] = code
    out = tmp_path / "out"
    out.mkdir()
    r = cli("export", model_files["pt"], out / "m.onnx", "--no-verify")
    assert_one_line_error(r, f"cannot write {out / 'm.onnx'}: {cause}")
    r = cli("run", model_files["onnx"], "--input", model_files["npy"], "--output", out / "y.npy")
    assert_one_line_error(r, f"cannot write {out / 'y.npy'}: {cause}")
    pytest.importorskip("matplotlib")
    r = cli("plot", "waves", model_files["pt"], "--out", out / "w.png")
    assert_one_line_error(r, f"cannot write {out / 'w.png'}: {cause}")
    assert list(out.iterdir()) == []  # no partial file, no temp file


def test_training_on_a_full_disk_stops_with_one_line_and_keeps_its_last_checkpoint(tmp_path, failing_fsync):
    run = tmp_path / "run"
    failing_fsync["after"] = 2  # the first evaluation's best.pt and checkpoint.pt are written; then the disk fills
    r = cli("train", *TINY, "--steps", "9", "--eval-every", "3", "--out", run, "-q")
    assert_one_line_error(r, f"cannot write {run}/", "No space left on device")
    assert load_checkpoint(run / "checkpoint.pt").progress["step"] == 3  # intact, digest checked
    assert temp_files(run) == []


def test_orphaned_temp_files_of_a_killed_run_are_cleaned_at_its_next_start(tmp_path):
    run = tmp_path / "run"
    Trainer(tiny_cfg(steps=3), run, quiet=True).run()
    for name in (".checkpoint.pt.k1ll3d.tmp", ".best.pt.abc.tmp", ".metrics.jsonl.x.tmp"):
        (run / name).write_bytes(b"half a file")
    (run / ".notes.tmp").write_text("not ours")
    Trainer(tiny_cfg(steps=4), run, resume=True, quiet=True).run()
    assert temp_files(run) == [".notes.tmp"]


# --- 3. one run directory, one process ---------------------------------------------------------------------------------
def test_a_second_process_on_a_run_directory_is_refused_and_kill_9_leaves_no_stale_lock(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "wavexport.cli", "train", *TINY, "--steps", "100000", "--eval-every", "10",
           "--threads", "1", "--out", str(run), "-q"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (run / "checkpoint.pt").exists() and time.time() < deadline:
            time.sleep(0.1)
        assert f"pid {first.pid} " in (run / ".lock").read_text()
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2 and second.stdout == ""
        assert second.stderr.strip().splitlines() == [second.stderr.strip()]
        assert f"is in use by another training run (pid {first.pid} on " in second.stderr
        first.kill()  # SIGKILL: no handler runs, the kernel drops the flock
        first.wait(60)
    finally:
        first.kill()
    step = load_checkpoint(run / "checkpoint.pt").progress["step"]
    r = cli("train", *TINY, "--out", run, "--resume", "--steps", step + 2, "-q")
    assert r.exit_code == 0, r.output
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == list(range(10, step + 1, 10)) + [step + 2]


def test_the_lock_is_released_when_a_run_ends_or_cannot_start(tmp_path):
    run = tmp_path / "run"
    t = Trainer(tiny_cfg(steps=2), run, quiet=True)
    with pytest.raises(TrainingError, match=f"pid {os.getpid()} "):  # held from construction...
        Trainer(tiny_cfg(steps=2), run, quiet=True)
    t.run()  # ...to the end of the run
    Trainer(tiny_cfg(steps=3), run, resume=True, quiet=True).run()
    nowhere = tmp_path / "new" / "run"  # a run that cannot start (no data) leaves no directory behind
    cfg = make_config("psmnist", "wrnn", "quick", channels=2, ring=8, data_dir=str(tmp_path / "no-data"))
    with pytest.raises(errors.DataError):
        Trainer(cfg, nowhere, quiet=True)
    assert not (tmp_path / "new").exists()


# --- 4. integrity ------------------------------------------------------------------------------------------------------
def _flip_weights(path: Path, n: int = 100) -> None:
    raw = bytearray(path.read_bytes())
    ck = torch.load(path, weights_only=True)
    w = max(ck["model"].values(), key=lambda v: v.numel())
    at = bytes(raw).find(w.numpy().tobytes())
    assert at > 0
    for i in range(at + 8, at + 8 + n):
        raw[i] ^= 0x5A
    path.write_bytes(bytes(raw))


def test_a_checkpoint_with_flipped_weight_bytes_is_reported_corrupt(tmp_path):
    run = tmp_path / "run"
    Trainer(tiny_cfg(steps=3), run, quiet=True).run()
    for name in ("checkpoint.pt", "best.pt"):
        assert torch.load(run / name, weights_only=True)[DIGEST_KEY].startswith("sha256:")
        _flip_weights(run / name)
        assert_one_line_error(cli("eval", run / name), f"{run / name}: corrupt checkpoint")
    assert_one_line_error(cli("export", run, tmp_path / "m.onnx"), "corrupt checkpoint")
    assert not (tmp_path / "m.onnx").exists()
    assert_one_line_error(cli("train", *TINY, "--out", run, "--resume", "--steps", "5", "-q"), "corrupt checkpoint")


def test_checkpoints_written_before_digests_still_load_and_resume(tmp_path):
    run = tmp_path / "run"
    Trainer(tiny_cfg(steps=3), run, quiet=True).run()
    for name in ("checkpoint.pt", "best.pt"):
        raw = torch.load(run / name, weights_only=True)
        del raw[DIGEST_KEY]
        torch.save(raw, run / name)
    assert load_checkpoint(run / "best.pt").progress["step"] == 3
    Trainer(tiny_cfg(steps=4), run, resume=True, quiet=True).run()
    assert DIGEST_KEY in torch.load(run / "checkpoint.pt", weights_only=True)  # written with one from now on


@pytest.mark.parametrize("key, value, needle", [
    ("state.shapes", json.dumps({"h": ["batch", 3, 13]}), "metadata state.shapes gives 'h' the shape"),
    ("input.size", "11", "metadata input.size gives 'x' the shape"),
    ("output.size", "9", "metadata output.size gives 'y' the shape"),
    ("task.readout", "last:-5", "unknown task.readout 'last:-5' (expected last, last:K with K >= 1, or all)"),
    ("task.readout", "last:abc", "unknown task.readout 'last:abc'"),
    ("metrics", json.dumps({"eval_seed": "x"}), "metadata 'metrics': eval_seed must be an integer >= 0, got 'x'"),
    ("metrics", json.dumps({"eval_n": -3}), "metadata 'metrics': eval_n must be a positive integer, got -3"),
])
def test_edited_onnx_metadata_is_a_contract_error_when_opened(tmp_path, model_files, key, value, needle):
    m = onnx.load(model_files["onnx"])
    for p in m.metadata_props:
        if p.key == key:
            p.value = value
    onnx.save(m, tmp_path / "edited.onnx")
    with pytest.raises(ContractError, match=re.escape(needle)):
        StreamingSession(tmp_path / "edited.onnx")
    r = cli("run", tmp_path / "edited.onnx", "--input", model_files["npy"])
    assert_one_line_error(r, needle)


# --- 5. non-finite numbers ---------------------------------------------------------------------------------------------
def test_the_stream_emits_valid_json_when_the_output_overflows(model_files):
    sess = StreamingSession(model_files["onnx"])
    out = io.StringIO()
    good = " ".join(["0.5"] * 10)
    huge = " ".join(["3e38"] * 10)
    stream(sess, io.StringIO(f"{good}\n{huge}\n{huge}\n\n{good}\n"), out)
    recs = [strict_json(x) for x in out.getvalue().splitlines()]
    assert [r["step"] for r in recs] == [0, 1, 2, 0]
    assert "finite" not in recs[0] and isinstance(recs[0]["pred"], int)
    bad = recs[2]
    assert bad["finite"] is False and bad["pred"] is None and bad["prob"] is None and None in bad["y"]
    assert "finite" not in recs[3]  # a blank line starts again from the initial state
    r = cli("run", model_files["onnx"], "--stream")  # through the CLI as well (stdin empty: nothing to do)
    assert r.exit_code == 0


def test_a_batched_run_never_prints_nan(tmp_path, model_files):
    xs = np.full((2, 4, 10), 3e38, np.float32)
    xs[0] = 0.5
    np.save(tmp_path / "huge.npy", xs)
    r = cli("run", model_files["onnx"], "--input", tmp_path / "huge.npy")
    assert r.exit_code == 0, r.output
    got = strict_json(r.output)
    assert isinstance(got["pred"][0], int) and got["pred"][1] is None and got["nonfinite"] == [1]


def _poison_at(step):
    def hook(trainer):
        if trainer.progress["step"] == step:
            with torch.no_grad():
                for p in trainer.model.parameters():
                    p.fill_(float("nan"))
    return hook


def test_a_diverging_run_stops_keeps_its_last_finite_checkpoint_and_never_writes_a_nan_best(tmp_path):
    run = tmp_path / "run"
    t = Trainer(tiny_cfg(steps=12, eval_every=5), run, quiet=True, on_step=_poison_at(6))
    with pytest.raises(DivergedError, match=r"^step 7: the training loss is nan: training diverged") as e:
        t.run()
    assert e.value.exit_code == 1 and "checkpoint.pt of step 5 is kept" in str(e.value)
    for name in ("checkpoint.pt", "best.pt"):
        ck = load_checkpoint(run / name)
        assert ck.progress["step"] == 5 and all(torch.isfinite(v).all() for v in ck.model.values())
    assert [strict_json(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [5]
    r = cli("train", *TINY, "--lr", "1e9", "--steps", "30", "--eval-every", "10", "--out", tmp_path / "big", "-q")
    assert_one_line_error(r, "training diverged", "lower --lr", code=1)
    assert not (tmp_path / "big" / "best.pt").exists()


def test_skip_nonfinite_skips_the_batch_and_goes_on(tmp_path, monkeypatch):
    t = Trainer(tiny_cfg(steps=6), tmp_path / "run", quiet=True, skip_nonfinite=True)
    real = t.task.loss
    calls = {"n": 0}

    def loss(ys, y):
        calls["n"] += 1
        value = real(ys, y)
        return value * float("nan") if calls["n"] == 3 else value
    monkeypatch.setattr(t.task, "loss", loss)
    res = t.run()
    assert res["step"] == 6 and t.progress["skipped_nonfinite"] == 1
    assert all(torch.isfinite(v).all() for v in load_checkpoint(tmp_path / "run" / "best.pt").model.values())


def test_a_nonfinite_evaluation_is_logged_as_null_and_never_becomes_best(tmp_path, monkeypatch):
    t = Trainer(tiny_cfg(steps=6), tmp_path / "run", quiet=True)
    monkeypatch.setattr(t, "_score", lambda split: {"loss": float("nan"), "acc": float("inf")})
    t.run()
    recs = [strict_json(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["val_loss"], r["val_acc"], r["nonfinite"]) for r in recs] == [(None, None, True)] * 2
    assert not (tmp_path / "run" / "best.pt").exists()


# --- 6. resource bounds ------------------------------------------------------------------------------------------------
class EndlessLine:
    """stdin holding one ~31 MB line, then a good one; records the largest read it was asked for."""

    def __init__(self, n_chars, good):
        self.left, self.good, self.biggest = n_chars, good, 0

    def readline(self, size=-1):
        assert size >= 0, "an unbounded readline would hold the whole line"
        self.biggest = max(self.biggest, size)
        if self.left > 0:
            n = min(size, self.left)
            self.left -= n
            return "1" * n if self.left else "1" * (n - 1) + "\n"
        text, self.good = self.good, ""
        return text


def test_a_huge_stdin_line_is_refused_without_being_held_in_memory(model_files):
    from wavexport.runtime.protocol import max_line_chars

    sess = StreamingSession(model_files["onnx"])
    limit = max_line_chars(10)
    assert limit == 1024 + 512 * 10
    src = EndlessLine(31_000_000, " ".join(["0.5"] * 10) + "\n")
    with pytest.raises(StreamError, match=f"^line 1: longer than {limit} characters"):
        stream(sess, src, io.StringIO())
    assert src.biggest == limit + 1
    src, out, err = EndlessLine(31_000_000, " ".join(["0.5"] * 10) + "\n"), io.StringIO(), io.StringIO()
    assert stream(sess, src, out, skip_bad=True, err=err) == 1  # --skip-bad: skipped, and the next line runs
    assert [strict_json(x)["step"] for x in out.getvalue().splitlines()] == [0]
    assert "longer than" in strict_json(err.getvalue())["error"]


def test_the_cli_refuses_a_huge_line_as_bad_input(model_files):
    line = "1 " * 15_500_000 + "\n"  # 31 MB
    r = subprocess.run([sys.executable, "-m", "wavexport.cli", "run", str(model_files["onnx"]), "--stream"],
                       input=line, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "error: line 1: longer than 6144 characters" in r.stderr, r.stderr


# --- 7. threads ----------------------------------------------------------------------------------------------------------
def test_the_thread_rule_follows_the_work_per_step_and_the_load():
    from wavexport.cli.common import auto_threads
    from wavexport.models.flops import step_flops

    quick = make_config("psmnist", "wrnn", "quick")
    quick_cfg = build_run(quick).model_config
    assert auto_threads(quick.batch_size * step_flops(quick_cfg), cores=16, load=0.0) == 1  # small model: 1
    paper = make_config("psmnist", "wrnn", "paper")
    work = paper.batch_size * step_flops(build_run(paper).model_config)
    assert auto_threads(work, cores=16, load=0.0) > 1
    assert auto_threads(work, cores=2, load=2.0) == 1  # two busy cores: no second thread to wait for
    assert auto_threads(work, cores=4, load=1.2) == 3


def test_train_picks_its_threads_by_default(tmp_path):
    torch.set_num_threads(2)
    try:
        r = cli("train", *TINY, "--steps", "2", "--eval-every", "2", "--out", tmp_path / "run", "-q")
        assert r.exit_code == 0, r.output
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(1)


def test_every_command_that_computes_takes_threads(model_files):
    r = cli("eval", model_files["pt"], "--threads", "1", "--limit", "16", "--json")
    assert r.exit_code == 0 and strict_json(r.output)["n"] == 16, r.output
    r = cli("eval", model_files["onnx"], "--threads", "1", "--limit", "16", "--json")
    assert r.exit_code == 0 and strict_json(r.output)["n"] == 16, r.output
    r = cli("plot", "speed", model_files["pt"], "--threads", "1", "--json")
    assert r.exit_code == 0, r.output
    for cmd in (["train"], ["export"], ["run"], ["bench"], ["plot", "waves"]):
        assert "--threads" in cli(*cmd, "--help").output, cmd


def test_make_demo_honours_THREADS():
    if not (ROOT / "Makefile").exists() or subprocess.run(["which", "make"], capture_output=True).returncode:
        pytest.skip("no make")
    out = subprocess.run(["make", "-n", "-C", str(ROOT), "demo", "THREADS=1"], capture_output=True, text=True,
                         timeout=60).stdout
    for cmd in ("wavexport train", "wavexport eval", "wavexport export", "wavexport run"):
        lines = [ln for ln in out.splitlines() if cmd in ln]
        assert lines and all(ln.split(cmd, 1)[1].split("|")[0].count("--threads 1") == 1 for ln in lines), cmd


# --- 8. small things users hit ---------------------------------------------------------------------------------------------
def test_resume_summary_names_the_runs_own_arch(tmp_path):
    run = tmp_path / "run"
    base = ["copy", "--seq", "5", "--batch-size", "16", "--eval-batch", "32", "--out", run, "-q"]
    assert cli("train", *base, "--arch", "irnn", "--hidden", "8", "--steps", "2", "--eval-every", "2").exit_code == 0
    r = cli("train", *base, "--resume", "--steps", "3")
    assert r.exit_code == 0, r.output
    assert "done: copy/irnn 3 steps" in r.output


def test_every_k_always_reports_the_last_step_of_each_sequence(model_files):
    sess = StreamingSession(model_files["onnx"])
    good = " ".join(["0.5"] * 10)
    out = io.StringIO()
    stream(sess, io.StringIO("\n".join([good] * 7) + "\n\n" + "\n".join([good] * 6) + "\n"), out, every=3)
    assert [strict_json(x)["step"] for x in out.getvalue().splitlines()] == [2, 5, 6, 2, 5]


def test_the_summary_says_not_solved_instead_of_none(tmp_path):
    assert fmt_metrics({"test_loss": 0.5, "solved_at": None}) == "test_loss 0.5000, not solved"
    assert fmt_metrics({"solved_at": 300}) == "solved at step 300"
    assert fmt_metrics({"loss": 5.87e-05, "acc": 1.0}) == "acc 1.0000, loss 5.87e-05"
    r = cli("train", "adding", "--preset", "quick", "--seq", "10", "--channels", "2", "--ring", "10", "--steps", "2",
            "--eval-every", "2", "--eval-batch", "100", "--out", tmp_path / "a", "-q")
    assert r.exit_code == 0 and "not solved" in r.output and "None" not in r.output, r.output


def test_dry_run_shows_the_papers_T_and_the_sequence_length():
    r = cli("train", "copy", "--seq", "80", "--dry-run")
    assert r.exit_code == 0
    assert json.loads(r.output[: r.output.rindex("}") + 1])["task"] == \
        "copy: T=80 (sequences of 100 steps), in=10, out=10"


def test_a_size_too_large_to_allocate_is_counted_by_a_dry_run_and_refused_in_one_line_by_training(tmp_path):
    # wRNN on adding (n_in 2, n_out 1), C = 1,000,000 channels of a 50-unit ring: conv C*C*3 + C, encoder C*50*2 +
    # C*50, readout C*50 + 1 = 3,000,000,000,000 + 1,000,000 + 150,000,000 + 50,000,001.
    r = cli("train", "adding", "--preset", "quick", "--channels", "1000000", "--ring", "50", "--dry-run")
    assert r.exit_code == 0, r.output
    assert r.output.strip().endswith("adding/wrnn: 3,000,201,000,001 parameters")
    r = cli("train", "adding", "--preset", "quick", "--channels", "1000000", "--ring", "50", "--steps", "1",
            "--out", tmp_path / "huge")
    assert_one_line_error(r, "wrnn with 3,000,201,000,001 parameters does not fit in memory", code=2)
    assert not (tmp_path / "huge").exists()


@pytest.mark.parametrize("args,needle", [
    (["copy", "--epochs", "3"], "--epochs does not apply to copy, a synthetic task"),
    (["adding", "--limit", "50"], "--limit does not apply to adding, a synthetic task"),
    (["psmnist", "--eval-every", "5"], "--eval-every does not apply to psmnist, an image task"),
    (["smnist", "--eval-batch", "5"], "--eval-batch does not apply to smnist, an image task"),
    (["copy", "--stop-when-solved"], "--stop-when-solved applies to adding only"),
    (["adding", "--eval-batch", "99"], "--eval-batch 99 is too small for adding: its solved verdict"),
    (["copy", "--arch", "wrnn-mlp", "--readout", "linear"], "--arch wrnn-mlp has the mlp readout by definition"),
])
def test_an_option_that_would_do_nothing_for_the_task_or_contradicts_the_arch_is_refused(args, needle, tmp_path):
    assert_one_line_error(cli("train", *args, "--dry-run"), needle)
    assert_one_line_error(cli("train", *args, "--out", tmp_path / "r", "--steps", "1"), needle)
    assert not (tmp_path / "r").exists()


def test_an_adding_run_saved_with_a_small_eval_batch_still_resumes(tmp_path):
    """The minimum of 100 held-out sequences applies to new runs; one saved before it resumes as it was."""
    run = tmp_path / "a"
    args = ["adding", "--preset", "quick", "--seq", "10", "--channels", "2", "--ring", "10", "--eval-every", "2",
            "--out", run, "-q"]
    assert cli("train", *args, "--steps", "2", "--eval-batch", "100").exit_code == 0
    ck = Checkpoint.load(run / "checkpoint.pt")
    ck.train_config.eval_batch = 64  # as such a run was saved before the minimum
    ck.save(run / "checkpoint.pt")
    r = cli("train", *args, "--steps", "4", "--resume")
    assert r.exit_code == 0, r.output
    assert Checkpoint.load(run / "checkpoint.pt").progress["step"] == 4


def test_options_that_apply_are_still_taken():
    for args in (["adding", "--stop-when-solved", "--eval-batch", "100"], ["psmnist", "--epochs", "2", "--limit", "9"],
                 ["copy", "--arch", "wrnn-mlp", "--readout", "mlp"]):
        assert cli("train", *args, "--dry-run").exit_code == 0, args


def test_unsorted_lr_milestones_are_refused():
    assert_one_line_error(cli("train", "copy", "--lr-milestones", "5,3", "--dry-run"),
                          "--lr-milestones must be strictly increasing positive integers, got 5,3")
    with pytest.raises(TrainingError, match="strictly increasing"):
        Trainer(tiny_cfg(lr_milestones=[4, 4]), "/nonexistent/never/created", quiet=True)
    assert not Path("/nonexistent").exists()


def test_the_waves_figure_names_the_label_and_the_prediction(tmp_path, model_files):
    pytest.importorskip("matplotlib")
    from wavexport.plot.waves import sample_caption
    from wavexport.tasks import make_task

    r = cli("plot", "waves", model_files["pt"], "--out", tmp_path / "w.png", "--threads", "1")
    assert r.exit_code == 0, r.output
    assert "test sequence 0: symbols " in r.output and ", recalled " in r.output
    ys = np.zeros((5, 10))
    ys[-1, 7] = 4.0
    assert sample_caption(make_task("smnist"), ys, np.array(7)) == "label 7, prediction 7 (p 0.86)"
    assert sample_caption(make_task("adding", 10), np.array([[0.0], [1.25]]), np.array(1.5)) == \
        "target 1.500, prediction 1.250"


def test_the_progress_bar_shows_a_moving_average(tmp_path, monkeypatch):
    t = Trainer(tiny_cfg(steps=60, eval_every=60), tmp_path / "run", quiet=False)
    real = Trainer._train_step

    def spike(self, *args, **kwargs):
        loss = real(self, *args, **kwargs)
        return 1000.0 if self.progress["step"] == 1 else loss
    monkeypatch.setattr(Trainer, "_train_step", spike)
    t.run()
    shown = float(dict(kv.split("=") for kv in t.bar.postfix.split(", "))["loss"])
    assert shown < 10 and math.isclose(shown, t.display_loss, rel_tol=1e-3)
    assert t.progress["run_loss"] > shown  # the mean the log keeps still carries the spike


def test_image_task_records_name_the_epoch_mean(tmp_path, data_dir):
    cfg = make_config("psmnist", "wrnn", "quick", channels=2, ring=8, batch_size=32, limit=64, eval_limit=32,
                      epochs=1, steps=None, data_dir=str(data_dir))
    Trainer(cfg, tmp_path / "ps", quiet=True).run()
    rec = strict_json((tmp_path / "ps" / "metrics.jsonl").read_text().splitlines()[-1])
    assert rec["train_loss_epoch_mean"] == rec["train_loss"]
