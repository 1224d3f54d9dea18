import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from wavexport.checkpoint import load_checkpoint, run_complete
from wavexport.config import make_config
from wavexport.training import Trainer

from cli_helpers import assert_one_line_error, cli

TINY_COPY = ["copy", "--seq", "5", "--channels", "3", "--ring", "12", "--batch-size", "16", "--eval-batch", "64"]
TINY_MNIST = ["--channels", "2", "--ring", "8", "--batch-size", "32", "--limit", "256", "--eval-limit", "200"]


TIMING = ("wall_s", "cpu_s")  # elapsed time: the one part of a record that differs between identical runs


def read_log(run):
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_quick_copy_run_lowers_the_loss(tmp_path):
    r = cli("train", "copy", "--preset", "quick", "--steps", "150", "--out", tmp_path / "run", "--quiet")
    assert r.exit_code == 0, r.output
    log = read_log(tmp_path / "run")
    assert [rec["step"] for rec in log] == [50, 100, 150]
    assert log[-1]["val_loss"] < 0.8 * log[0]["val_loss"]
    assert "done: copy/wrnn 150 steps" in r.output
    ck = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ck.progress["step"] == 150 and ck.metrics["test_loss"] > 0
    assert not list((tmp_path / "run").glob("*.tmp"))  # atomic writes leave no temp files


@pytest.mark.slow
def test_psmnist_end_to_end_on_real_mnist_and_eval_reads_it_back(tmp_path, data_dir, monkeypatch):
    run = tmp_path / "ps"
    r = cli("train", "psmnist", *TINY_MNIST, "--steps", "4", "--data-dir", data_dir, "--out", run, "--quiet")
    assert r.exit_code == 0, r.output
    best = load_checkpoint(run / "best.pt")
    assert len(best.task["args"]["permutation"]) == 784
    r = cli("eval", run / "best.pt", "--data-dir", data_dir, "--limit", "200", "--json")
    assert r.exit_code == 0, r.output
    got = json.loads(r.output)
    assert got["n"] == 200
    assert got["acc"] == pytest.approx(best.metrics["test_acc"], abs=1e-9)
    assert 0 <= got["acc"] <= 1
    r = cli("eval", run, "--split", "valid", "--data-dir", data_dir, "--limit", "200")
    assert r.exit_code == 0 and "psmnist/wrnn valid (200 samples): acc" in r.output
    # the run records where it found the data: eval needs neither --data-dir nor $WAVEXPORT_DATA
    assert best.train_config.data_dir == str(data_dir.resolve())
    monkeypatch.delenv("WAVEXPORT_DATA", raising=False)
    r = cli("eval", run, "--limit", "200", "--json")
    assert r.exit_code == 0 and json.loads(r.output)["acc"] == got["acc"]


def _weights(run):
    return load_checkpoint(run / "checkpoint.pt").model


def _stopper(at):
    def hook(trainer):
        if trainer.progress["step"] == at:
            trainer.request_stop()
    return hook


@pytest.mark.parametrize("kind", ["synthetic", pytest.param("dataset", marks=pytest.mark.slow)])
def test_interrupted_and_resumed_run_ends_with_identical_weights(tmp_path, kind, request):
    if kind == "synthetic":
        cfg = make_config("copy", "wrnn", "quick", seq=5, channels=3, ring=12, batch_size=16, steps=12,
                          eval_every=5, eval_batch=32)
        stop_at = 7
    else:
        data_dir = request.getfixturevalue("data_dir")
        # 96 examples in batches of 32: 3 batches an epoch, 3 epochs; stop inside the second epoch
        cfg = make_config("psmnist", "wrnn", "quick", channels=2, ring=8, batch_size=32, limit=96, eval_limit=64,
                          epochs=3, steps=None, data_dir=str(data_dir), lr_milestones=[2])
        stop_at = 5
    straight = Trainer(cfg, tmp_path / "a", quiet=True)
    res = straight.run()
    assert not res["interrupted"]
    cut = Trainer(cfg, tmp_path / "b", quiet=True, on_step=_stopper(stop_at))
    res = cut.run()
    assert res["interrupted"] and res["step"] == stop_at
    resumed = Trainer(cfg, tmp_path / "b", resume=True, quiet=True)
    assert resumed.progress["step"] == stop_at
    resumed.run()
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert read_log(tmp_path / "a") == read_log(tmp_path / "b")


