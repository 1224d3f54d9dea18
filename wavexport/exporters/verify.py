"""Checks an exported file before it is published: ONNX checker (full), I/O against the contract, and ONNX Runtime
against the PyTorch model over a chain of steps as long as the task's sequence, at batch sizes other than the
traced one. A step export is run step by step with its state fed back, so the error of the state it hands on is
what is measured, not one step from a clean state.

Parity passes on either of two criteria, per quantity (every step's output; the final state):

* **absolute**: max |ORT - torch| <= ``tolerance`` (1e-4 unless ``--tolerance``). Checked first; most models pass.
* **float32-limited**, tried only for a quantity that misses the absolute bound: against a float64 run of the same
  model on the same inputs (the exact result of the float32 weights), ONNX Runtime's max error is at most
  ``FP64_RATIO`` (2) times PyTorch float32's own, and PyTorch's own is at most ``FP64_REL`` (1e-3) x max(1, max
  |value|). The first says the graph is as exact as the reference implementation; the second that float32 still
  follows the model at all (a chaotic or diverging float32 run proves nothing, and fails). An absolute bound cannot
  be met in float32 once activations are large: float32 resolves ~6e-8 of a value, i.e. 6e-5 at 1e3.
  PyTorch's own error is counted as at least ``FP64_FLOOR`` (8 float32 eps) x max(1, max |value|): when both
  runtimes are a few ulps off, which one's max lands an ulp or two higher is chance (measured on tiny wRNNs/iRNNs
  with large activations: ORT/own up to 3.3 and 9.8, while ORT stayed within 8.7 eps x max |value|).

PyTorch's own error is the larger of its batched run and its run of each sequence alone: it picks different float32
kernels for one sequence and for several, whose results differ by as much as ONNX Runtime's do (measured on the
psMNIST 16x256 model: ONNX Runtime's state is bit-identical to PyTorch's one-sequence run, 1e-4 off its batch-3
run), and both are PyTorch's own float32 rounding.
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
FP64_RATIO = 2.0           # float32-limited: ORT's error vs float64 <= this x PyTorch float32's own error ...
FP64_REL = 1e-3            # ... and PyTorch's own error <= this x max(1, max |value|) (float32 still follows the model)
FP64_FLOOR = 8 * float(np.finfo(np.float32).eps)  # ... PyTorch's own error counted as at least this x max(1, |value|)
CHANCE_RATIO = 10.0        # a failed ratio below this may be a sensitive model's chance; the message says so
CRITERION_ABSOLUTE = "absolute"
CRITERION_FP32_LIMITED = "float32-limited"
QUANTITIES = ("outputs", "final state")
PARITY_BATCHES = (1, 3)    # dynamic-batch exports are traced at TRACE_BATCH and run at these
PARITY_SEED = 1234


@dataclass
class Float64Check:
    """One quantity (every step's output, or the final state) of one batch against a float64 run of the model."""
    onnxruntime: float      # max |ORT - float64|
    pytorch: float          # max |PyTorch float32 - float64|: the larger of its batched and one-sequence runs
    values: float           # max |float64 value|

    @property
    def own_bound(self) -> float:
        """The most PyTorch float32 may be off for it to count as following the model at all."""
        return FP64_REL * max(1.0, self.values)

    @property
    def allowed(self) -> float:
        """The most ONNX Runtime may be off: FP64_RATIO x PyTorch's own error, that counted as at least a few
        float32 ulps of the values (below that, which runtime's max lands an ulp higher is chance)."""
        return FP64_RATIO * max(self.pytorch, FP64_FLOOR * max(1.0, self.values))

    @property
    def ok(self) -> bool:
        """float32-limited: ORT as exact as PyTorch (within FP64_RATIO x), and PyTorch itself still close."""
        return self.pytorch <= self.own_bound and self.onnxruntime <= self.allowed

    def why_not(self, name: str) -> str:
        if not self.pytorch <= self.own_bound:
            return (f"on the {name}, PyTorch float32 itself is off by more than {FP64_REL:.0e} x max(1, |value|) "
                    f"= {self.own_bound:.2e}: float32 does not follow this model over the chain (diverging or "
                    "chaotic dynamics), so agreeing with it proves nothing; accept it explicitly with --tolerance, "
                    "or skip checks with --no-verify")
        own = self.allowed / FP64_RATIO
        times = self.onnxruntime / own
        return (f"on the {name}, ONNX Runtime is off by {self.onnxruntime:.2e}, {times:.2g}x PyTorch float32's own "
                f"error of {self.pytorch:.2e}" + (f" (counted as {own:.2e}, float32's resolution)"
                                                   if own > self.pytorch else "")
                + f", where at most {FP64_RATIO:g}x is allowed: the graph computes something other than the model"
                + (", or the model amplifies float32 rounding so much that two float32 runs differ by chance"
                   if times < CHANCE_RATIO else ""))

    def as_dict(self) -> dict:
        return {"onnxruntime": self.onnxruntime, "pytorch": self.pytorch, "values": self.values,
                "allowed": self.allowed, "pytorch_bound": self.own_bound, "ok": self.ok}

    def merge(self, other: "Float64Check | None") -> "Float64Check":
        if other is None:
            return self
        return Float64Check(max(self.onnxruntime, other.onnxruntime), max(self.pytorch, other.pytorch),
                            max(self.values, other.values))


@dataclass
class ParityReport:
    steps: int
    batches: tuple[int, ...]
    max_err_y: float = 0.0          # max |ORT - torch| over every step's output, every batch
    max_err_state: float = 0.0      # max |ORT - torch| of the final state
    worst: str = ""                 # where max_err_y was found
    tolerance: float = TOL_FP32
    per_batch: dict = field(default_factory=dict)
    diagnosis: str = ""             # on failure: how far float32 PyTorch itself is from float64, and why it failed
    # Against float64, for each quantity ("outputs", "final state") that missed the tolerance at some batch: the
    # max over those batches (the verdict itself is taken per batch, in per_batch[b]["float64"]).
    float64: dict = field(default_factory=dict)
    limited_ok: bool = True         # every quantity that missed the tolerance passed the float32-limited criterion
    strict: bool = False            # a tolerance the user chose: the absolute bound alone decides

    @property
    def within_tolerance(self) -> bool:
        return self.max_err_y <= self.tolerance and self.max_err_state <= self.tolerance

    @property
    def ok(self) -> bool:
        return self.within_tolerance or (not self.strict and self.limited_ok and bool(self.float64))

    @property
    def criterion(self) -> str:
        """Which criterion passed: ``absolute`` or ``float32-limited``; "" when the check failed."""
        if self.within_tolerance:
            return CRITERION_ABSOLUTE
        return CRITERION_FP32_LIMITED if self.ok else ""

    def summary(self) -> str:
        s = (f"ONNX Runtime vs PyTorch over {self.steps} chained steps at batch "
             f"{', '.join(map(str, self.batches))}: max |error| outputs {self.max_err_y:.2e}, final state "
             f"{self.max_err_state:.2e} (tolerance {self.tolerance:.0e})")
        if not self.ok:
            s += f" FAILED {self.worst}" + (f"; {self.diagnosis}" if self.diagnosis else "")
            if self.strict and self.limited_ok and self.float64:
                s += ("; a --tolerance given is absolute (left at its default, this graph would pass as "
                      f"{CRITERION_FP32_LIMITED}: ONNX Runtime is as exact as PyTorch float32 against float64)")
        elif self.criterion == CRITERION_FP32_LIMITED:
            figs = "; ".join(f"{name}: ONNX Runtime off by {c.onnxruntime:.2e} (at most {c.allowed:.2e} allowed), "
                             f"PyTorch float32 by {c.pytorch:.2e} (values up to {c.values:.2e})"
                             for name, c in self.float64.items())
            s += (f"; passed as {CRITERION_FP32_LIMITED}: vs a float64 run, {figs}; allowed: {FP64_RATIO:g}x "
                  f"PyTorch float32's own error (at least {FP64_FLOOR / np.finfo(np.float32).eps:g} float32 eps x "
                  f"max(1, |value|)), which must be within {FP64_REL:.0e} x max(1, |value|)")
        return s

    def as_dict(self) -> dict:
        """Every figure, for programs (JSON-serialisable)."""
        return {"criterion": self.criterion, "ok": self.ok, "steps": self.steps, "batches": list(self.batches),
                "tolerance": self.tolerance, "max_err_outputs": self.max_err_y, "max_err_final_state":
                self.max_err_state, "float64": {k: v.as_dict() for k, v in self.float64.items()},
                "float64_ratio": FP64_RATIO, "float64_rel": FP64_REL, "float64_floor": FP64_FLOOR}


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
    """|got - ref| in float64, infinite wherever either is not finite (NaN would slip through ``max``)."""
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(got.astype(np.float64) - ref)
    return np.where(np.isfinite(got) & np.isfinite(ref), err, np.inf)


def ort_chain(sess: StreamingSession, xs: np.ndarray, keep_all: bool = True):
    """Run an exported model over ``xs`` [B, T, n_in] from its initial state (a step graph step by step with the
    state fed back, a sequence graph in one call). Returns (ys [B, T or 1, n_out], final state tuple)."""
    sess.reset(xs.shape[0])
    ys = sess.feed(np.ascontiguousarray(xs, dtype=np.float32))
    state = sess.state
    return (ys if keep_all else ys[:, -1:]), tuple(state[n] for n in sess.state_names)


def parity(sess, model, task, contract: Contract, batches=None, tolerance: float | None = None) -> ParityReport:
    """Max |ORT - torch| over every step's output and the final state, for each batch size, over the full
    task-length sequence; a quantity over the default tolerance is then judged against float64 (the module
    docstring). A ``tolerance`` given explicitly is strict: the absolute bound alone decides (the float64
    figures still explain a failure)."""
    if batches is None:
        batches = (contract.batch,) if contract.batch is not None else PARITY_BATCHES
    strict = tolerance is not None
    tolerance = TOL_FP32 if tolerance is None else tolerance
    rep = ParityReport(steps=task.seq_len, batches=tuple(batches), tolerance=tolerance, strict=strict)
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
        over = [name for name, e in zip(QUANTITIES, (e_y, e_s)) if not e <= tolerance]
        if not over:
            continue
        checks = float64_checks(model, xs, ref_y, ref_s, got_y, got_s)
        rep.per_batch[b]["float64"] = {name: checks[name].as_dict() for name in over}
        for name in over:
            rep.float64[name] = checks[name].merge(rep.float64.get(name))
        failed = [name for name in over if not checks[name].ok]
        if failed and rep.limited_ok:
            rep.limited_ok = False
            rep.diagnosis = _diagnose(checks, failed[0])
    return rep


def _own_runs(model, xs, ref_y, ref_s):
    """PyTorch float32's runs of ``xs``: the batched one, and (for several sequences) each sequence alone."""
    runs = [(ref_y, ref_s)]
    if xs.shape[0] > 1:
        one = [torch_chain(model, xs[i:i + 1]) for i in range(xs.shape[0])]
        runs.append((np.concatenate([y for y, _ in one]),
                     tuple(np.concatenate(parts) for parts in zip(*(s for _, s in one)))))
    return runs


def float64_checks(model, xs, ref_y, ref_s, got_y, got_s) -> dict:
    """Both runtimes against a float64 PyTorch run of the same model (its float32 weights, exactly) on the same
    inputs, per quantity: {"outputs": Float64Check, "final state": Float64Check}."""
    m64 = copy.deepcopy(model).double()
    y64, s64 = torch_chain(m64, xs.double())
    runs = _own_runs(model, xs, ref_y, ref_s)

    def state_check(i: int) -> Float64Check:
        e = s64[i]
        return Float64Check(float(_abs_err(got_s[i], e).max()), max(float(_abs_err(s[i], e).max()) for _, s in runs),
                            float(np.abs(e).max()))

    # Each state tensor on its own scale (an LSTM's bounded h is not allowed the error of its growing c); the
    # final state's verdict is that of the tensor closest to failing.
    states = [state_check(i) for i in range(len(s64))]
    worst = max(states, key=lambda c: max(c.onnxruntime / c.allowed, c.pytorch / c.own_bound))
    return {
        "outputs": Float64Check(float(_abs_err(got_y, y64).max()),
                                max(float(_abs_err(y, y64).max()) for y, _ in runs), float(np.abs(y64).max())),
        "final state": worst,
    }


def _diagnose(checks: dict, failed: str) -> str:
    """Why the float32-limited criterion did not pass: both runtimes' distance from float64, and the reason."""
    own = max(c.pytorch for c in checks.values())
    ort = max(c.onnxruntime for c in checks.values())
    mag = max(c.values for c in checks.values())
    return (f"vs a float64 run, PyTorch float32 is off by {own:.2e} and ONNX Runtime by {ort:.2e} "
            f"(values up to {mag:.2e}): " + checks[failed].why_not(failed))


def verify_fp32(path, model, task, contract: Contract, tolerance: float | None = None) -> ParityReport:
    """All fp32 checks on a written file; raises :class:`VerificationError` with the max error on failure."""
    check_file(path)
    proto = onnx.load(os.fspath(path))
    check_io(proto, contract)
    rep = parity(session(path), model, task, contract, tolerance=tolerance)
    if not rep.ok:
        raise VerificationError("parity check failed: " + rep.summary())
    return rep


__all__ = ["TOL_FP32", "FP64_RATIO", "FP64_REL", "FP64_FLOOR", "CRITERION_ABSOLUTE", "CRITERION_FP32_LIMITED",
           "PARITY_BATCHES", "TRACE_BATCH", "Float64Check", "ParityReport", "float64_checks", "session", "check_file",
           "check_io", "parity_inputs", "torch_chain", "ort_chain", "parity", "verify_fp32"]
