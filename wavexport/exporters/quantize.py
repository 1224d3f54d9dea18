"""int8 export: ONNX Runtime static (QDQ) quantization of the step graph's readout, judged on the task metric.

What is quantized and why, with measurements: docs/EXPORT.md ("int8"). In short: ``quantize_*`` handles MatMul,
not Gemm, so every ``nn.Linear`` is first rewritten as MatMul + Add; the recurrence (the Conv, and the state fed
back every step) stays float32, since quantizing it compounds rounding over 784 steps (-14 accuracy points);
static beats dynamic not on accuracy (equal) but because a fixed activation scale makes a sample's output
independent of what else is in its batch, so the check measures what every batch size gets. The int8 step graph is
then wrapped in the Scan like a float one.

An elementwise check means nothing for int8, so the command compares the task metric of the int8 and the float32
graph on held-out data (>= 1000 test images, or the test draw of a synthetic task) and fails beyond the tolerance.
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from ..core.contract import Contract
from ..core.errors import ExportError, VerificationError
from ..evaluation import evaluate, load_eval_splits, streamer_predictor, test_stream
from ..tasks import resolve_data_dir
from .verify import ort_chain, session

QUANT_EVAL_SAMPLES = 1000
MAX_ACC_DROP = 0.005          # 0.5 accuracy points (image tasks)
MAX_LOSS_RISE = 0.05          # relative rise of the task loss allowed (synthetic tasks) ...
MAX_LOSS_RISE_ABS = 1e-3      # ... or this much absolutely, whichever is larger
DEFAULT_OP_TYPES = ("MatMul",)  # Gemm is rewritten to MatMul first; add "Conv" to quantize the recurrence too
MIN_QUANT_FAN_IN = 16          # MatMuls with fewer input rows stay float32 (see _narrow_matmuls)
CALIB_SEQUENCES = 128          # calibration: this many training sequences ...
CALIB_FEEDS = 100              # ... sampled at about this many evenly spaced steps
CALIB_SEED_OFFSET = 3_000_017  # synthetic tasks: a draw distinct from the validation and test ones
METHOD_NAMES = {"static": "int8-static", "dynamic": "int8-dynamic"}


def gemm_to_matmul(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite ``Gemm(A, W, b)`` with a constant W (alpha = beta = 1, A not transposed) as ``MatMul(A, W') + b``,
    which ONNX Runtime's quantizers handle. Same values; W' is W transposed once here when ``transB`` is set."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inits = {t.name: t for t in g.initializer}
    nodes = []
    used_elsewhere = {i for n in g.node if n.op_type != "Gemm" for i in n.input}
    replaced = set()
    for n in g.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if (n.op_type != "Gemm" or len(n.input) < 2 or n.input[1] not in inits or attrs.get("transA", 0)
                or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
            nodes.append(n)
            continue
        w = numpy_helper.to_array(inits[n.input[1]])
        if attrs.get("transB", 0):
            w = w.T
        w_name = n.input[1] + "_matmul"
        if w_name not in inits:
            t = numpy_helper.from_array(np.ascontiguousarray(w), w_name)
            g.initializer.append(t)
            inits[w_name] = t
        replaced.add(n.input[1])
        has_bias = len(n.input) > 2 and n.input[2]
        mm_out = n.output[0] + "_mm" if has_bias else n.output[0]
        nodes.append(helper.make_node("MatMul", [n.input[0], w_name], [mm_out], name=(n.name or "gemm") + "_mm"))
        if has_bias:
            nodes.append(helper.make_node("Add", [mm_out, n.input[2]], [n.output[0]],
                                          name=(n.name or "gemm") + "_bias"))
    del g.node[:]
    g.node.extend(nodes)
    still_used = {i for n in g.node for i in n.input}
    keep = [t for t in g.initializer if t.name not in replaced or t.name in still_used | used_elsewhere]
    del g.initializer[:]
    g.initializer.extend(keep)
    return out


def _narrow_matmuls(model: onnx.ModelProto) -> list[str]:
    """MatMuls whose constant weight has fewer than MIN_QUANT_FAN_IN rows: per-channel int8 stores a float scale
    and a zero point per output, so a [1, 4096] encoder (psMNIST, one pixel in) would grow, not shrink, and its
    per-step quantize/dequantize costs more than the product."""
    inits = {t.name: t for t in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits
            and len(inits[n.input[1]].dims) == 2 and inits[n.input[1]].dims[0] < MIN_QUANT_FAN_IN]


def quantize_step_int8(step: onnx.ModelProto, op_types=DEFAULT_OP_TYPES, method: str = "static",
                       calibration=None) -> onnx.ModelProto:
    """int8 weights (per output channel, symmetric) for the step graph's ``op_types``. ``static``: activations
    get a fixed uint8 scale calibrated on ``calibration`` (a list of step-graph feeds); ``dynamic``: ONNX Runtime
    picks the activation scale per call. Keeps the graph's opset and I/O."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)

    if method not in METHOD_NAMES:
        raise ExportError(f"unknown int8 method {method!r} ({', '.join(METHOD_NAMES)})")
    if method == "static" and not calibration:
        raise ExportError("static int8 quantization needs calibration feeds")
    prepared = gemm_to_matmul(step)
    for i, n in enumerate(prepared.graph.node):  # nodes_to_exclude works by name
        if not n.name:
            n.name = f"{n.op_type}_{i}"
    exclude = _narrow_matmuls(prepared)
    with tempfile.TemporaryDirectory(prefix="wavexport-q8-") as tmp:
        src, dst = os.path.join(tmp, "fp32.onnx"), os.path.join(tmp, "int8.onnx")
        onnx.save(prepared, src)
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # its advice to run pre-processing is for conv nets with shape inference gaps
        try:
            if method == "dynamic":
                quantize_dynamic(src, dst, op_types_to_quantize=list(op_types), per_channel=True,
                                 weight_type=QuantType.QInt8, nodes_to_exclude=exclude)
            else:
                class Feeds(CalibrationDataReader):
                    def __init__(self):
                        self.it = iter(calibration)

                    def get_next(self):
                        return next(self.it, None)

                # The MatMul output is quantized too: with it ORT fuses Q/DQ + MatMul into one QLinearMatMul;
                # without it, it dequantizes the whole weight on every call (measured 4x slower than float32).
                quantize_static(src, dst, Feeds(), quant_format=QuantFormat.QDQ, op_types_to_quantize=list(op_types),
                                per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                nodes_to_exclude=exclude)
        except Exception as e:  # noqa: BLE001
            raise ExportError(f"onnxruntime could not quantize the graph: {type(e).__name__}: {e}") from None
        finally:
            root.setLevel(level)
        q = onnx.load(dst)
    opset = {o.domain: o.version for o in q.opset_import}
    want = {o.domain: o.version for o in step.opset_import}
    if opset.get("", opset.get("ai.onnx")) != want.get("", want.get("ai.onnx")):
        raise ExportError(f"quantization changed the opset from {want} to {opset}")
    return q


