"""Nothing a command reads is destroyed, and a file of the wrong kind is named as such, in one line.

From a user audit: `export RUN RUN/best.pt` wrote ONNX over the checkpoint, `run --output` over the model or the
input, a typo in an output folder made new folders, and a text file, an empty or cut checkpoint, an ONNX model
passed as a checkpoint (or the reverse) or a directory gave a decoder's complaint or a usage block. Every test here
checks the one-line error, the exit status, and that every input is byte for byte what it was.
"""
import os
from pathlib import Path

import numpy as np
import pytest

from wavexport.checkpoint import Checkpoint
from wavexport.config import build_run, make_config
from wavexport.core.errors import FileWriteError
from wavexport.core import io as wio
from wavexport.core.io import atomic_write
from wavexport.exporters.pipeline import export_checkpoint

from cli_helpers import assert_one_line_error, cli


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """An untrained tiny copy wRNN: a run directory (best.pt, checkpoint.pt), its step-graph ONNX file (no
    verification) and a batch of sequences; copied fresh into each test's folder."""
    d = tmp_path_factory.mktemp("made")
    cfg = make_config("copy", "wrnn", "quick", seq=5, channels=3, ring=12, batch_size=16, steps=6, eval_every=3,
                      eval_batch=32)
    run = build_run(cfg)
    (d / "run").mkdir()
    for name in ("best.pt", "checkpoint.pt"):
        Checkpoint.of(run.model, run.model_config, run.task, cfg).save(d / "run" / name)
    export_checkpoint(d / "run" / "best.pt", d / "m.onnx", verify=False)
    np.save(d / "s.npy", np.random.default_rng(0).random((2, 5, 10), dtype=np.float32))
    return d


