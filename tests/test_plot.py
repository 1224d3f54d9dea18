"""`wavexport plot`: the wave-speed estimator (no matplotlib needed), the CLI's errors, and real PNG/GIF files."""
import json
import re
import sys

import numpy as np
import pytest
import torch

from wavexport.core.errors import InputError
from wavexport.models import WaveRNN, build_model, resolve_config
from wavexport.plot import (PlotError, TorchSource, channel_speeds, input_events, load_input, open_source,
                            parse_channels, task_sequence, wave_speed)
from wavexport.tasks import SequentialMNIST, load_mnist, make_task
from wavexport.checkpoint import Checkpoint
from wavexport.config import TrainConfig

from cli_helpers import assert_one_line_error, cli


def default_size(arch):
    return dict(channels=3, ring=12) if arch.startswith("wrnn") else dict(hidden=12)


def untrained(arch, task, **size):
    torch.manual_seed(0)
    return build_model(resolve_config(arch, task.n_in, task.n_out, **(size or default_size(arch))))


def make_checkpoint(path, arch="wrnn", task="copy", seq=10, lr=1e-3):
    """A checkpoint of an untrained model, in the trainer's format."""
    t = make_task(task, seq)
    model = untrained(arch, t)
    Checkpoint.of(model, resolve_config(arch, t.n_in, t.n_out, **default_size(arch)), t,
                  TrainConfig(task=task, arch=arch, seed=0, eval_batch=64, lr=lr)).save(path)
    return path


def task_inputs(name, n=3, seq=None):
    t = make_task(name, seq)
    return t, t.sample(n, torch.Generator().manual_seed(5))[0].numpy()


# --- the estimator on hand-built space-time patterns --------------------------------------------------------------
@pytest.mark.parametrize("v", [1, -1, 2, -3, 7])
def test_a_rolled_pulse_train_moves_at_the_roll(v):
    rng = np.random.default_rng(0)
    pattern = rng.random((3, 16)) * (rng.random((3, 16)) < 0.4)  # sparse, non-negative, 3 channels
    states = np.stack([np.roll(pattern, v * t, axis=-1) for t in range(24)])
    ws = wave_speed(states)
    assert ws.speed == v
    assert ws.strength == pytest.approx(1.0, abs=1e-9)  # a rigid roll: d_t is exactly d_{t-1} rolled by v


def test_scores_are_the_correlations_of_differences_under_np_roll():
    rng = np.random.default_rng(1)
    states = rng.standard_normal((9, 2, 7))
    ws = wave_speed(states)
    d = np.diff(states, axis=0)
    a, b = d[1:], d[:-1]
    norm = np.sqrt((a ** 2).sum() * (b ** 2).sum())
    assert list(ws.lags) == [-3, -2, -1, 0, 1, 2, 3]
    for s, got in zip(ws.lags, ws.scores):
        assert got == pytest.approx(float((a * np.roll(b, s, axis=-1)).sum() / norm), abs=1e-12)


def test_a_growing_block_is_a_front_moving_one_unit_and_an_integrator_stands_still():
    T, N = 20, 30
    block = np.array([[1.0 if i <= t else 0.0 for i in range(N)] for t in range(T)])  # what copy does untrained
    assert wave_speed(block).speed == 1
    integrator = np.zeros((T, N))
    integrator[:, 0] = np.arange(1, T + 1)  # identity recurrence with a constant input at unit 0
    ws = wave_speed(integrator)
    assert (ws.speed, ws.strength) == (0, pytest.approx(1.0))


def test_unchanging_activity_has_speed_zero_and_no_strength():
    ws = wave_speed(np.ones((10, 2, 8)))
    assert (ws.speed, ws.strength) == (0, 0.0)


def test_channels_moving_in_opposite_directions_are_told_apart():
    pulse = np.zeros(10)
    pulse[[0, 3]] = [1.0, 0.5]
    states = np.stack([np.stack([np.roll(pulse, t), np.roll(pulse, -t)]) for t in range(15)])
    assert [s.speed for s in channel_speeds(states)] == [1, -1]