# --- data: calibration and judging ---------------------------------------------------------------------------------
def quant_data(task, ckpt, data_dir=None, n_eval: int = QUANT_EVAL_SAMPLES, n_calib: int = CALIB_SEQUENCES,
               evaluate: bool = True):
    """(calibration xs [n_calib, T, n_in], eval xs [n_eval, T, n_in], eval targets), float32 model inputs.

    Image tasks: the first training sequences of the run's own split, and the first test images (the data set is
    needed). Synthetic tasks: a calibration draw, and the run's held-out test draw. Eval is None if not ``evaluate``.
    """
    cfg = ckpt.train_config
    calib_gen = torch.Generator().manual_seed(cfg.seed + CALIB_SEED_OFFSET)
    splits = None
    if task.kind == "synthetic":
        calib = task.sample(n_calib, calib_gen)[0].float()
    else:
        splits = load_eval_splits(task, resolve_data_dir(data_dir, cfg.data_dir), cfg.seed, limit=n_eval)
        calib = task.inputs(splits["train"].x[:n_calib], calib_gen).float()
    if not evaluate:
        return calib, None, None
    if splits is not None and len(splits["test"]) < n_eval:
        raise ExportError(f"the int8 check needs {n_eval} test samples, the test split has {len(splits['test'])}")
    xs, y = zip(*test_stream(task, cfg.seed, "test", n=n_eval, splits=splits))
    return calib, torch.cat(xs).float(), torch.cat(y)