@pytest.fixture
def files(made, tmp_path):
    """Fresh copies: run/ (best.pt, checkpoint.pt), ck.pt, m.onnx, s.npy, notes.txt, empty.pt, cut.pt (a checkpoint
    cut short), onnx.pt (an ONNX model saved under a checkpoint's name)."""
    (tmp_path / "run").mkdir()
    for name in ("best.pt", "checkpoint.pt"):
        (tmp_path / "run" / name).write_bytes((made / "run" / name).read_bytes())
    blob = (made / "run" / "best.pt").read_bytes()
    (tmp_path / "ck.pt").write_bytes(blob)
    (tmp_path / "cut.pt").write_bytes(blob[: len(blob) // 3])
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("hello, these are my notes\n")
    (tmp_path / "m.onnx").write_bytes((made / "m.onnx").read_bytes())
    (tmp_path / "onnx.pt").write_bytes((made / "m.onnx").read_bytes())
    (tmp_path / "s.npy").write_bytes((made / "s.npy").read_bytes())
    return tmp_path


def snapshot(d: Path) -> dict:
    """Every regular file under ``d`` and its bytes (links are not followed: their targets are listed anyway)."""
    return {p: p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file() and not p.is_symlink()}


# --- 1. an output is never an input ------------------------------------------------------------------------------
def test_export_never_writes_over_the_checkpoint_it_reads(files):
    run, ck = files / "run", files / "ck.pt"
    os.link(ck, files / "hard.onnx")
    (files / "sym.onnx").symlink_to(ck)
    (files / "best.onnx").symlink_to(run / "best.pt")
    before = snapshot(files)
    for src, out, needle in [
            (run, run / "best.pt", f"OUT {run / 'best.pt'} is the same file as the checkpoint {run / 'best.pt'}"),
            (run, run / "checkpoint.pt", f"OUT {run / 'checkpoint.pt'} is the same file as the checkpoint "
                                         f"{run / 'checkpoint.pt'}"),
            (ck, ck, f"OUT {ck} is the same file as the checkpoint {ck}"),
            (ck, files / "hard.onnx", f"OUT {files / 'hard.onnx'} is the same file as the checkpoint {ck}"),
            (ck, files / "sym.onnx", f"OUT {files / 'sym.onnx'} is the same file as the checkpoint {ck}"),
            (run, files / "best.onnx", f"OUT {files / 'best.onnx'} is the same file as the checkpoint")]:
        assert_one_line_error(cli("export", src, out, "--no-verify"), needle, "would destroy it")
    assert_one_line_error(cli("export", ck, files / "other.pt", "--no-verify"),
                          f"OUT {files / 'other.pt'} must end in .onnx")
    assert snapshot(files) == before  # nothing changed, nothing created
    assert (files / "sym.onnx").is_symlink() and (files / "hard.onnx").stat().st_nlink == 2


def test_run_output_is_never_the_model_or_the_input(files):
    m, s = files / "m.onnx", files / "s.npy"
    os.link(s, files / "hard.npy")
    before = snapshot(files)
    for out, needle in [(m, f"--output {m} is the same file as MODEL {m}"),
                        (s, f"--output {s} is the same file as --input {s}"),
                        (files / "hard.npy", f"--output {files / 'hard.npy'} is the same file as --input {s}"),
                        (files / "y.txt", f"--output {files / 'y.txt'} must end in .npy")]:
        assert_one_line_error(cli("run", m, "--input", s, "--output", out), needle)
    assert snapshot(files) == before
    r = cli("run", m, "--input", s, "--output", files / "y.npy")  # what run writes: a .npy
    assert r.exit_code == 0, r.output
    assert np.load(files / "y.npy").shape == (2, 5, 10)
    assert {p: b for p, b in snapshot(files).items() if p.name != "y.npy"} == before


def test_an_output_that_is_a_directory_is_refused_in_one_line(files):
    before = snapshot(files)
    assert_one_line_error(cli("export", files / "ck.pt", files / "run", "--no-verify"),
                          f"error: {files / 'run'} is a directory; give the path of the .onnx file to write")
    assert_one_line_error(cli("run", files / "m.onnx", "--input", files / "s.npy", "--output", files / "run"),
                          f"error: {files / 'run'} is a directory; give the path of the .npy file to write")
    assert snapshot(files) == before


# --- 2. a missing folder is a typo, not a request for new folders ---------------------------------------------------
def test_an_output_in_a_missing_folder_is_refused_and_nothing_is_created(files):
    before = snapshot(files)
    out = files / "no" / "such" / "x.onnx"
    assert_one_line_error(cli("export", files / "ck.pt", out, "--no-verify"),
                          f"error: cannot write {out}: the folder {out.parent} does not exist")
    y = files / "nope" / "y.npy"
    assert_one_line_error(cli("run", files / "m.onnx", "--input", files / "s.npy", "--output", y),
                          f"error: cannot write {y}: the folder {y.parent} does not exist")
    assert not (files / "no").exists() and not (files / "nope").exists()
    assert snapshot(files) == before
    # a run directory's files still get their folders (train, reproduce and sweep rely on it); parents=False not
    with pytest.raises(FileWriteError, match="the folder .* does not exist"):
        atomic_write(files / "a" / "b.txt", lambda tmp: Path(tmp).write_text("x"), parents=False)
    atomic_write(files / "a" / "b.txt", lambda tmp: Path(tmp).write_text("x"))
    assert (files / "a" / "b.txt").read_text() == "x"


# --- 3. a file of the wrong kind says what it is ------------------------------------------------------------------
def test_a_file_that_is_not_a_checkpoint_says_what_it_is(files):
    assert [wio.file_format(files / n) for n in ("ck.pt", "m.onnx", "onnx.pt", "empty.pt", "notes.txt")] == \
        ["torch", "onnx", "onnx", "empty", "other"]
    before = snapshot(files)
    cases = [("notes.txt", "is not a readable checkpoint (not a PyTorch file", "starts with b'hello, these'"),
             ("empty.pt", "is not a readable checkpoint (truncated or empty: 0 bytes)"),
             ("cut.pt", "is not a readable checkpoint (truncated or damaged: "),
             ("onnx.pt", "is not a wavexport checkpoint (it looks like an ONNX model: pass it where a model.onnx is "
                         "expected, or rename it to .onnx)")]
    for name, *needles in cases:
        for r in (cli("eval", files / name), cli("export", files / name, files / "out.onnx", "--no-verify")):
            assert_one_line_error(r, f"error: {files / name} ", *needles)
            assert "Errno" not in r.output and "weights_only" not in r.output and "KeyError" not in r.output
    assert snapshot(files) == before


def test_a_checkpoint_where_an_onnx_model_is_expected_says_to_export_it(files):
    ck, s = files / "ck.pt", files / "s.npy"
    before = snapshot(files)
    needle = f"error: {ck} is a PyTorch checkpoint, not an ONNX model: export it first (wavexport export {ck} out.onnx)"
    for args in (("inspect", ck), ("run", ck, "--input", s), ("run", ck, "--input", s, "--output", files / "y.npy"),
                 ("sample", ck), ("bench", ck), ("demo", ck, "--no-npm", "--port", "0")):
        r = cli(*args)
        assert_one_line_error(r, needle)
        assert "DecodeError" not in r.output
    # eval tells the kinds apart by the suffix: a checkpoint saved as .onnx is read as a model, and named for what it is
    named = files / "ck-named.onnx"
    named.write_bytes(ck.read_bytes())
    assert_one_line_error(cli("eval", named), f"error: {named} is a PyTorch checkpoint, not an ONNX model")
    assert snapshot(files) == {**before, named: ck.read_bytes()}


# --- 4. a directory where a file is expected ----------------------------------------------------------------------
def test_a_directory_where_a_file_is_expected_is_one_accurate_line(files):
    run, m, s = files / "run", files / "m.onnx", files / "s.npy"
    before = snapshot(files)
    model_dir = f"error: {run} is a directory, not an ONNX model: give the path of a .onnx file"
    for args in (("inspect", run), ("run", run, "--input", s), ("demo", run, "--no-npm", "--port", "0"),
                 ("sample", run), ("bench", run)):
        assert_one_line_error(cli(*args), model_dir)
    assert_one_line_error(cli("run", m, "--input", run), f"error: --input {run} is a directory, not a .npy file")
    assert snapshot(files) == before


def test_demo_names_an_unreadable_model_once(files):
    bad = files / "bad.onnx"
    bad.write_bytes(b"\x08\x07 not really a model")
    r = cli("demo", bad, "--no-npm", "--port", "0")
    assert_one_line_error(r, f"error: {bad}: ")
    assert r.output.count(str(bad)) == 1, r.output


def test_a_model_read_from_a_fifo_still_runs(files, tmp_path):
    """`run <(cat model.onnx)`: the kind check must not consume the pipe's first bytes (nor call it missing)."""
    import threading

    fifo = tmp_path / "m-pipe.onnx"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes((files / "m.onnx").read_bytes()))
    writer.start()
    try:
        r = cli("run", fifo, "--input", files / "s.npy")
    finally:
        if writer.is_alive():  # the command never opened the pipe: let the writer finish
            with open(fifo, "rb") as f:
                f.read()
        writer.join()
    assert r.exit_code == 0, r.output
    assert '"sequences": 2' in r.stdout


def test_export_to_stdout_writes_only_the_model_there(files, tmp_path):
    """`export RUN /dev/stdout > m.onnx`: the report goes to stderr, so the file is the model and nothing else."""
    import subprocess
    import sys

    from wavexport.core.contract import read_contract

    with open(tmp_path / "piped.onnx", "wb") as f:
        r = subprocess.run([sys.executable, "-m", "wavexport.cli", "export", str(files / "run" / "best.pt"),
                            "/dev/stdout"], stdout=f, stderr=subprocess.PIPE, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "verified:" in r.stderr
    assert read_contract(tmp_path / "piped.onnx").task == "copy"