def test_resume_with_more_epochs_lifts_an_earlier_steps_cap(tmp_path, data_dir):
    """An image run stopped early with --steps, resumed with a larger --epochs alone, trains those epochs (it used
    to say "done" at once: the old cap still held it); with --steps as well, the cap given is kept; run_complete
    (what reproduce and sweep ask before relaunching) agrees."""
    cfg = make_config("psmnist", "wrnn", "quick", channels=2, ring=8, batch_size=32, limit=96, eval_limit=64,
                      epochs=2, steps=4, data_dir=str(data_dir))
    assert Trainer(cfg, tmp_path / "r", quiet=True).run()["step"] == 4
    # the same --epochs again (the command re-run with --resume, as reproduce and sweep do): the cap stays
    res = Trainer(cfg, tmp_path / "r", resume=True, quiet=True, resume_overrides={"epochs": 2}).run()
    assert (res["step"], res["total_steps"]) == (4, 4)
    assert run_complete(tmp_path / "r", {"epochs": 2}) and not run_complete(tmp_path / "r", {"epochs": 3})
    res = Trainer(cfg, tmp_path / "r", resume=True, quiet=True, resume_overrides={"epochs": 3}).run()
    assert (res["step"], res["total_steps"]) == (9, 9)  # 3 batches an epoch
    assert load_checkpoint(tmp_path / "r" / "checkpoint.pt").train_config.steps is None
    res = Trainer(cfg, tmp_path / "r", resume=True, quiet=True, resume_overrides={"epochs": 5, "steps": 11}).run()
    assert (res["step"], res["total_steps"]) == (11, 11)


def test_resume_may_move_an_lr_drop_still_ahead_but_not_one_passed(tmp_path):
    """A run planned with its LR drop at step 20, resumed at step 7 with the drop moved to 9, ends with exactly the
    weights of a run planned with the drop at 9 from the start; moving a drop already passed is refused."""
    def cfg(milestones):
        return make_config("copy", "wrnn", "quick", seq=5, channels=3, ring=12, batch_size=16, steps=12,
                           eval_every=5, eval_batch=32, lr_milestones=milestones)
    Trainer(cfg([9]), tmp_path / "a", quiet=True).run()
    res = Trainer(cfg([20]), tmp_path / "b", quiet=True, on_step=_stopper(7)).run()
    assert res["interrupted"] and res["step"] == 7
    resumed = Trainer(cfg([9]), tmp_path / "b", resume=True, quiet=True, resume_overrides={"lr_milestones": [9]})
    resumed.run()
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt").train_config.lr_milestones == [9]
    run = tmp_path / "c"
    assert cli("train", *TINY_COPY, "--steps", "6", "--eval-every", "3", "--lr-milestones", "20", "--out", run,
               "-q").exit_code == 0
    before = {f: (run / f).read_bytes() for f in ("checkpoint.pt", "metrics.jsonl", "best.pt")}
    assert_one_line_error(cli("train", *TINY_COPY, "--steps", "9", "--lr-milestones", "4", "--out", run, "--resume",
                              "-q"), "still ahead",
                          "error: --resume: --lr-milestones may only move the drops still ahead (the run is at 6, "
                          "its milestones are [20]), got [4]")
    assert {f: (run / f).read_bytes() for f in before} == before
    assert_one_line_error(cli("train", *TINY_COPY, "--steps", "4", "--out", run, "--resume", "-q"),
                          "error: --resume: the run is at step 6, past the budget asked for (step 4); give a larger "
                          "--steps, or leave it out")
    assert {f: (run / f).read_bytes() for f in before} == before
    r = cli("train", *TINY_COPY, "--steps", "9", "--lr-milestones", "8", "--out", run, "--resume", "-q")
    assert r.exit_code == 0, r.output
    lr = [rec["lr"] for rec in read_log(run) if "lr" in rec]
    assert lr[-1] < lr[0]


