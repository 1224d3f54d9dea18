"""The streaming runtime: ONNX vs torch streamers, the stdin protocol, eval/bench on ONNX, the Node.js client."""
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from wavexport.cli import main
from wavexport.core.contract import read_contract
from wavexport.core.errors import ContractError
from wavexport.exporters.pipeline import export_checkpoint
from wavexport.runtime import StreamError, StreamingSession, TorchStreamer
from wavexport.checkpoint import load_checkpoint
from wavexport.config import make_config
from wavexport.training import Trainer

from cli_helpers import assert_one_line_error

ROOT = Path(__file__).resolve().parents[1]
NODE_DIR = ROOT / "examples" / "node"
TOL = 1e-4


@pytest.fixture(scope="module")
def psmnist(tmp_path_factory, request):
    """A wRNN trained a few steps on real psMNIST, exported as step and sequence graphs."""
    from conftest import DATA_DIR, HAVE_MNIST

    if not HAVE_MNIST:
        pytest.skip("real MNIST not available")
    d = tmp_path_factory.mktemp("psmnist")
    cfg = make_config("psmnist", "wrnn", "quick", channels=4, ring=16, batch_size=32, limit=256, eval_limit=200,
                      steps=8, data_dir=str(DATA_DIR))
    Trainer(cfg, d / "run", quiet=True).run()
    ckpt = d / "run" / "best.pt"
    export_checkpoint(ckpt, d / "step.onnx", verify=False)
    export_checkpoint(ckpt, d / "seq.onnx", mode="sequence", verify=False)
    return {"ckpt": ckpt, "step": d / "step.onnx", "seq": d / "seq.onnx", "data": DATA_DIR}


@pytest.fixture(scope="module")
def lstm_copy(tmp_path_factory):
    """A two-tensor state (h, c) model on a synthetic task."""
    d = tmp_path_factory.mktemp("lstm")
    cfg = make_config("copy", "lstm", "quick", seq=6, hidden=5, steps=3, eval_every=3, eval_batch=16)
    Trainer(cfg, d / "run", quiet=True).run()
    export_checkpoint(d / "run" / "best.pt", d / "step.onnx", verify=False)
    return {"ckpt": d / "run" / "best.pt", "step": d / "step.onnx"}


@pytest.mark.slow
def test_onnx_and_torch_streamers_agree_over_a_full_psmnist_sequence(psmnist):
    ckpt = load_checkpoint(psmnist["ckpt"])
    c = read_contract(psmnist["step"])
    from wavexport.tasks import load_mnist

    _, _, test_x, _ = load_mnist(psmnist["data"], download=False)
    xs = c.prepare_inputs(test_x[:3])  # permuted, scaled: [3, 784, 1]
    assert c.permutation == ckpt.task["args"]["permutation"]
    onnx_s, torch_s = StreamingSession(psmnist["step"]), TorchStreamer(psmnist["ckpt"])
    for s in (onnx_s, torch_s):
        s.reset(3)
    worst = 0.0
    for t in range(xs.shape[1]):  # every one of the 784 steps, chained
        a, b = onnx_s.step(xs[:, t]), torch_s.step(xs[:, t])
        worst = max(worst, float(np.abs(a - b).max()))
    assert worst < TOL, f"max |onnx - torch| over 784 steps = {worst:.2e}"
    for name in ("h",):
        assert np.abs(onnx_s.state[name] - torch_s.state[name]).max() < TOL
    assert onnx_s.steps == torch_s.steps == 784


@pytest.mark.slow
@pytest.mark.parametrize("graph", ["step", "seq"])
def test_feed_matches_chained_steps_and_the_torch_model(psmnist, graph):
    rng = np.random.default_rng(1)
    xs = rng.random((2, 784, 1), dtype=np.float32)
    s, ref = StreamingSession(psmnist[graph]), TorchStreamer(psmnist["ckpt"])
    s.reset(2)
    ref.reset(2)
    ys = np.concatenate([s.feed(xs[:, i:i + 64]) for i in range(0, 784, 64)], 1)  # chunks carry the state
    ref_ys = ref.feed(xs)
    assert ys.shape == (2, 784, 10)
    assert np.abs(ys - ref_ys).max() < TOL
    assert np.abs(s.state["h"] - ref.state["h"]).max() < TOL
    s.reset(2)
    steps = np.stack([s.step(xs[:, t]) for t in range(100)], 1)
    assert np.abs(steps - ref_ys[:, :100]).max() < TOL


def test_state_is_readable_and_settable_across_runtimes(lstm_copy):
    onnx_s, torch_s = StreamingSession(lstm_copy["step"]), TorchStreamer(lstm_copy["ckpt"])
    assert onnx_s.state_names == torch_s.state_names == ["h", "c"]
    rng = np.random.default_rng(0)
    xs = rng.random((4, 26, 10), dtype=np.float32)
    torch_s.reset(4)
    torch_s.feed(xs[:, :10])
    onnx_s.state = torch_s.state  # hand a stream over mid-sequence
    assert onnx_s.batch_size == 4
    a, b = onnx_s.feed(xs[:, 10:]), torch_s.feed(xs[:, 10:])
    assert np.abs(a - b).max() < TOL
    for n in ("h", "c"):
        assert np.abs(onnx_s.state[n] - torch_s.state[n]).max() < TOL
    got = onnx_s.state
    got["h"][:] = 123.0  # a copy: the session's state is untouched
    assert np.abs(onnx_s.state["h"]).max() < 100
    with pytest.raises(StreamError, match=r"^state 'c' must be \[batch, 5\], got \[4, 6\]$"):
        onnx_s.state = {"h": np.zeros((4, 5), np.float32), "c": np.zeros((4, 6), np.float32)}


def test_input_checks_give_clear_errors(lstm_copy):
    for s in (StreamingSession(lstm_copy["step"]), TorchStreamer(lstm_copy["ckpt"])):
        s.reset(2)
        with pytest.raises(StreamError, match=r"^x_t has shape \[2, 9\]; expected \[batch, n_in\] with n_in = 10$"):
            s.step(np.zeros((2, 9), np.float32))
        with pytest.raises(StreamError, match=r"^xs has shape \[2, 3, 9\]; expected \[batch, T, n_in\] with "
                                              r"n_in = 10$"):
            s.feed(np.zeros((2, 3, 9), np.float32))
        with pytest.raises(StreamError, match=r"^x_t must be floating point, got dtype int64 \(raw pixels: multiply by "
                                              r"input.scale, or use Contract.prepare_inputs\)$"):
            s.step(np.zeros((2, 10), np.int64))
        bad = np.zeros((2, 10), np.float32)
        bad[1, 3] = np.nan
        with pytest.raises(StreamError, match=r"^x_t contains NaN or infinite values$"):
            s.step(bad)
        bad[1, 3] = -np.inf
        with pytest.raises(StreamError, match=r"^x_t contains NaN or infinite values$"):
            s.step(bad)
        with pytest.raises(StreamError, match=r"^x_t has batch 3 but the stream holds 2; call reset\(3\) to start "
                                              r"new streams$"):
            s.step(np.zeros((3, 10), np.float32))
        with pytest.raises(StreamError, match=r"^xs has batch 1 but the stream holds 2; call reset\(1\) to start "
                                              r"new streams$"):
            s.feed(np.zeros((5, 10), np.float32))  # [T, n_in] means batch 1
        assert s.steps == 0  # a refused input is not a step
        s.reset(1)
        assert s.step(np.zeros(10, np.float32)).shape == (10,)
        assert s.feed(np.zeros((5, 10))).shape == (5, 10)  # float64 is converted


def test_foreign_onnx_files_are_refused(tmp_path, lstm_copy):
    m = onnx.load(lstm_copy["step"])
    del m.metadata_props[:]
    onnx.save(m, tmp_path / "plain.onnx")
    lacks = f"{tmp_path / 'plain.onnx'}: not a wavexport export: it carries none of wavexport's metadata"
    with pytest.raises(ContractError, match="^" + re.escape(lacks)):
        StreamingSession(tmp_path / "plain.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x00garbage")
    with pytest.raises(ContractError, match="^" + re.escape(f"{tmp_path / 'junk.onnx'}: not a readable ONNX file (")):
        StreamingSession(tmp_path / "junk.onnx")
    r = CliRunner().invoke(main, ["run", str(tmp_path / "plain.onnx"), "--stream"], input="1\n")
    assert r.exit_code == 2 and r.output.startswith("error: ") and "Traceback" not in r.output
    assert r.stdout == "" and r.stderr.startswith("error: " + lacks) and len(r.stderr.splitlines()) == 1, r.output


