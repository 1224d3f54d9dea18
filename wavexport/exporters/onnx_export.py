"""Build the ONNX graphs: one recurrence step traced from ``model.step``, and a sequence graph that is that very
step graph as the body of a single ``Scan`` over time.

Why two torch exporters: the dynamo exporter (torch's maintained path) emits opset 18 and up natively; asked for
17 it converts down and leaves ``Split(num_outputs)`` (an opset-18 attribute) in the LSTM/GRU graphs, which the
checker rejects. So 13-17 come from the TorchScript exporter, which emits them natively. Both trace the same
``model.step`` (the wRNN's circular padding is a Slice+Concat in the model code, so no ``Pad(mode=wrap)`` is
needed), and every export is read back and checked for the opset asked for.

Why the Scan is built here rather than traced: torch's scan export cannot emit opsets below 18, while a Scan written
with ``onnx.helper`` around the verified step graph works at every opset from 13, keeps the time axis symbolic by
construction, and runs exactly the step computation (never an unrolled loop).
"""
from __future__ import annotations

import contextlib
import io
import logging
import warnings

import onnx
import torch
from onnx import TensorProto, helper
from torch import nn

from ..core.contract import (BATCH_DIM, NEXT_SUFFIX, SEQ_INPUT, SEQ_OUTPUT, STEP_INPUT, STEP_OUTPUT, TIME_DIM,
                       next_name)
from ..core.errors import ExportError

SUPPORTED_OPSETS = tuple(range(13, 22))
DEFAULT_OPSET = 17       # why: docs/EXPORT.md ("Default opset")
DYNAMO_MIN_OPSET = 18
TRACE_BATCH = 2          # dynamic-batch graphs are traced at this batch and verified at others
SCAN_BODY_PREFIX = "step/"


def parse_opset(value) -> int:
    try:
        opset = int(value)
    except (TypeError, ValueError):
        raise ExportError(f"--opset must be an integer from {SUPPORTED_OPSETS[0]} to {SUPPORTED_OPSETS[-1]}, "
                          f"got {value!r}") from None
    if opset not in SUPPORTED_OPSETS:
        raise ExportError(f"opset {opset} is not supported: choose {SUPPORTED_OPSETS[0]} to {SUPPORTED_OPSETS[-1]} "
                          f"(default {DEFAULT_OPSET})")
    return opset


def parse_batch(value) -> int | None:
    """``dynamic`` -> None; a positive integer -> that fixed batch size."""
    if value is None or str(value).strip().lower() == "dynamic":
        return None
    try:
        b = int(value)
    except (TypeError, ValueError):
        b = 0
    if b < 1:
        raise ExportError(f"--batch must be 'dynamic' or a positive integer, got {value!r}")
    return b


class StepModule(nn.Module):
    """``model.step`` with flat tensors in and out, the signature the step graph has: (x, *state) -> (y, *next)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, *state):
        y, nxt = self.model.step(x, tuple(state))
        return (y, *nxt)


def check_step_contract(model) -> None:
    """The contract needs a ``step`` that keeps every state tensor's shape and returns [batch, n_out]: a model
    without one, or one whose state grows, has no fixed-size step graph and no Scan carry."""
    batch = TRACE_BATCH
    try:
        state = model.initial_state(batch, device="cpu")
        with torch.no_grad():
            y, nxt = model.step(torch.zeros(batch, model.n_in), state)
    except NotImplementedError:
        raise ExportError(f"{type(model).__name__} has no step(): it cannot be exported as a recurrence") from None
    names = list(model.state_names)
    if not isinstance(nxt, tuple) or len(nxt) != len(names):
        raise ExportError(f"{type(model).__name__}.step must return a state tuple of {len(names)} tensors "
                          f"({', '.join(names)})")
    for n, s0, s1 in zip(names, state, nxt):
        if tuple(s1.shape) != tuple(s0.shape):
            raise ExportError(f"{type(model).__name__} cannot be expressed as a fixed-state recurrence: state "
                              f"{n!r} changes shape from {list(s0.shape)} to {list(s1.shape)} in one step")
    if tuple(y.shape) != (batch, model.n_out):
        raise ExportError(f"{type(model).__name__}.step returns y of shape {list(y.shape)}, expected "
                          f"[batch, {model.n_out}]")


@contextlib.contextmanager
def _quiet_exporter():
    """The exporters warn about things that are expected here (deprecation, missing torchvision, opset 18
    conversion); the verification afterwards is what decides whether an export is good."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch._dynamo", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, lv in zip(loggers, levels):
                lg.setLevel(lv)


def _onnx_opset(model: onnx.ModelProto) -> int | None:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return o.version
    return None


def export_step_graph(model, opset: int, batch: int | None = None) -> onnx.ModelProto:
    """Trace ``model.step`` to the step graph: x [batch, n_in], *state -> y [batch, n_out], *next state.

    ``batch`` None gives a dynamic batch axis named ``batch``; an integer fixes it.
    """
    check_step_contract(model)
    model = model.eval().cpu()
    names = list(model.state_names)
    in_names = [STEP_INPUT, *names]
    out_names = [STEP_OUTPUT, *[next_name(n) for n in names]]
    b = batch or TRACE_BATCH
    args = (torch.zeros(b, model.n_in), *model.initial_state(b, device="cpu"))
    wrapper = StepModule(model).eval()
    try:
        with _quiet_exporter(), torch.no_grad():
            if opset >= DYNAMO_MIN_OPSET:
                torch._dynamo.reset()  # a previous export's specialisations must not leak into this one
                dyn = None
                if batch is None:
                    d = torch.export.Dim(BATCH_DIM, min=1)
                    dyn = ({0: d}, tuple({0: d} for _ in names))
                prog = torch.onnx.export(wrapper, args, input_names=in_names, output_names=out_names,
                                         opset_version=opset, dynamo=True, dynamic_shapes=dyn, verbose=False)
                proto = prog.model_proto
            else:
                buf = io.BytesIO()
                axes = None if batch is not None else {n: {0: BATCH_DIM} for n in in_names + out_names}
                torch.onnx.export(wrapper, args, buf, input_names=in_names, output_names=out_names,
                                  opset_version=opset, dynamo=False, dynamic_axes=axes, do_constant_folding=True)
                proto = onnx.load_from_string(buf.getvalue())
    except ExportError:
        raise
    except Exception as e:  # noqa: BLE001 - the exporters raise many kinds; say which model and opset failed
        raise ExportError(f"torch could not export {type(model).__name__}.step at opset {opset}: "
                          f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}") from None
    got = _onnx_opset(proto)
    if got != opset:
        raise ExportError(f"asked for opset {opset}, the exporter produced opset {got}")
    _normalise_io(proto, in_names, out_names, batch)
    return proto