@pytest.mark.slow
@pytest.mark.parametrize("sigs,code,said", [((signal.SIGINT,), (130,), "interrupt:"),
                                            ((signal.SIGTERM,), (143,), "SIGTERM:"),
                                            # both pending at once: Python runs SIGINT's handler first
                                            ((signal.SIGTERM, signal.SIGINT), (130, 143), ": finishing this step")])
def test_ctrl_c_or_sigterm_saves_a_checkpoint_and_resume_finishes(tmp_path, sigs, code, said):
    """SIGTERM is what a scheduler or a preempted cluster job gets: the same graceful stop as Ctrl-C. SIGTERM and
    then SIGINT is still one request (a launcher that got the SIGTERM too passes it on as SIGINT), not an abort."""
    run = tmp_path / "run"
    args = [sys.executable, "-m", "wavexport.cli", "train", *TINY_COPY, "--steps", "100000", "--eval-every", "20",
            "--out", str(run), "--quiet"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.2)
    for sig in sigs:
        proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode in code, err
    assert said in err and "checkpoint saved" in err and "--resume" in err and "Traceback" not in err
    step = load_checkpoint(run / "checkpoint.pt").progress["step"]
    assert 20 <= step < 100000
    r = cli("train", *TINY_COPY, "--out", run, "--resume", "--steps", step + 3, "--quiet")
    assert r.exit_code == 0, r.output
    assert load_checkpoint(run / "checkpoint.pt").progress["step"] == step + 3


def test_clear_errors(tmp_path):
    """None of these needs the real MNIST files."""
    empty = tmp_path / "empty"
    assert_one_line_error(cli("train", "psmnist", "--data-dir", empty, "--out", tmp_path / "x", "--quiet"),
                          "MNIST not found", "train-images-idx3-ubyte.gz",
                          f"error: MNIST not found in {empty / 'MNIST' / 'raw'} (expected train-images-idx3-ubyte.gz, "
                          "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz). "
                          "Downloads are off (WAVEXPORT_OFFLINE).")
    assert not (tmp_path / "x").exists()
    fake = tmp_path / "fake" / "MNIST" / "raw"
    fake.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (fake / f"{name}.gz").write_bytes(b"\x1f\x8b garbage")
    assert_one_line_error(cli("train", "smnist", "--data-dir", tmp_path / "fake", "--out", tmp_path / "y", "--quiet"),
                          "corrupt", f"error: {fake / 'train-images-idx3-ubyte.gz'} is corrupt or not the canonical "
                          "MNIST file (md5 ", "); delete it to download it again")
    assert_one_line_error(cli("eval", tmp_path / "missing.pt"), "no such file",
                          f"error: {tmp_path / 'missing.pt'}: no such file")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert_one_line_error(cli("eval", tmp_path / "junk.pt"), "not a readable checkpoint",
                          f"error: {tmp_path / 'junk.pt'} is not a readable checkpoint (")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    assert_one_line_error(cli("eval", tmp_path / "other.pt"), "not a wavexport checkpoint",
                          "other.pt is not a wavexport checkpoint (no 'wavexport.checkpoint/1' format tag)")
    assert_one_line_error(cli("train", "copy", "--arch", "irnn", "--channels", "4", "--dry-run"), "does not apply",
                          "error: option 'channels' does not apply to arch 'irnn' (it takes: hidden, ")