def run_stream(model, text, *args):
    return subprocess.run([sys.executable, "-m", "wavexport.cli", "run", str(model), "--stream", *args],
                          input=text, capture_output=True, text=True, timeout=120)


def test_stdin_protocol(lstm_copy):
    model = lstm_copy["step"]
    rng = np.random.default_rng(0)
    xs = rng.random((2, 10), dtype=np.float32).round(4)
    ref = TorchStreamer(lstm_copy["ckpt"])
    expect = [ref.step(x) for x in xs]
    lines = [" ".join(map(str, xs[0])), json.dumps(xs[1].tolist())]
    r = run_stream(model, "\n".join(lines) + "\n")
    assert r.returncode == 0, r.stderr
    out = [json.loads(line) for line in r.stdout.splitlines()]
    assert [o["step"] for o in out] == [0, 1]
    for o, e in zip(out, expect):
        assert np.abs(np.array(o["y"]) - e).max() < 1e-5
        assert o["pred"] == int(e.argmax()) and 0 < o["prob"] <= 1
    # commas, a blank line starting a new sequence from the initial state, --final
    r = run_stream(model, ",".join(map(str, xs[0])) + "\n\n" + " , ".join(map(str, xs[0])) + "\n", "--final")
    out = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(out) == 2 and out[0] == out[1] and out[0]["step"] == 0
    # --final reports the steps that carry the answer: copy's readout is its last 10 steps
    assert read_contract(model).readout == "last:10"
    r = run_stream(model, "\n".join([lines[0]] * 12) + "\n\n" + lines[0] + "\n", "--final")
    assert [json.loads(x)["step"] for x in r.stdout.splitlines()] == [*range(2, 12), 0]
    # --every
    r = run_stream(model, "\n".join([lines[0]] * 7) + "\n", "--every", "3")
    assert [json.loads(x)["step"] for x in r.stdout.splitlines()] == [2, 5, 6]  # --every K: every K-th step, and always the last


@pytest.mark.slow
def test_malformed_lines(lstm_copy):
    model = lstm_copy["step"]
    good = " ".join(["0.5"] * 10)
    r = run_stream(model, f"{good}\n{good}\n1 2 3\n{good}\n")
    assert r.returncode == 2
    assert "line 3: expected 10 values, got 3" in r.stderr and "Traceback" not in r.stderr
    assert r.stderr == "error: line 3: expected 10 values, got 3\n"
    assert len(r.stdout.splitlines()) == 2  # what came before the bad line was already written
    non_finite = "error: line 1: NaN or infinite value (or beyond float32 range)"
    for bad, why, line in [("[1, 2", "bad JSON", r"error: line 1: bad JSON array \(.+\)"),
                           ("0.1 x " + " ".join(["1"] * 8), "not a number",
                            re.escape("error: line 1: not a number: 'x'")),
                           (" ".join(["nan"] * 10), "NaN", re.escape(non_finite)),
                           ("1e39 " + " ".join(["0"] * 9), "float32 range", re.escape(non_finite)),
                           ("[" + ", ".join(["1" + "0" * 400] * 10) + "]", "infinite", re.escape(non_finite))]:
        r = run_stream(model, bad + "\n")
        assert r.returncode == 2 and why in r.stderr, r.stderr
        assert re.fullmatch(line + "\n", r.stderr) and r.stdout == "", r.stderr
    r = run_stream(model, f"{good}\nbogus\n{good}\n", "--skip-bad")
    assert r.returncode == 0
    assert [json.loads(x)["step"] for x in r.stdout.splitlines()] == [0, 1]
    r = run_stream(model, f"{good}\n1e39 " + " ".join(["0"] * 9) + f"\n{good}\n", "--skip-bad")
    assert r.returncode == 0
    assert [json.loads(x)["step"] for x in r.stdout.splitlines()] == [0, 1]
    assert json.loads(r.stderr.strip().splitlines()[-1])["line"] == 2