def test_estimator_rejects_too_short_or_misshapen_input():
    with pytest.raises(PlotError, match=r"^wave speed needs at least 3 time steps, got 2$"):
        wave_speed(np.zeros((2, 5)))
    with pytest.raises(PlotError, match=r"^wave speed needs states \[T, N\] or \[T, C, N\], got shape \[5\]$"):
        wave_speed(np.zeros(5))
    with pytest.raises(PlotError, match=r"^wave speed needs states \[T, N\] or \[T, C, N\], got shape \[2, 3, 4, 5\]$"):
        wave_speed(np.zeros((2, 3, 4, 5)))
    with pytest.raises(PlotError, match=r"^the hidden state holds NaN or infinite values \(a diverged model\?\)$"):
        wave_speed(np.full((4, 3), np.inf))


# --- the estimator on models driven by real task inputs ----------------------------------------------------------
@pytest.mark.parametrize("task_name,seq", [("copy", 20), ("adding", 50)])
def test_untrained_shift_wrnn_is_plus_one_and_identity_is_zero(task_name, seq):
    task, xs = task_inputs(task_name, seq=seq)
    shift = TorchSource(untrained("wrnn", task, channels=4, ring=40))
    ident = TorchSource(untrained("wrnn-identity", task, channels=4, ring=40))
    for x in xs:
        assert wave_speed(shift.states(x)).speed == 1
        assert wave_speed(ident.states(x)).speed == 0


@pytest.mark.parametrize("permuted", [False, True])
def test_untrained_wrnn_on_mnist_images(data_dir, permuted):
    task = SequentialMNIST(permuted, seed=0)
    xs = task.inputs(torch.from_numpy(load_mnist(data_dir)[2][:2])).numpy()
    shift = TorchSource(untrained("wrnn", task, channels=2, ring=64))
    ident = TorchSource(untrained("wrnn-identity", task, channels=2, ring=64))
    for x in xs:
        assert wave_speed(shift.states(x)).speed == 1
        assert wave_speed(ident.states(x)).speed == 0


def test_the_sign_follows_the_ring_direction_of_the_recurrence():
    """A kernel that copies unit i+1 into i moves activity towards lower units: speed -1."""
    task, xs = task_inputs("adding", seq=30)
    model = untrained("wrnn", task, channels=2, ring=16)
    with torch.no_grad():
        model.conv.weight.zero_()
        model.conv.weight[[0, 1], [0, 1], 2] = 1.0  # tap centre+1 reads h[i+1]
    assert isinstance(model, WaveRNN)
    assert wave_speed(TorchSource(model).states(xs[0])).speed == -1


def test_irnn_shift_units_read_as_a_ring_move_one_unit_per_step():
    task, xs = task_inputs("adding", seq=40)
    src = TorchSource(untrained("irnn-shift", task, hidden=30))
    states = src.states(xs[0])
    assert src.layout == "units" and states.shape == (40, 1, 30)
    assert wave_speed(states).speed == 1


# --- inputs, events, sequences -----------------------------------------------------------------------------------
def test_task_sample_is_the_sequence_eval_scores(tmp_path):
    from wavexport.evaluation import evaluate, model_predictor, test_stream

    src = open_source(make_checkpoint(tmp_path / "c.pt", task="adding", seq=20))
    seen = []

    class Recorder(torch.nn.Module):  # captures exactly what the evaluation feeds the model
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, xs, **kw):
            seen.append(xs)
            return self.model(xs, **kw)

    evaluate(model_predictor(Recorder(src.model), src.task, "cpu"), src.task, test_stream(src.task, 0, "test", n=600))
    evaluated = torch.cat(seen)
    assert len(evaluated) == 600
    for i in (0, 5, 499, 550):
        np.testing.assert_array_equal(task_sequence(src, i), evaluated[i].numpy())


def test_events_read_from_the_input():
    copy = np.zeros((30, 10), dtype=np.float32)
    copy[np.arange(30), [3, 1, 8, 5, 2, 2, 7, 4, 6, 1] + [0] * 9 + [9] + [0] * 10] = 1
    ev = input_events("copy", copy)
    assert [(e.t, e.label) for e in ev if e.kind == "symbol"] == list(enumerate("3185227461"))
    assert [(e.t, e.kind, e.end) for e in ev if e.kind != "symbol"] == [(19, "cue", None), (20, "window", 29)]
    adding = np.zeros((10, 2), dtype=np.float32)
    adding[:, 0] = 0.25
    adding[[2, 7], 1] = 1
    assert [(e.t, e.label) for e in input_events("adding", adding)] == [(2, "0.25"), (7, "0.25")]


