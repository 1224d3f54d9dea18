"""Checks an exported file before it is published: ONNX checker (full), I/O against the contract, and ONNX Runtime
against the PyTorch model over a chain of steps as long as the task's sequence, at batch sizes other than the
traced one. A step export is run step by step with its state fed back, so the error of the state it hands on is
what is measured, not one step from a clean state.
"""
from __future__ import annotations

import contextlib
import copy
import os
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch

from ..core.contract import TIME_DIM, Contract
from ..core.errors import VerificationError
from ..runtime.session import StreamingSession
from .onnx_export import TRACE_BATCH, count_scan_nodes

TOL_FP32 = 1e-4            # absolute, on every step's output and on the final state
PARITY_BATCHES = (1, 3)    # dynamic-batch exports are traced at TRACE_BATCH and run at these
PARITY_SEED = 1234


@dataclass
class ParityReport:
    steps: int
    batches: tuple[int, ...]
    max_err_y: float = 0.0          # max |ORT - torch| over every step's output, every batch
    max_err_state: float = 0.0      # max |ORT - torch| of the final state
    worst: str = ""                 # where max_err_y was found
    tolerance: float = TOL_FP32
    per_batch: dict = field(default_factory=dict)
    diagnosis: str = ""             # on failure: how far float32 PyTorch itself is from float64

    @property
    def ok(self) -> bool:
        return self.max_err_y <= self.tolerance and self.max_err_state <= self.tolerance

    def summary(self) -> str:
        s = (f"ONNX Runtime vs PyTorch over {self.steps} chained steps at batch "
             f"{', '.join(map(str, self.batches))}: max |error| outputs {self.max_err_y:.2e}, final state "
             f"{self.max_err_state:.2e} (tolerance {self.tolerance:.0e})")
        if not self.ok:
            s += f" FAILED {self.worst}" + (f"; {self.diagnosis}" if self.diagnosis else "")
        return s


def session(model, threads: int = 1) -> StreamingSession:
    """The streaming runtime's CPU session over a path or a ModelProto: verification runs the exported graph
    exactly as users will, through the one ONNX step loop there is. One thread: predictable on shared cores."""
    return StreamingSession(model, threads=threads)


def check_file(path) -> None:
    """``onnx.checker.check_model(full_check=True)`` on the written file (by path: no 2 GB protobuf limit)."""
    try:
        onnx.checker.check_model(os.fspath(path), full_check=True)
    except Exception as e:  # noqa: BLE001 - ValidationError, InferenceError, ...
        raise VerificationError(f"onnx.checker rejects the export: {str(e).splitlines()[0][:300]}") from None


def check_io(model: onnx.ModelProto, contract: Contract) -> None:
    """Graph inputs/outputs are the contract's names, float32, with the contract's batch (and a symbolic T)."""
    g = model.graph
    weights = {t.name for t in g.initializer}
    ins = [v for v in g.input if v.name not in weights]
    got = ([v.name for v in ins], [v.name for v in g.output])
    if got != (contract.input_names, contract.output_names):
        raise VerificationError(f"graph I/O {got} does not match the contract "
                                f"{(contract.input_names, contract.output_names)}")
    batch = contract.batch
    for v in [*ins, *g.output]:
        t = v.type.tensor_type
        if t.elem_type != onnx.TensorProto.FLOAT:
            raise VerificationError(f"{v.name} is not float32")
        dims = [d.dim_param or d.dim_value for d in t.shape.dim]
        if dims[0] != (batch if batch is not None else "batch"):
            raise VerificationError(f"{v.name} has batch dim {dims[0]!r}, the contract says "
                                    f"{batch if batch is not None else 'batch'!r}")
        if contract.mode == "sequence" and v.name in (contract.input_name, contract.output_name):
            if dims[1] != TIME_DIM:
                raise VerificationError(f"{v.name} has time dim {dims[1]!r}: the sequence graph must keep T "
                                        "symbolic (an unrolled loop silently fixes it)")
    if contract.mode == "sequence":
        ops = count_scan_nodes(model)
        loops = ops.get("Scan", 0) + ops.get("Loop", 0)
        if loops != 1 or len(g.node) != 1:
            raise VerificationError(f"the sequence graph must be exactly one Scan/Loop node, found {ops}")


def parity_inputs(task, batch: int, seed: int = PARITY_SEED) -> torch.Tensor:
    """Inputs [batch, T, n_in] in the task's own range: a synthetic task's samples; for image tasks uniform
    values in [0, 1] (the range of scaled pixels), so no data set is needed to verify."""
    gen = torch.Generator().manual_seed(seed + batch)
    if task.kind == "synthetic":
        return task.sample(batch, gen)[0].float()
    return torch.rand(batch, task.seq_len, task.n_in, generator=gen)


