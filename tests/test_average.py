"""``train --snapshot-every`` and ``wavexport average``: weight snapshots of a run, and their mean as a checkpoint."""
import contextlib
import json

import pytest
import torch

from wavexport.config import make_config
from wavexport.training import Trainer

from cli_helpers import assert_one_line_error, cli

TINY_COPY = ["copy", "--seq", "5", "--channels", "3", "--ring", "12", "--batch-size", "16", "--eval-batch", "64",
             "--eval-every", "3"]


def _weights(path):
    return torch.load(path, weights_only=True)["model"]


@pytest.fixture
def run(tmp_path):
    out = tmp_path / "run"
    r = cli("train", *TINY_COPY, "--steps", "6", "--snapshot-every", "2", "--out", out, "-q")
    assert r.exit_code == 0, r.output
    return out


def test_snapshots_are_kept_every_n_steps_and_an_interrupted_run_keeps_the_same_ones(tmp_path, run):
    assert sorted(f.name for f in (run / "snapshots").iterdir()) == ["step-0000002.pt", "step-0000004.pt",
                                                                     "step-0000006.pt"]
    snap = torch.load(run / "snapshots" / "step-0000004.pt", weights_only=True)
    assert "optimizer" not in snap
    assert not snap.get("metrics") and not snap.get("best")  # a snapshot is not evaluated: no borrowed metrics

    cfg = make_config("copy", "wrnn", "paper", seq=5, channels=3, ring=12, batch_size=16, eval_batch=64,
                      eval_every=3, steps=6, snapshot_every=2)

    def stop_at_3(trainer):
        if trainer.progress["step"] == 3:
            trainer.request_stop()
    assert Trainer(cfg, tmp_path / "cut", quiet=True, on_step=stop_at_3).run()["interrupted"]
    Trainer(cfg, tmp_path / "cut", resume=True, quiet=True).run()
    for step in (2, 4, 6):
        name = f"step-{step:07d}.pt"
        a, b = _weights(run / "snapshots" / name), _weights(tmp_path / "cut" / "snapshots" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_average_writes_the_mean_scored_like_training_and_eval_reproduces_it(tmp_path, run):
    out = tmp_path / "avg.pt"
    r = cli("average", run, "--from-step", "4", "--out", out, "--json")
    assert r.exit_code == 0, r.output
    reported = json.loads(r.stdout)
    assert reported["averaged_steps"] == [4, 6]
    a, b = (_weights(run / "snapshots" / f"step-{s:07d}.pt") for s in (4, 6))
    mean = _weights(out)
    for k in a:  # the mean, by hand
        assert torch.allclose(mean[k], (a[k] + b[k]) / 2, rtol=0, atol=1e-7), k
        assert not torch.equal(a[k], b[k]) or k.endswith("bias"), k  # the snapshots differ: a real average
    ev = json.loads(cli("eval", out, "--json").stdout)
    assert ev["loss"] == pytest.approx(reported["test_loss"], rel=1e-6)
    val = json.loads(cli("eval", out, "--split", "valid", "--json").stdout)
    assert val["loss"] == pytest.approx(reported["val_loss"], rel=1e-6)
    # files named one by one average the same way
    r = cli("average", run / "snapshots" / "step-0000004.pt", run / "snapshots" / "step-0000006.pt",
            "--out", tmp_path / "avg2.pt", "--json")
    assert r.exit_code == 0, r.output
    assert all(torch.equal(mean[k], _weights(tmp_path / "avg2.pt")[k]) for k in mean)
    r = cli("export", out, tmp_path / "avg.onnx")
    assert r.exit_code == 0, r.output


def test_average_refuses_what_it_cannot_average_and_overwrites_nothing(tmp_path, run):
    other = tmp_path / "other"
    assert cli("train", *TINY_COPY, "--channels", "4", "--steps", "2", "--snapshot-every", "2", "--out", other,
               "-q").exit_code == 0
    assert_one_line_error(cli("average", run, other, "--out", tmp_path / "x.pt"), "hold different models")
    assert_one_line_error(cli("average", run, "--from-step", "6", "--out", tmp_path / "x.pt"),
                          "averaging needs at least two checkpoints")
    assert_one_line_error(cli("average", run, "--from-step", "7", "--out", tmp_path / "x.pt"),
                          "no snapshots from step 7 to the end", "--snapshot-every")
    before = (run / "best.pt").read_bytes()
    assert_one_line_error(cli("average", run, "--out", run / "best.pt"), "would replace a run's own best.pt")
    assert (run / "best.pt").read_bytes() == before
    assert_one_line_error(cli("average", run, "--out", run / "snapshots" / "step-0000002.pt"),
                          "is the same file as a checkpoint averaged")
    assert_one_line_error(cli("average", run, "--out", tmp_path / "x.onnx"), "must end in .pt")
    assert_one_line_error(cli("average", run, "--to-step", "4", "--out", run / "snapshots" / "step-0000009.pt"),
                          "in a run's snapshots/ folder")
    snap = run / "snapshots" / "step-0000002.pt"
    assert_one_line_error(cli("average", snap, run / "snapshots" / ".." / "snapshots" / "step-0000002.pt", "--out",
                              tmp_path / "x.pt"), "is given twice")
    assert_one_line_error(cli("average", snap, run / "snapshots" / "step-0000004.pt", "--from-step", "3", "--out",
                              tmp_path / "x.pt"), "is a file: --from-step and --to-step select among")
    seed1 = tmp_path / "seed1"
    assert cli("train", *TINY_COPY, "--steps", "2", "--snapshot-every", "2", "--seed", "1", "--out", seed1,
               "-q").exit_code == 0
    assert_one_line_error(cli("average", run, seed1, "--out", tmp_path / "x.pt"), "come from different runs (seed")
    assert not (tmp_path / "x.pt").exists()
    # the snapshots folder itself is a source too
    r = cli("average", run / "snapshots", "--out", tmp_path / "y.pt", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["averaged_steps"] == [2, 4, 6], r.output


def test_snapshots_after_the_checkpoint_a_run_resumes_from_are_dropped(tmp_path):
    """A run killed after its snapshot at step 4 but with checkpoint.pt at step 3 takes steps 4.. again, maybe on
    another budget: the old snapshot 4 goes; so do the snapshots of an attempt that died before any checkpoint."""
    cfg = make_config("copy", "wrnn", "paper", seq=5, channels=3, ring=12, batch_size=16, eval_batch=64,
                      eval_every=3, steps=6, snapshot_every=2, checkpoint_every=100)
    out = tmp_path / "run"
    Trainer(cfg, out, quiet=True).run()
    kept = torch.load(out / "snapshots" / "step-0000006.pt", weights_only=True)["model"]
    # as if killed at step 5: checkpoint.pt back at step 3 (its evaluation's save), snapshots 2 and 4 and 6 on disk
    cut = tmp_path / "cut"
    Trainer(cfg, cut, quiet=True, on_step=lambda t: t.request_stop() if t.progress["step"] == 3 else None).run()
    for step in (4, 6):
        (cut / "snapshots" / f"step-{step:07d}.pt").write_bytes((out / "snapshots" / f"step-{step:07d}.pt").read_bytes())
    Trainer(cfg, cut, resume=True, quiet=True, resume_overrides={"steps": 5}).run()
    assert sorted(f.name for f in (cut / "snapshots").iterdir()) == ["step-0000002.pt", "step-0000004.pt"]
    # a fresh run in a directory whose first attempt died before its first checkpoint
    dead = tmp_path / "dead"
    (dead / "snapshots").mkdir(parents=True)
    (dead / "snapshots" / "step-0000008.pt").write_bytes(b"x")
    Trainer(cfg, dead, quiet=True).run()
    assert sorted(f.name for f in (dead / "snapshots").iterdir()) == ["step-0000002.pt", "step-0000004.pt",
                                                                       "step-0000006.pt"]
    got = torch.load(dead / "snapshots" / "step-0000006.pt", weights_only=True)["model"]
    assert all(torch.equal(got[k], kept[k]) for k in kept)


def test_eval_progress_bar_has_the_total_it_counts_up_to(run):
    from wavexport.checkpoint import Checkpoint
    from wavexport.evaluation import evaluate_checkpoint

    seen = []

    @contextlib.contextmanager
    def bar(split, total):
        counted = []
        yield counted.append
        seen.append((split, total, sum(counted)))
    m = evaluate_checkpoint(Checkpoint.load(run), "valid", bar=bar)
    assert seen == [("valid", 64, 64)] and m["n"] == 64  # the run's --eval-batch, counted to the end
    m = evaluate_checkpoint(Checkpoint.load(run), "test", limit=40, bar=bar)
    assert seen[1] == ("test", 40, 40) and m["n"] == 40


def test_snapshot_every_that_keeps_nothing_is_refused(tmp_path, run):
    out = tmp_path / "new"
    assert_one_line_error(cli("train", *TINY_COPY, "--steps", "6", "--snapshot-every", "7", "--out", out),
                          "--snapshot-every 7 keeps no snapshot: its next one would be at step 7, past the run's "
                          "last step (6); give at most 6")
    assert not out.exists()
    before = sorted(p.name for p in run.rglob("*"))
    # resumed at step 6 to step 9: every 4 keeps step 8
    assert cli("train", *TINY_COPY, "--steps", "9", "--snapshot-every", "4", "--out", run, "--resume",
               "-q").exit_code == 0
    assert (run / "snapshots" / "step-0000008.pt").exists()
    after = sorted(p.name for p in run.rglob("*"))
    assert_one_line_error(cli("train", *TINY_COPY, "--steps", "14", "--snapshot-every", "20", "--out", run,
                              "--resume"), "give at most 5")
    assert sorted(p.name for p in run.rglob("*")) == after != before
    # the saved --snapshot-every is never held against a resume: the run at step 9 (every 4) goes on to step 11,
    # keeping no snapshot, and then resumes as done
    for steps in ("11", "11"):
        r = cli("train", *TINY_COPY, "--steps", steps, "--out", run, "--resume", "-q")
        assert r.exit_code == 0, r.output
    # a budget behind the run: the budget's own message, not the snapshots'
    assert_one_line_error(cli("train", *TINY_COPY, "--steps", "5", "--snapshot-every", "20", "--out", run,
                              "--resume"), "past the budget asked for")