def test_load_input_accepts_the_documented_shapes_and_rejects_others(tmp_path):
    seq = np.arange(12, dtype=np.float64).reshape(6, 2)
    for name, arr in [("a.npy", seq), ("b.npy", seq[None])]:
        np.save(tmp_path / name, arr)
        np.testing.assert_array_equal(load_input(tmp_path / name, 2), seq.astype(np.float32))
    np.save(tmp_path / "one.npy", np.arange(5.0))
    assert load_input(tmp_path / "one.npy", 1).shape == (5, 1)
    np.save(tmp_path / "bad.npy", np.zeros((6, 3)))
    with pytest.raises(PlotError, match="^" + re.escape(f"--input {tmp_path / 'bad.npy'} has shape [6, 3]; this model "
                                                         "takes [T, 2] or [1, T, 2] (n_in = 2)") + "$"):
        load_input(tmp_path / "bad.npy", 2)
    np.save(tmp_path / "nan.npy", np.full((6, 2), np.nan))
    with pytest.raises(PlotError, match="^" + re.escape(f"--input {tmp_path / 'nan.npy'} contains NaN or infinite "
                                                         "values") + "$"):
        load_input(tmp_path / "nan.npy", 2)
    np.savez(tmp_path / "z.npz", a=seq)
    with pytest.raises(InputError, match="^" + re.escape(f"--input {tmp_path / 'z.npz'} holds several arrays (.npz); "
                                                         "save one array with numpy.save") + "$"):
        load_input(tmp_path / "z.npz", 2)  # from the shared .npy reader


def test_parse_channels():
    assert parse_channels(None, 6) == [0, 1, 2]
    assert parse_channels(None, 1) == [0]
    assert parse_channels("4,1,4", 6) == [4, 1]
    assert parse_channels("all", 3) == [0, 1, 2]
    with pytest.raises(PlotError, match=r"--channels 6 is out of range: the model has 6 channels \(0..5\)"):
        parse_channels("0,6", 6)
    with pytest.raises(PlotError, match=r"^--channels expects comma-separated integers or 'all', got 'a,b'$"):
        parse_channels("a,b", 6)


# --- the CLI without matplotlib ----------------------------------------------------------------------------------
def test_speed_command(tmp_path):
    for arch, expect in [("wrnn", 1), ("wrnn-identity", 0)]:
        ck = make_checkpoint(tmp_path / f"{arch}.pt", arch=arch, task="adding", seq=30)
        r = cli("plot", "speed", ck, "--task-sample", 3, "--json")
        assert r.exit_code == 0, r.output
        got = json.loads(r.output)
        assert got["speed"] == expect and [c["speed"] for c in got["channels"]] == [expect] * 3
        assert got["steps"] == 30 and got["layout"] == "ring"
    seq = np.zeros((25, 2), dtype=np.float32)
    seq[[0, 4], 0] = [1.0, 0.5]  # two impulses into unit 0, then they travel
    np.save(tmp_path / "seq.npy", seq)
    r = cli("plot", "speed", tmp_path / "wrnn.pt", "--input", tmp_path / "seq.npy")
    assert r.exit_code == 0, r.output
    assert "wave speed: +1 unit/step (r = 1.00)" in r.output and "25 steps" in r.output