def calibration_feeds(step: onnx.ModelProto, contract: Contract, xs: torch.Tensor) -> list[dict]:
    """Step-graph feeds (x_t and the state reached at t) at evenly spaced steps of real sequences run by the float
    graph: the activations the int8 graph will see, early and late in a sequence. ``contract`` is the step
    graph's; a fixed-batch graph is fed in chunks of its batch (the last one padded with zeros)."""
    sess = session(_with_contract(step, contract))
    x = xs.numpy().astype(np.float32)
    T = x.shape[1]
    every = max(1, T // CALIB_FEEDS)
    keep = set(range(every - 1, T, every)) | {T - 1}
    b = contract.batch or len(x)
    if len(x) % b:
        x = np.concatenate([x, np.zeros((b - len(x) % b, *x.shape[1:]), np.float32)])
    feeds = []
    for i in range(0, len(x), b):
        chunk = x[i:i + b]
        sess.reset(len(chunk))
        for t in range(T):
            if t in keep:
                feeds.append({contract.input_name: chunk[:, t].copy(), **sess.state})
            sess.step(chunk[:, t])
    return feeds


def _with_contract(step: onnx.ModelProto, contract: Contract) -> onnx.ModelProto:
    """A copy of a freshly traced step graph carrying ``contract``'s metadata, so the runtime can open it."""
    from ..core.contract import write_metadata

    tagged = onnx.ModelProto()
    tagged.CopyFrom(step)
    write_metadata(tagged, contract)
    return tagged


@dataclass
class QuantReport:
    metric: str
    fp32: float
    int8: float
    n: int
    allowed: float
    fp32_bytes: int = 0
    int8_bytes: int = 0
    fp32_step_us: float = 0.0
    int8_step_us: float = 0.0

    @property
    def delta(self) -> float:
        """How much worse int8 is (positive = worse), in the metric's units."""
        return (self.fp32 - self.int8) if self.metric == "acc" else (self.int8 - self.fp32)

    @property
    def ok(self) -> bool:
        return self.delta <= self.allowed

    def summary(self) -> str:
        if self.metric == "acc":
            change = -100 * self.delta + 0.0  # + 0.0: no "-0.00"
            m = (f"test accuracy on {self.n} samples: int8 {100 * self.int8:.2f} % vs fp32 {100 * self.fp32:.2f} % "
                 f"({change:+.2f} points; allowed -{100 * self.allowed:.2f})")
        else:
            m = (f"test {self.metric} on {self.n} samples: int8 {self.int8:.5f} vs fp32 {self.fp32:.5f} "
                 f"({self.delta:+.5f}; allowed +{self.allowed:.5f})")
        return m

    def size_speed(self) -> str:
        s = (f"size {self.int8_bytes / 1024:.1f} KiB vs fp32 {self.fp32_bytes / 1024:.1f} KiB "
             f"({self.int8_bytes / max(self.fp32_bytes, 1):.2f}x)")
        if self.fp32_step_us:
            s += (f"; batch-1 step {self.int8_step_us:.1f} us vs fp32 {self.fp32_step_us:.1f} us "
                  f"({self.int8_step_us / self.fp32_step_us:.2f}x, 1 thread)")
        return s


def compare_int8(fp32_sess, int8_sess, task, xs, target) -> QuantReport:
    """Task metric of int8 vs float32 on the same samples; the tolerance is 0.5 accuracy points for
    classification by image, else a relative rise of the loss."""
    batches = [(xs[i:i + 500], target[i:i + 500]) for i in range(0, len(xs), 500)]
    m32 = evaluate(streamer_predictor(fp32_sess), task, iter(batches))
    m8 = evaluate(streamer_predictor(int8_sess), task, iter(batches))
    if getattr(task, "primary_metric", "loss") == "acc":
        key, allowed = "acc", MAX_ACC_DROP
    else:
        key = "loss"
        allowed = max(MAX_LOSS_RISE * abs(m32["loss"]), MAX_LOSS_RISE_ABS)
    return QuantReport(metric=key, fp32=m32[key], int8=m8[key], n=len(xs), allowed=allowed)


def check_int8(rep: QuantReport) -> None:
    if rep.ok:
        return
    if rep.metric == "acc":
        what = f"int8 loses {100 * rep.delta:.2f} accuracy points (allowed {100 * rep.allowed:.2f})"
    else:
        what = f"int8 raises the test {rep.metric} by {rep.delta:.5f} (allowed {rep.allowed:.5f})"
    raise VerificationError(f"{what}: {rep.summary()}")


def time_per_step(sess, contract: Contract, steps: int = 300, repeats: int = 3) -> float:
    """Median microseconds per time step at batch 1 (a step graph called per step; a sequence graph per sequence
    of ``steps`` steps, divided)."""
    rng = np.random.default_rng(0)
    xs = rng.random((1, steps, contract.input_size), dtype=np.float32)
    if contract.batch not in (None, 1):
        xs = np.repeat(xs, contract.batch, 0)
    ort_chain(sess, xs[:, :10], keep_all=False)  # warm-up: first runs allocate
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        ort_chain(sess, xs, keep_all=False)
        times.append((time.perf_counter() - t0) / steps * 1e6)
    return float(np.median(times))
