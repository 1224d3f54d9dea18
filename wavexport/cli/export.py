"""``export`` and ``inspect``. onnx, onnxruntime and torch are imported inside the commands, so
``wavexport --help`` does not pay for them."""
from __future__ import annotations

import json
import os

import click

OPSET_RANGE = "13-21"
DEFAULT_OPSET = 17  # mirrors onnx_export.DEFAULT_OPSET (checked by the tests) without importing torch for --help


@click.command("export")
@click.argument("checkpoint", type=click.Path())
@click.argument("out", type=click.Path())
@click.option("--mode", type=click.Choice(["step", "sequence"]), default="step", show_default=True,
              help="step: one time step per call, state in and out; sequence: one Scan over a whole [batch, T] "
                   "input.")
@click.option("--opset", default=str(DEFAULT_OPSET), show_default=True, metavar="N",
              help=f"ONNX opset, {OPSET_RANGE}.")
@click.option("--batch", default="dynamic", show_default=True, metavar="dynamic|N",
              help="Dynamic batch axis, or a fixed batch size for runtimes that need static shapes.")
@click.option("--quantize", type=click.Choice(["int8"]),
              help="int8 readout (ONNX Runtime static quantization, calibrated on training data), checked on "
                   "the task metric.")
@click.option("--no-verify", "no_verify", is_flag=True,
              help="Skip the checks (ONNX checker, ONNX Runtime vs PyTorch parity, int8 accuracy).")
@click.option("--tolerance", type=float, help="Max absolute error of the float32 parity check, strict when given "
              "[default: 1e-4, beyond which a model still passes if ONNX Runtime is as exact as PyTorch float32 "
              "against float64].")
@click.option("--data-dir", type=click.Path(file_okay=False),
              help="Data root for int8 calibration and check of image tasks (default as for train).")
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True, metavar="N",
              help="CPU threads for torch while tracing and verifying (ONNX Runtime's checks use 1).")
def export_cmd(checkpoint, out, mode, opset, batch, quantize, no_verify, tolerance, data_dir, threads):
    """Export CHECKPOINT (a .pt file or a run directory) to the ONNX file OUT, then verify it.

    \b
    The file appears only once it is complete and verified; a failed check writes nothing and exits non-zero.
    OUT must end in .onnx, in an existing folder, and must not be the checkpoint itself.
    Verification: onnx.checker (full), then ONNX Runtime vs PyTorch over a chain of steps as long as the task's
    sequence at batch sizes other than the traced one, outputs and final state: max abs error <= --tolerance, or
    where float32 cannot meet an absolute bound (large activations) as exact as PyTorch float32 itself against a
    float64 run (docs/EXPORT.md); for --quantize int8 the task metric on 1000 test samples (within 0.5 accuracy
    points of float32).
    """
    import torch

    from ..checkpoint import RUN_FILES, load_checkpoint
    from ..core.io import check_output, is_stdout
    from ..exporters.onnx_export import parse_batch, parse_opset
    from ..exporters.pipeline import export_checkpoint

    # The options and the checkpoint are checked first (their errors name what the user typed wrong); then, before
    # any work, OUT: it ends in .onnx, sits in an existing folder, and is none of the files read (a run
    # directory's checkpoints both, whichever of them the export picks).
    opset, batch = parse_opset(opset), parse_batch(batch)
    ckpt = load_checkpoint(checkpoint)
    sources = [os.path.join(checkpoint, name) for name in RUN_FILES] if os.path.isdir(checkpoint) else [checkpoint]
    check_output(out, [("the checkpoint", src) for src in sources], suffix=".onnx", what="OUT")
    torch.set_num_threads(threads)  # a batch of 1-8 sequences of a small model: 1 is the rule's answer

    def log(msg):
        click.echo(msg, err=True)

    rep = export_checkpoint(ckpt, out, mode=mode, opset=opset, batch=batch, quantize=quantize,
                            verify=not no_verify, data_dir=data_dir, tolerance=tolerance,
                            log=log)
    to_stdout = is_stdout(out)  # the model went down stdout: the report must not follow it there
    for line in rep.lines():
        click.echo(line, err=to_stdout)


@click.command("inspect")
@click.argument("model", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (the full metadata included).")
def inspect_cmd(model, as_json):
    """The I/O contract of an exported MODEL.onnx: tensor names, shapes and dtypes, every metadata key, opset,
    file size, parameter count, and how to feed it."""
    from ..exporters.inspect import describe, format_text

    d = describe(model)
    click.echo(json.dumps(d, indent=2) if as_json else format_text(d))