def test_an_exported_onnx_model_shows_the_same_states_as_its_checkpoint(tmp_path):
    from wavexport.exporters.pipeline import export_checkpoint
    from wavexport.plot.waves import open_source

    ck = make_checkpoint(tmp_path / "w.pt", task="adding", seq=20)
    export_checkpoint(ck, tmp_path / "w.onnx", verify=False)
    xs = task_inputs("adding", n=1, seq=20)[1][0]
    from_onnx, from_torch = open_source(tmp_path / "w.onnx"), open_source(ck)
    assert from_onnx.layout == from_torch.layout == "ring"
    np.testing.assert_allclose(from_onnx.states(xs), from_torch.states(xs), atol=1e-5)
    r = cli("plot", "speed", tmp_path / "w.onnx", "--task-sample", 0, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["speed"] == 1


def test_cli_errors_are_one_line(tmp_path):
    ck = make_checkpoint(tmp_path / "c.pt", task="adding", seq=20)
    (tmp_path / "m.onnx").write_bytes(b"\x08\x07")
    assert_one_line_error(cli("plot", "speed", tmp_path / "m.onnx"), "not a wavexport export",
                          f"error: {tmp_path / 'm.onnx'}: not a wavexport export: it carries none of wavexport's "
                          "metadata")
    assert_one_line_error(cli("plot", "speed", tmp_path / "nope.pt"), "no such file",
                          f"error: {tmp_path / 'nope.pt'}: no such file")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert_one_line_error(cli("plot", "speed", tmp_path / "junk.pt"), "not a readable checkpoint",
                          f"error: {tmp_path / 'junk.pt'} is not a readable checkpoint (")
    np.save(tmp_path / "s.npy", np.zeros((8, 2)))
    assert_one_line_error(cli("plot", "speed", ck, "--input", tmp_path / "s.npy", "--task-sample", 1), "not both",
                          "error: give --task-sample or --input, not both")
    np.save(tmp_path / "bad.npy", np.zeros((8, 5)))
    assert_one_line_error(cli("plot", "speed", ck, "--input", tmp_path / "bad.npy"), "shape [8, 5]", "n_in = 2",
                          f"error: --input {tmp_path / 'bad.npy'} has shape [8, 5]; this model takes [T, 2] or "
                          "[1, T, 2] (n_in = 2)")
    assert_one_line_error(cli("plot", "curves", tmp_path), "has no metrics.jsonl",
                          f"error: {tmp_path} has no metrics.jsonl (is it a run directory written by `wavexport "
                          "train`?)")
    assert_one_line_error(cli("plot", "curves", ck), "is a file: give the run directory",
                          f"error: {ck} is a file: give the run directory (the one holding metrics.jsonl)")
    (tmp_path / "bad.jsonl").write_text('{"step": 1, "val_loss": 0.5}\nnot json\n')
    assert_one_line_error(cli("plot", "curves", tmp_path / "bad.jsonl"), "bad.jsonl:2: not a JSON line",
                          f"error: {tmp_path / 'bad.jsonl'}:2: not a JSON line (")


def test_missing_matplotlib_says_how_to_install_it(tmp_path, monkeypatch):
    for mod in ("matplotlib", "matplotlib.figure", "matplotlib.backends", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, mod, None)  # makes `import matplotlib...` raise ImportError
    ck = make_checkpoint(tmp_path / "c.pt")
    msg = "error: plotting needs matplotlib: pip install 'wavexport[plot]'"
    for args in (("waves", ck), ("curves", tmp_path)):
        r = cli("plot", *args)
        assert r.exit_code == 2 and r.output.strip() == msg, r.output
    assert cli("plot", "speed", ck).exit_code == 0  # the numbers need no matplotlib


# --- real image files --------------------------------------------------------------------------------------------
def _image(path):
    from PIL import Image

    im = Image.open(path)
    im.load()
    return im


@pytest.mark.slow
def test_waves_png_and_gif_decode_with_the_requested_sizes(tmp_path):
    pytest.importorskip("matplotlib")
    ck = make_checkpoint(tmp_path / "c.pt", task="copy", seq=10)  # 30 steps
    out = tmp_path / "figs" / "w.png"
    args = ["plot", "waves", ck, "--channels", "0,2", "--size", "640x480", "--out", out, "--gif", "--gif-frames", 15,
            "--gif-size", 200]
    assert_one_line_error(cli(*args), f"error: cannot write {out}: the folder {out.parent} does not exist")
    assert not out.parent.exists()  # a typo in --out never becomes new folders
    out.parent.mkdir()
    r = cli(*args)
    assert r.exit_code == 0, r.output
    png = _image(out)
    assert png.format == "PNG" and png.size == (640, 480)
    assert len(png.convert("RGB").getcolors(1 << 20)) > 50  # drawn, not blank
    gif = _image(out.with_suffix(".gif"))
    assert gif.format == "GIF" and gif.size == (200, 200) and gif.n_frames == 15  # every 2nd of 30 steps
    assert "channel 0: +1 unit/step (r = 1.00)" in r.output and "channel 2: +1" in r.output
    assert not list(out.parent.glob(".*tmp"))  # written through temp files and renamed


def test_waves_for_a_fully_connected_rnn_and_a_gif_only_output(tmp_path):
    pytest.importorskip("matplotlib")
    ck = make_checkpoint(tmp_path / "lstm.pt", arch="lstm", task="adding", seq=20)
    r = cli("plot", "waves", ck, "--out", tmp_path / "l.png", "--size", "500x300")
    assert r.exit_code == 0, r.output
    assert _image(tmp_path / "l.png").size == (500, 300) and "best lag (units as a ring)" in r.output
    assert_one_line_error(cli("plot", "waves", ck, "--channels", "1", "--out", tmp_path / "x.png"),
                          "--channels 1 is out of range: the model has one channel (0)")
    r = cli("plot", "waves", make_checkpoint(tmp_path / "w.pt"), "--out", tmp_path / "only.gif", "--gif-frames", 10)
    assert r.exit_code == 0, r.output
    assert _image(tmp_path / "only.gif").n_frames == 10 and not (tmp_path / "only.png").exists()
    assert_one_line_error(cli("plot", "waves", ck, "--out", tmp_path / "w.xyz"), "cannot write a xyz file",
                          f"error: {tmp_path / 'w.xyz'}: cannot write a xyz file; use .png, .pdf, .svg or .gif")


def _fake_run(path, arch, losses):
    path.mkdir()
    make_checkpoint(path / "checkpoint.pt", arch=arch)
    with open(path / "metrics.jsonl", "w") as f:
        for i, loss in enumerate(losses, 1):
            f.write(json.dumps({"step": 50 * i, "lr": 1e-3, "train_loss": loss * 1.1, "val_loss": loss,
                                "val_acc": 1 - loss / 3}) + "\n")
    return path


def test_curves_overlay_runs_labelled_by_arch_and_size(tmp_path):
    pytest.importorskip("matplotlib")
    a = _fake_run(tmp_path / "wave", "wrnn", [2.0, 0.5, 0.01, 0.001])
    b = _fake_run(tmp_path / "base", "irnn", [2.1, 2.0, 1.9, 1.95])
    out = tmp_path / "c.png"
    r = cli("plot", "curves", a, b, "--metric", "val_loss", "--out", out, "--size", "700x420")
    assert r.exit_code == 0, r.output
    assert _image(out).size == (700, 420)
    assert "wave: wrnn 3×12, lr 0.001: val_loss last 0.001 at step 200, best 0.001 at step 200" in r.output
    assert "base: irnn 12, lr 0.001: val_loss last 1.95 at step 200, best 1.9 at step 150" in r.output
    assert_one_line_error(cli("plot", "curves", a, b, "--metric", "val_mse", "--out", out),
                          "no metric 'val_mse'", "lr, train_loss, val_loss, val_acc",
                          f"error: {a} has no metric 'val_mse' in metrics.jsonl; available in every run: lr, "
                          "train_loss, val_loss, val_acc")
    assert_one_line_error(cli("plot", "curves", a, "--x", "epoch", "--out", out), "use --x step",
                          f"error: {a}: no records with both 'epoch' and 'val_acc' (synthetic-task runs have no "
                          "epochs; use --x step)")


@pytest.mark.slow
def test_curves_of_a_real_training_run(tmp_path):
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    r = cli("train", "copy", "--seq", "5", "--channels", "3", "--ring", "12", "--batch-size", "16",
            "--eval-batch", "32", "--steps", "4", "--eval-every", "2", "--out", run, "--quiet")
    assert r.exit_code == 0, r.output
    r = cli("plot", "curves", run, "--out", tmp_path / "c.png")
    assert r.exit_code == 0, r.output
    assert "run: wrnn 3×12, lr 0.001: val_acc last" in r.output  # val_acc is the default when every run has it
    assert _image(tmp_path / "c.png").format == "PNG"
