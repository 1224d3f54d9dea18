"""Data-parallel training: N gloo processes under torchrun train exactly like one process with the whole batch (to
float tolerance), rank 0 alone writes the run, and a run resumes across a change of the number of processes."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from wavexport.checkpoint import Checkpoint
from wavexport.config import make_config
from wavexport.training import Trainer
from wavexport.training.distributed import World, loss_weight, shard

# 15 is odd on purpose: the ranks hold 8 and 7 sequences, and the loss weights make the average the full batch's
TINY = ["copy", "--preset", "quick", "--seq", "5", "--channels", "2", "--ring", "8", "--batch-size", "15",
        "--eval-every", "3", "--eval-batch", "32", "--device", "cpu", "--threads", "1", "--quiet"]
CFG = dict(preset="quick", seq=5, channels=2, ring=8, batch_size=15, eval_every=3, eval_batch=32, device="cpu")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def test_the_global_batch_is_split_contiguously_and_weighted_back_to_its_mean():
    for n, size in ((15, 2), (16, 4), (3, 4), (1, 2)):
        parts = [shard(n, World(r, size)) for r in range(size)]
        assert parts[0].start == 0 and parts[-1].stop == n
        assert all(a.stop == b.start for a, b in zip(parts, parts[1:]))
        sizes = [p.stop - p.start for p in parts]
        assert max(sizes) - min(sizes) <= 1
        # sum over ranks of weight * (mean over the shard) / size == mean over the batch
        assert sum(loss_weight(s, n, World(0, size)) for s in sizes) / size == pytest.approx(1.0)


def _torchrun(*args, nproc=2, task=None):
    base = TINY if task is None else [task, "--preset", "quick", "--threads", "1", "--quiet"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "wavexport", "train", *base, *map(str, args)]
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def _assert_same_run(a, b):
    wa, wb = Checkpoint.load(a / "checkpoint.pt"), Checkpoint.load(b / "checkpoint.pt")
    assert wa.progress["step"] == wb.progress["step"]
    for k in wa.model:
        torch.testing.assert_close(wa.model[k], wb.model[k], rtol=1e-5, atol=1e-6, msg=k)
    la = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in la] == [r["step"] for r in lb]  # one line per evaluation: rank 0 alone logs
    for ra, rb in zip(la, lb):
        assert ra["val_loss"] == pytest.approx(rb["val_loss"], rel=1e-5)
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-5)


@pytest.mark.slow
def test_two_gloo_processes_reach_the_weights_of_one_process_with_the_full_batch(tmp_path):
    r = subprocess.run([sys.executable, "-m", "wavexport", "train", *TINY, "--steps", "6", "--nproc", "2",
                        "--out", str(tmp_path / "ddp")], env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("done: copy/wrnn 6 steps") == 1  # rank 0 speaks for the run
    Trainer(make_config("copy", "wrnn", steps=6, **CFG), tmp_path / "one", quiet=True).run()
    _assert_same_run(tmp_path / "ddp", tmp_path / "one")
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == [".lock", "best.pt", "checkpoint.pt",
                                                                    "metrics.jsonl"]


@pytest.mark.slow
def test_a_run_resumes_across_a_change_of_the_number_of_processes(tmp_path):
    straight = tmp_path / "straight"
    Trainer(make_config("copy", "wrnn", steps=9, **CFG), straight, quiet=True).run()
    run = tmp_path / "run"
    Trainer(make_config("copy", "wrnn", steps=3, **CFG), run, quiet=True).run()     # 1 process: steps 1-3
    _torchrun("--out", run, "--resume", "--steps", "6")                              # 2 processes: steps 4-6
    Trainer(make_config("copy", "wrnn", steps=9, **CFG), run, resume=True, quiet=True,
            resume_overrides={"steps": 9}).run()                                      # 1 process again: 7-9
    _assert_same_run(run, straight)


@pytest.mark.slow
def test_image_epochs_split_the_same_way_even_a_last_batch_smaller_than_the_world(tmp_path, data_dir):
    # 33 examples in batches of 16: the third batch holds one example, so rank 1's shard is empty
    opts = dict(channels=2, ring=8, batch_size=16, limit=33, eval_limit=32, epochs=2, steps=6, device="cpu",
                data_dir=str(data_dir))
    _torchrun("--out", tmp_path / "ddp", *[a for k, v in opts.items() for a in (f"--{k.replace('_', '-')}", v)],
              task="psmnist")
    Trainer(make_config("psmnist", "wrnn", "quick", **opts), tmp_path / "one", quiet=True).run()
    _assert_same_run(tmp_path / "ddp", tmp_path / "one")