def test_eval_of_a_run_without_best_pt_says_it_evaluates_the_checkpoint(tmp_path):
    run = tmp_path / "r"
    assert cli("train", *TINY_COPY, "--steps", "2", "--eval-every", "2", "--out", run, "-q").exit_code == 0
    (run / "best.pt").unlink()  # as after a run stopped before its first evaluation
    r = cli("eval", run, "--limit", "8")
    assert r.exit_code == 0, r.output
    assert f"note: {run} has no best.pt yet (no evaluation so far): evaluating its checkpoint.pt, step 2" in r.stderr


def test_an_incomplete_mnist_folder_names_the_missing_files(tmp_path, data_dir):
    from wavexport.tasks import DataError, load_mnist

    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(Path(data_dir) / "MNIST" / "raw" / name, raw / name)
    with pytest.raises(DataError, match=re.escape(f"MNIST is incomplete in {raw}: train-images-idx3-ubyte.gz, "
                                                  "train-labels-idx1-ubyte.gz missing (expected ")):
        load_mnist(tmp_path, download=False)


def test_a_corrupt_mnist_test_file_is_a_clear_error(tmp_path, data_dir):
    """The real training files next to a damaged test file: the test split is checked too, before training."""
    corrupt = tmp_path / "corrupt"
    (corrupt / "MNIST" / "raw").mkdir(parents=True)
    for f in (data_dir / "MNIST" / "raw").glob("*.gz"):
        (corrupt / "MNIST" / "raw" / f.name).write_bytes(f.read_bytes())
    (corrupt / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b garbage")
    assert_one_line_error(cli("train", "smnist", "--data-dir", corrupt, "--out", tmp_path / "y", "--quiet"), "corrupt",
                          f"error: {corrupt / 'MNIST' / 'raw' / 't10k-images-idx3-ubyte.gz'} is corrupt or not the "
                          "canonical MNIST file (md5 ")


def test_existing_run_is_not_clobbered_and_resume_checks_the_task(tmp_path):
    run = tmp_path / "run"
    assert cli("train", *TINY_COPY, "--steps", "3", "--eval-every", "3", "--out", run, "-q").exit_code == 0
    before = (run / "checkpoint.pt").read_bytes()
    assert_one_line_error(cli("train", *TINY_COPY, "--steps", "3", "--out", run, "-q"), "already holds a run",
                          f"error: {run} already holds a run (checkpoint.pt); pass --resume to continue it")
    assert_one_line_error(cli("train", "adding", "--out", run, "--resume", "-q"), "copy",
                          "error: --resume: the run in this directory is copy/wrnn, not adding")
    assert_one_line_error(cli("train", *TINY_COPY, "--out", run, "--resume", "--lr", "0.5", "-q"), "cannot change lr",
                          "error: --resume: cannot change lr of a saved run (it has 0.001)")
    assert (run / "checkpoint.pt").read_bytes() == before


def test_dry_run_prints_paper_parameter_counts():
    r = cli("train", "psmnist", "--dry-run")
    assert r.exit_code == 0 and "psmnist/wrnn: 49,946 parameters" in r.output
    r = cli("train", "psmnist", "--arch", "irnn", "--dry-run")
    cfg = json.loads(r.output[: r.output.rindex("}") + 1])
    assert cfg["train"]["epochs"] == 250 and cfg["model"]["hidden"] == 256 and cfg["parameters"] == 68874


@pytest.mark.slow
def test_adding_records_when_it_is_solved(tmp_path):
    run = tmp_path / "add"
    r = cli("train", "adding", "--preset", "quick", "--seq", "10", "--steps", "200", "--eval-every", "50",
            "--lr", "0.01", "--out", run, "-q")
    assert r.exit_code == 0, r.output
    log = read_log(run)
    solved = [rec["step"] for rec in log if rec.get("solved")]
    ck = load_checkpoint(run / "checkpoint.pt")
    first = next((rec["step"] for rec in log if rec["val_loss"] <= 0.05), None)
    assert ck.metrics["solved_at"] == first
    assert solved == ([first] if first else [])