def test_stream_flushes_each_line_to_a_waiting_consumer(lstm_copy):
    """A producer that waits for each answer before sending the next step (a pipe, not a file)."""
    p = subprocess.Popen([sys.executable, "-m", "wavexport.cli", "run", str(lstm_copy["step"]), "--stream"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for t in range(3):
            p.stdin.write(" ".join(["0.25"] * 10) + "\n")
            p.stdin.flush()
            assert json.loads(p.stdout.readline())["step"] == t  # would block forever without a flush
        p.stdin.close()
        assert p.wait(timeout=60) == 0
        assert p.stdout.read() == ""
    finally:
        p.kill()


def test_a_consumer_that_goes_away_ends_the_stream_quietly(lstm_copy):
    """`... | wavexport run --stream | head -1`: no traceback, no 'Exception ignored' noise."""
    p = subprocess.Popen([sys.executable, "-m", "wavexport.cli", "run", str(lstm_copy["step"]), "--stream"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = " ".join(["0.25"] * 10) + "\n"
    p.stdin.write(line)
    p.stdin.flush()
    assert json.loads(p.stdout.readline())["step"] == 0
    p.stdout.close()  # the consumer is gone
    try:
        p.stdin.write(line * 2000)
        p.stdin.close()
    except BrokenPipeError:  # the stream already stopped reading: that is what we want
        pass
    assert p.wait(timeout=60) == 0
    assert p.stderr.read() == ""


@pytest.mark.slow
def test_batched_run_from_npy(tmp_path, psmnist):
    rng = np.random.default_rng(2)
    xs = rng.random((3, 784, 1), dtype=np.float32)
    np.save(tmp_path / "seqs.npy", xs)
    r = CliRunner().invoke(main, ["run", str(psmnist["step"]), "--input", str(tmp_path / "seqs.npy"),
                                  "--output", str(tmp_path / "out.npy")])
    assert r.exit_code == 0, r.output
    ys = np.load(tmp_path / "out.npy")
    ref = TorchStreamer(psmnist["ckpt"])
    ref.reset(3)
    assert ys.shape == (3, 784, 10) and np.abs(ys - ref.feed(xs)).max() < TOL
    assert json.loads(r.output)["pred"] == ys[:, -1].argmax(-1).tolist()
    # raw uint8 pixels in raster order: --raw applies the permutation and the scale from the metadata
    from wavexport.tasks import load_mnist

    test_x = load_mnist(psmnist["data"], download=False)[2][:2]
    np.save(tmp_path / "raw.npy", test_x)
    r = CliRunner().invoke(main, ["run", str(psmnist["seq"]), "--input", str(tmp_path / "raw.npy"), "--raw"])
    task_xs = read_contract(psmnist["seq"]).prepare_inputs(test_x)
    ref.reset(2)
    assert json.loads(r.output)["pred"] == ref.feed(task_xs)[:, -1].argmax(-1).tolist()
    r = CliRunner().invoke(main, ["run", str(psmnist["step"]), "--input", str(tmp_path / "raw.npy")])
    assert r.exit_code == 2 and "needs --raw" in r.output
    assert_one_line_error(r, f"error: {tmp_path / 'raw.npy'}: dtype uint8; raw integer data needs --raw")
    np.savez(tmp_path / "two.npz", a=xs, b=xs)
    np.save(tmp_path / "empty.npy", np.zeros((1, 0, 1), np.float32))
    for f, why, line in [
            ("two.npz", "several arrays", "error: --input {} holds several arrays (.npz); save one array with "
                                          "numpy.save"),
            ("empty.npy", "T at least 1", "error: {}: shape [1, 0, 1]; expected [batch, T, 1] with batch and T at "
                                          "least 1"),
            ("nope.npy", "no such file", "error: --input {}: no such file")]:
        r = CliRunner().invoke(main, ["run", str(psmnist["step"]), "--input", str(tmp_path / f)])
        assert r.exit_code == 2 and r.output.startswith("error: ") and why in r.output, r.output
        assert_one_line_error(r, line.format(tmp_path / f))


@pytest.mark.slow
def test_eval_of_the_onnx_file_equals_the_checkpoint(psmnist):
    runner = CliRunner()
    args = ["--data-dir", str(psmnist["data"]), "--limit", "200", "--json"]
    from_ckpt = json.loads(runner.invoke(main, ["eval", str(psmnist["ckpt"]), *args]).output)
    from_onnx = json.loads(runner.invoke(main, ["eval", str(psmnist["step"]), *args]).output)
    assert from_onnx["n"] == from_ckpt["n"] == 200
    assert from_onnx["acc"] == from_ckpt["acc"]
    assert from_onnx["acc"] == load_checkpoint(psmnist["ckpt"]).metrics["test_acc"]  # trained with eval_limit 200
    assert abs(from_onnx["loss"] - from_ckpt["loss"]) < 1e-4


def test_eval_of_a_synthetic_onnx_export_scores_the_checkpoints_held_out_draw(lstm_copy):
    runner = CliRunner()
    ck = json.loads(runner.invoke(main, ["eval", str(lstm_copy["ckpt"]), "--limit", "40", "--json"]).output)
    ox = json.loads(runner.invoke(main, ["eval", str(lstm_copy["step"]), "--limit", "40", "--json"]).output)
    assert ck["n"] == ox["n"] == 40
    assert ox["acc"] == ck["acc"] and abs(ox["loss"] - ck["loss"]) < 1e-5


def test_eval_of_an_export_scores_by_default_the_draw_its_metrics_came_from(tmp_path):
    # seed 1 and 24 held-out sequences: not eval's defaults for a bare ONNX file (seed 0, 1,000)
    cfg = make_config("copy", "lstm", "quick", seq=6, hidden=5, steps=3, eval_every=3, eval_batch=24, seed=1)
    Trainer(cfg, tmp_path / "run", quiet=True).run()
    export_checkpoint(tmp_path / "run" / "best.pt", tmp_path / "m.onnx", verify=False)
    assert {k: v for k, v in read_contract(tmp_path / "m.onnx").metrics.items() if k.startswith("eval_")} == \
        {"eval_seed": 1, "eval_n": 24}
    runner = CliRunner()
    ck = json.loads(runner.invoke(main, ["eval", str(tmp_path / "run"), "--json"]).output)
    ox = json.loads(runner.invoke(main, ["eval", str(tmp_path / "m.onnx"), "--json"]).output)
    assert ck["n"] == ox["n"] == 24
    assert abs(ox["loss"] - ck["loss"]) < 1e-5
    assert abs(ox["loss"] - load_checkpoint(tmp_path / "run" / "best.pt").metrics["test_loss"]) < 1e-5


@pytest.mark.slow
def test_eval_of_a_fixed_batch_export(psmnist, tmp_path):
    export_checkpoint(psmnist["ckpt"], tmp_path / "b4.onnx", batch=4, verify=False)
    assert read_contract(tmp_path / "b4.onnx").batch == 4
    runner = CliRunner()
    args = ["--data-dir", str(psmnist["data"]), "--limit", "10", "--json"]  # 10 = 4 + 4 + 2 padded to 4
    fixed = json.loads(runner.invoke(main, ["eval", str(tmp_path / "b4.onnx"), *args]).output)
    dynamic = json.loads(runner.invoke(main, ["eval", str(psmnist["step"]), *args]).output)
    assert fixed["n"] == 10 and fixed["acc"] == dynamic["acc"]
    assert abs(fixed["loss"] - dynamic["loss"]) < 1e-5


TIMINGS = ("onnx_step", "onnx_feed_per_step", "torch_step")


def check_bench_report(rep, batches):
    """Figures that are measured, not made up: positive, finite, percentiles in order, the derived ones consistent."""
    assert [x["batch"] for x in rep["results"]] == list(batches)
    for x in rep["results"]:
        for key in TIMINGS:
            t = x[key]
            assert set(t) == {"median_us", "p90_us", "p99_us", "mean_us"}, (key, t)
            assert all(math.isfinite(v) and v > 0 for v in t.values()), (key, t)
            assert t["median_us"] <= t["p90_us"] <= t["p99_us"], (key, t)
        assert x["speedup_vs_torch"] == pytest.approx(x["torch_step"]["median_us"] / x["onnx_step"]["median_us"])
        assert x["throughput_steps_per_s"] == pytest.approx(x["batch"] * 1e6 / x["onnx_step"]["mean_us"])
        assert x["feed_throughput_steps_per_s"] == pytest.approx(x["batch"] * 1e6 / x["onnx_feed_per_step"]["mean_us"])


def test_bench_reports_both_runtimes(lstm_copy):
    r = CliRunner().invoke(main, ["bench", str(lstm_copy["step"]), "--batch", "1,3", "--steps", "50", "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    assert [x["batch"] for x in rep["results"]] == [1, 3]
    for x in rep["results"]:
        assert 0 < x["onnx_step"]["median_us"] <= x["onnx_step"]["p90_us"] <= x["onnx_step"]["p99_us"]
        assert x["torch_step"]["median_us"] > 0 and x["speedup_vs_torch"] > 0
        assert 0 < x["onnx_feed_per_step"]["median_us"] and x["throughput_steps_per_s"] > 0
    check_bench_report(rep, [1, 3])
    assert (rep["steps"], rep["chunk"], rep["threads"]) == (50, 64, 1)
    assert (rep["arch"], rep["task"], rep["format"]) == ("lstm", "copy", "step/1")


def test_run_input_on_a_fixed_batch_export_takes_the_sequences_in_chunks_of_its_batch(lstm_copy, tmp_path):
    export_checkpoint(lstm_copy["ckpt"], tmp_path / "b2.onnx", batch=2, verify=False)
    xs = np.random.default_rng(3).random((3, 26, 10), dtype=np.float32)  # 3 = 2 + 1, the last chunk padded
    np.save(tmp_path / "xs.npy", xs)
    outs = {}
    for name in ("b2.onnx", "dynamic"):
        model = tmp_path / "b2.onnx" if name == "b2.onnx" else lstm_copy["step"]
        r = CliRunner().invoke(main, ["run", str(model), "--input", str(tmp_path / "xs.npy"),
                                      "--output", str(tmp_path / f"{name}.npy")])
        assert r.exit_code == 0, r.output
        outs[name] = np.load(tmp_path / f"{name}.npy")
    assert outs["b2.onnx"].shape == (3, 26, 10)
    assert np.abs(outs["b2.onnx"] - outs["dynamic"]).max() < 1e-5


def test_ctrl_c_ends_a_command_with_status_130_and_one_word(lstm_copy):
    """Not click's "Aborted!" and status 1, which a script would read as a failed check."""
    import signal

    # SIGINT as a terminal's Ctrl-C leaves it: a test suite started in the background by a non-interactive shell
    # runs with SIGINT ignored, every child inherits that, and Python then installs no KeyboardInterrupt handler
    # (2026-11-26: the command ignored the signal, then ended at stdin's EOF with status 0, or never)
    proc = subprocess.Popen([sys.executable, "-m", "wavexport.cli", "run", str(lstm_copy["step"]), "--stream"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    proc.stdin.write(" ".join(["0"] * 10) + "\n")
    proc.stdin.flush()
    assert json.loads(proc.stdout.readline())["step"] == 0  # streaming: inside the command, waiting for a line
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)  # stdin still open: the signal alone must end it
    out, err = proc.stdout.read(), proc.stderr.read()
    proc.stdin.close()
    assert proc.returncode == 130 and out == "" and err.split() == ["interrupted"], err


def test_bench_refuses_a_checkpoint_of_another_model_and_a_batch_a_fixed_export_cannot_take(lstm_copy, tmp_path):
    # A checkpoint of another size would run, and the "speedup" would compare two different models.
    cfg = make_config("copy", "lstm", "quick", seq=6, hidden=7, steps=1, eval_every=1, eval_batch=4)
    Trainer(cfg, tmp_path / "other", quiet=True).run()
    r = CliRunner().invoke(main, ["bench", str(lstm_copy["step"]), "--checkpoint", str(tmp_path / "other" / "best.pt"),
                                  "--steps", "10"])
    assert_one_line_error(r, "is not the model in")
    assert '"hidden": 7' in r.output and '"hidden": 5' in r.output
    export_checkpoint(lstm_copy["ckpt"], tmp_path / "b1.onnx", batch=1, verify=False)
    r = CliRunner().invoke(main, ["bench", str(tmp_path / "b1.onnx"), "--batch", "1,4", "--steps", "10"])
    assert_one_line_error(r, "fixed batch of 1: bench it with --batch 1")
    for given in (["--batch", "1"], []):  # without --batch: the export's own batch
        r = CliRunner().invoke(main, ["bench", str(tmp_path / "b1.onnx"), *given, "--steps", "10", "--json"])
        assert r.exit_code == 0, r.output
        assert [x["batch"] for x in json.loads(r.output)["results"]] == [1]


def test_bench_api_with_the_checkpoint_and_the_two_steps_it_times_agree(lstm_copy):
    from wavexport.runtime.bench import bench

    rep = bench(lstm_copy["step"], batches=(1, 3), steps=30, chunk=8, checkpoint=lstm_copy["ckpt"])
    check_bench_report(rep, [1, 3])
    assert (rep["steps"], rep["chunk"], rep["threads"]) == (30, 8, 1)
    assert rep["providers"] == ["CPUExecutionProvider"] and rep["model"] == str(lstm_copy["step"])

    # What bench times side by side computes the same thing: the ONNX step and the eager step of the checkpoint's
    # model, from the same (non-zero) state and the same x, give the same y and next state, step after step.
    model = load_checkpoint(lstm_copy["ckpt"]).build()[0]
    sess = StreamingSession(lstm_copy["step"])
    rng = np.random.default_rng(4)
    for b in (1, 3):
        state = {n: rng.standard_normal((b, 5)).astype(np.float32) for n in ("h", "c")}
        sess.state = state
        torch_state = tuple(torch.from_numpy(state[n]) for n in ("h", "c"))
        for _ in range(5):
            x = rng.standard_normal((b, 10)).astype(np.float32)
            y = sess.step(x)
            with torch.no_grad():
                ref, torch_state = model.step(torch.from_numpy(x), torch_state)
            assert y.shape == (b, 10) and np.abs(y).max() > 1e-3
            assert np.abs(y - ref.numpy()).max() < 1e-5
            for n, s in zip(("h", "c"), torch_state):
                assert np.abs(sess.state[n] - s.numpy()).max() < 1e-5


@pytest.mark.slow
def test_sample_pipes_into_stream(psmnist):
    sample = subprocess.run([sys.executable, "-m", "wavexport.cli", "sample", str(psmnist["step"]), "--index", "5",
                             "--data-dir", str(psmnist["data"])], capture_output=True, text=True, timeout=120)
    assert sample.returncode == 0, sample.stderr
    assert len(sample.stdout.splitlines()) == 784 and "label: " in sample.stderr
    r = run_stream(psmnist["step"], sample.stdout, "--final")
    final = json.loads(r.stdout)
    c = read_contract(psmnist["step"])
    from wavexport.tasks import load_mnist

    ref = TorchStreamer(psmnist["ckpt"])
    y = ref.feed(c.prepare_inputs(load_mnist(psmnist["data"], download=False)[2][5:6])[0])
    assert final["step"] == 783 and np.abs(np.array(final["y"]) - y[-1]).max() < 1e-5


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_node_example_matches_python_onnxruntime(psmnist):
    if not (NODE_DIR / "node_modules" / "onnxruntime-node").exists():
        pytest.skip("run `ONNXRUNTIME_NODE_INSTALL=skip npm ci` in examples/node first (.ci/run does)")
    index = 7
    r = subprocess.run(["node", str(NODE_DIR / "stream_digit.js"), str(psmnist["step"]), "--mnist",
                        str(psmnist["data"]), "--index", str(index)], capture_output=True, text=True, timeout=300,
                       env={**os.environ})
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    steps, final = lines[:-1], lines[-1]
    assert len(steps) == 784 and final["final"] and final["steps"] == 784
    from wavexport.tasks import load_mnist

    _, _, test_x, test_y = load_mnist(psmnist["data"], download=False)
    assert final["label"] == int(test_y[index])
    c = read_contract(psmnist["step"])
    s = StreamingSession(psmnist["step"])
    xs = c.prepare_inputs(test_x[index:index + 1])[0]
    ys = np.stack([s.step(x) for x in xs])
    node_ys = np.array([rec["y"] for rec in steps])
    assert np.abs(node_ys - ys).max() < 1e-5
    assert [rec["pred"] for rec in steps] == ys.argmax(-1).tolist()