@contextlib.contextmanager
def one_thread():
    """Small per-step ops run fastest on one thread, and several threads spin-wait badly when the cores are
    shared (measured: 784 steps of an 8x64 wRNN, 0.25 s on 1 thread vs 4-9 s on 2 busy cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@torch.no_grad()
def torch_chain(model, xs: torch.Tensor):
    """The reference: ``model.step`` chained over every step. (ys [B, T, n_out], final state tuple)."""
    with one_thread():
        state = model.initial_state(xs.shape[0], device="cpu", dtype=xs.dtype)
        ys = []
        for t in range(xs.shape[1]):
            y, state = model.step(xs[:, t], state)
            ys.append(y)
        return torch.stack(ys, 1).numpy(), tuple(s.numpy() for s in state)


def _abs_err(got: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """|got - ref| in float64, infinite wherever ``got`` is not finite (NaN would slip through ``max``)."""
    err = np.abs(got.astype(np.float64) - ref)
    return np.where(np.isfinite(got), err, np.inf)


def ort_chain(sess: StreamingSession, xs: np.ndarray, keep_all: bool = True):
    """Run an exported model over ``xs`` [B, T, n_in] from its initial state (a step graph step by step with the
    state fed back, a sequence graph in one call). Returns (ys [B, T or 1, n_out], final state tuple)."""
    sess.reset(xs.shape[0])
    ys = sess.feed(np.ascontiguousarray(xs, dtype=np.float32))
    state = sess.state
    return (ys if keep_all else ys[:, -1:]), tuple(state[n] for n in sess.state_names)


def parity(sess, model, task, contract: Contract, batches=None, tolerance: float = TOL_FP32) -> ParityReport:
    """Max |ORT - torch| over every step's output and the final state, for each batch size, over the full
    task-length sequence."""
    if batches is None:
        batches = (contract.batch,) if contract.batch is not None else PARITY_BATCHES
    rep = ParityReport(steps=task.seq_len, batches=tuple(batches), tolerance=tolerance)
    for b in batches:
        xs = parity_inputs(task, b)
        ref_y, ref_s = torch_chain(model, xs)
        got_y, got_s = ort_chain(sess, xs.numpy())
        if got_y.shape != ref_y.shape:
            raise VerificationError(f"ONNX outputs have shape {got_y.shape}, PyTorch {ref_y.shape}")
        err = _abs_err(got_y, ref_y)
        e_y = float(err.max())
        e_s = max(float(_abs_err(g, r).max()) for g, r in zip(got_s, ref_s))
        if e_y > rep.max_err_y:
            t = int(np.unravel_index(np.argmax(err), err.shape)[1])
            rep.worst = f"(first worst at step {t + 1} of {task.seq_len}, batch {b})"
        rep.max_err_y = max(rep.max_err_y, e_y)
        rep.max_err_state = max(rep.max_err_state, e_s)
        rep.per_batch[b] = {"max_err_y": e_y, "max_err_state": e_s}
        if (e_y > tolerance or e_s > tolerance) and not rep.diagnosis:
            rep.diagnosis = _diagnose(model, xs, ref_y, ref_s, got_y, got_s, tolerance)
    return rep


def _diagnose(model, xs, ref_y, ref_s, got_y, got_s, tolerance) -> str:
    """Tell a wrong graph from a model that float32 cannot run to ``tolerance``: compare both runtimes with a
    float64 PyTorch run. If PyTorch's own float32 error is as large, the graph is faithful and the activations
    are simply too large (or the dynamics too sensitive) for an absolute bound in float32."""
    m64 = copy.deepcopy(model).double()
    y64, s64 = torch_chain(m64, xs.double())
    own = max(float(np.abs(ref_y - y64).max()), *(float(np.abs(r - e).max()) for r, e in zip(ref_s, s64)))
    ort = max(float(np.abs(got_y - y64).max()), *(float(np.abs(g - e).max()) for g, e in zip(got_s, s64)))
    mag = max(float(np.abs(y64).max()), *(float(np.abs(e).max()) for e in s64))
    msg = (f"vs a float64 run, PyTorch float32 is off by {own:.2e} and ONNX Runtime by {ort:.2e} "
           f"(values up to {mag:.2e})")
    if own > tolerance and ort <= 4 * own:
        msg += (": the graph is as exact as PyTorch itself, but this model's float32 rounding exceeds the "
                "tolerance; accept it explicitly with --tolerance, or skip checks with --no-verify")
    return msg


def verify_fp32(path, model, task, contract: Contract, tolerance: float = TOL_FP32) -> ParityReport:
    """All fp32 checks on a written file; raises :class:`VerificationError` with the max error on failure."""
    check_file(path)
    proto = onnx.load(os.fspath(path))
    check_io(proto, contract)
    rep = parity(session(path), model, task, contract, tolerance=tolerance)
    if not rep.ok:
        raise VerificationError("parity check failed: " + rep.summary())
    return rep


__all__ = ["TOL_FP32", "PARITY_BATCHES", "TRACE_BATCH", "ParityReport", "session", "check_file", "check_io",
           "parity_inputs", "torch_chain", "ort_chain", "parity", "verify_fp32"]