def _normalise_io(proto: onnx.ModelProto, in_names, out_names, batch) -> None:
    """Exact I/O names, float32, the batch axis named ``batch`` (or fixed); internal shape hints dropped, since
    exporter-specific symbol names in them mean nothing to a caller and runtimes infer them again."""
    g = proto.graph
    got_in = [i.name for i in g.input if i.name not in {t.name for t in g.initializer}]
    got_out = [o.name for o in g.output]
    if got_in != list(in_names) or got_out != list(out_names):
        raise ExportError(f"exported graph has inputs {got_in} and outputs {got_out}, expected {list(in_names)} "
                          f"and {list(out_names)}")
    inputs = {v.name: v for v in g.input}
    for v in g.output:  # the legacy exporter may leave symbolic sizes on the next state: it has its input's shape
        src = inputs.get(v.name[: -len(NEXT_SUFFIX)]) if v.name.endswith(NEXT_SUFFIX) else None
        if src is not None:
            v.type.tensor_type.shape.CopyFrom(src.type.tensor_type.shape)
    for v in [*g.input, *g.output]:
        t = v.type.tensor_type
        if t.elem_type != TensorProto.FLOAT:
            raise ExportError(f"exported tensor {v.name!r} is not float32")
        d0 = t.shape.dim[0]
        if batch is None:
            d0.Clear()
            d0.dim_param = BATCH_DIM
        elif d0.dim_value != batch:
            raise ExportError(f"exported tensor {v.name!r} has batch dim {d0}, expected {batch}")
    del g.value_info[:]


def _shape(v: onnx.ValueInfoProto) -> list:
    return [d.dim_param if d.dim_param else d.dim_value for d in v.type.tensor_type.shape.dim]


def _vi(name: str, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def sequence_from_step(step: onnx.ModelProto, state_names) -> onnx.ModelProto:
    """Wrap a step graph in one ``Scan`` over axis 1 of ``xs`` [batch, T, n_in] -> ``ys`` [batch, T, n_out].

    The body is the step graph with its values renamed under ``step/`` (subgraph names may not shadow the outer
    graph's); weights stay initializers of the outer graph and the body reads them from the outer scope.
    """
    g = step.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in g.node for a in n.attribute):
        raise ExportError("the step graph already contains control flow; it cannot be nested in a Scan")
    weights = {t.name for t in g.initializer}

    def rn(name: str) -> str:
        return name if (not name or name in weights) else SCAN_BODY_PREFIX + name

    nodes = []
    for i, n in enumerate(g.node):
        m = onnx.NodeProto()
        m.CopyFrom(n)
        m.input[:] = [rn(v) for v in n.input]
        m.output[:] = [rn(v) for v in n.output]
        m.name = f"{SCAN_BODY_PREFIX}{n.name or n.op_type + str(i)}"
        nodes.append(m)
    ins = {v.name: v for v in g.input}
    outs = {v.name: v for v in g.output}
    names = list(state_names)
    body = helper.make_graph(
        nodes, "step",
        inputs=[_vi(rn(n), _shape(ins[n])) for n in names] + [_vi(rn(STEP_INPUT), _shape(ins[STEP_INPUT]))],
        outputs=[_vi(rn(next_name(n)), _shape(outs[next_name(n)])) for n in names]
        + [_vi(rn(STEP_OUTPUT), _shape(outs[STEP_OUTPUT]))])
    x_shape, y_shape = _shape(ins[STEP_INPUT]), _shape(outs[STEP_OUTPUT])
    scan = helper.make_node(
        "Scan", inputs=[*names, SEQ_INPUT], outputs=[*[next_name(n) for n in names], SEQ_OUTPUT],
        name="scan_over_time", body=body, num_scan_inputs=1, scan_input_axes=[1], scan_output_axes=[1])
    graph = helper.make_graph(
        [scan], "wavexport_sequence",
        inputs=[_vi(SEQ_INPUT, [x_shape[0], TIME_DIM, *x_shape[1:]])] + [_vi(n, _shape(ins[n])) for n in names],
        outputs=[_vi(SEQ_OUTPUT, [y_shape[0], TIME_DIM, *y_shape[1:]])]
        + [_vi(next_name(n), _shape(outs[next_name(n)])) for n in names],
        initializer=list(g.initializer))
    model = helper.make_model(graph, opset_imports=list(step.opset_import), ir_version=step.ir_version)
    model.functions.extend(step.functions)
    return model


def count_scan_nodes(model: onnx.ModelProto) -> dict[str, int]:
    """Op counts of the top-level graph: a sequence graph must be one Scan (or Loop), never an unrolled chain."""
    counts: dict[str, int] = {}
    for n in model.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts
