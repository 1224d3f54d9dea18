"""Stream inputs one timestep at a time through an exported model (ONNX Runtime) or a checkpoint (PyTorch).

:class:`StreamingSession` and :class:`TorchStreamer` have the same interface, so one can replace the other (and the
tests hold them to the same outputs): ``reset(batch_size)``, ``step(x_t) -> y_t`` with the state carried inside,
``feed(xs) -> ys`` for a chunk of steps, and a readable, settable ``state``.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from ..core.errors import ContractError, InputError, StreamError
from ..core.io import check_onnx_file
from ..core.contract import (BATCH_DIM, K_INPUT_SIZE, K_OUTPUT_SIZE, K_STATE_NAMES, K_STATE_SHAPES, Contract,
                             read_contract)


class _Streamer:
    """Input checks and bookkeeping shared by the ONNX and the torch streamers."""

    contract: Contract

    def __init__(self):
        self.batch_size = 0
        self.steps = 0  # timesteps fed since the last reset

    # --- what subclasses provide --------------------------------------------------------------------------------
    def _zero_state(self, batch: int) -> None:
        raise NotImplementedError

    def _step(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _feed(self, xs: np.ndarray) -> np.ndarray:
        return np.stack([self._step(np.ascontiguousarray(xs[:, t])) for t in range(xs.shape[1])], 1)

    def _get_state(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _set_state(self, arrays: list[np.ndarray]) -> None:
        raise NotImplementedError

    # --- the interface ------------------------------------------------------------------------------------------
    @property
    def n_in(self) -> int:
        return self.contract.input_size

    @property
    def n_out(self) -> int:
        return self.contract.output_size

    @property
    def state_names(self) -> list[str]:
        return list(self.contract.state_names)

    def reset(self, batch_size: int = 1) -> None:
        """Zero state for ``batch_size`` independent streams."""
        fixed = self.contract.batch
        if batch_size < 1:
            raise StreamError(f"batch_size must be >= 1, got {batch_size}")
        if fixed is not None and batch_size != fixed:
            raise StreamError(f"this model was exported with a fixed batch of {fixed}; reset({fixed})")
        self.batch_size = batch_size
        self.steps = 0
        self._zero_state(batch_size)

    def step(self, x_t) -> np.ndarray:
        """One timestep. ``x_t``: [batch, n_in] float (or [n_in] when the batch is 1) -> ``y_t`` of the same rank."""
        x = self._check(x_t, 2, "x_t")
        y = self._step(x if x.ndim == 2 else x[None])
        self.steps += 1
        return y if x.ndim == 2 else y[0]

    def feed(self, xs) -> np.ndarray:
        """A chunk of timesteps: [batch, T, n_in] (or [T, n_in] when the batch is 1) -> ys of the same rank."""
        x = self._check(xs, 3, "xs")
        x3 = x if x.ndim == 3 else x[None]
        if x3.shape[1] == 0:
            return np.zeros((*x.shape[:-1], self.n_out), np.float32)
        ys = self._feed(x3)
        self.steps += x3.shape[1]
        return ys if x.ndim == 3 else ys[0]

    @property
    def state(self) -> dict[str, np.ndarray]:
        """A copy of the current state, by name (``h``; the LSTM also ``c``)."""
        return self._get_state()

    @state.setter
    def state(self, value) -> None:
        arrays = [value[n] for n in self.state_names] if isinstance(value, dict) else list(value)
        if len(arrays) != len(self.state_names):
            raise StreamError(f"state needs {len(self.state_names)} tensors ({', '.join(self.state_names)})")
        out = []
        for name, a in zip(self.state_names, arrays):
            a = np.asarray(a.detach().cpu() if hasattr(a, "detach") else a)
            shape = self.contract.state_shapes[name][1:]
            if a.ndim != len(shape) + 1 or list(a.shape[1:]) != list(shape):
                raise StreamError(f"state {name!r} must be [batch, {', '.join(map(str, shape))}], got {list(a.shape)}")
            if not np.issubdtype(a.dtype, np.floating):
                raise StreamError(f"state {name!r} must be floating point, got {a.dtype}")
            out.append(np.ascontiguousarray(a, dtype=np.float32))
        if len({a.shape[0] for a in out}) != 1:
            raise StreamError("state tensors disagree on the batch size")
        self.reset(out[0].shape[0])
        self._set_state(out)

    # --- checks -------------------------------------------------------------------------------------------------
    def _check(self, value, rank: int, what: str) -> np.ndarray:
        # On the per-step path: plain attribute tests (dtype.kind, shape tuples) cost a fraction of np.issubdtype.
        a = value if type(value) is np.ndarray else np.asarray(value)
        if a.dtype.kind != "f":
            hint = (" (raw pixels: multiply by input.scale, or use Contract.prepare_inputs)"
                    if a.dtype.kind in "iu" else "")
            raise StreamError(f"{what} must be floating point, got dtype {a.dtype}{hint}")
        shape, n_in = a.shape, self.contract.input_size
        if len(shape) not in (rank, rank - 1) or shape[-1] != n_in:
            want = "[batch, n_in]" if rank == 2 else "[batch, T, n_in]"
            raise StreamError(f"{what} has shape {list(shape)}; expected {want} with n_in = {n_in}")
        batch = shape[0] if len(shape) == rank else 1
        if batch != self.batch_size:
            raise StreamError(f"{what} has batch {batch} but the stream holds {self.batch_size}; "
                              f"call reset({batch}) to start new streams")
        if not np.isfinite(a).all():
            raise StreamError(f"{what} contains NaN or infinite values")
        if a.dtype == np.float32 and a.flags.c_contiguous:
            return a
        return np.ascontiguousarray(a, dtype=np.float32)


def providers_for(name: str) -> list[str]:
    """ONNX Runtime providers for ``auto`` (CUDA when this onnxruntime has it), ``cpu`` or ``cuda``."""
    import onnxruntime as ort

    have_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if name == "cuda" and not have_cuda:
        raise InputError("--provider cuda: this onnxruntime has no CUDA provider (pip install 'wavexport[gpu]')")
    if name not in ("auto", "cpu", "cuda"):
        raise InputError(f"unknown provider {name!r} (auto, cpu or cuda)")
    if name == "cuda" or (name == "auto" and have_cuda):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def streaming_session_options(threads: int = 1):
    """ONNX Runtime options for one-timestep-at-a-time work.

    One intra-op thread by default: a step is ~0.5 MFLOP, far below what pays for waking a second thread, and a
    service runs many streams side by side. Spinning off: a streamer waits on its producer between steps, and
    spinning threads would burn a core while it waits. Sequential execution; all graph optimisations.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3
    return so


class StreamingSession(_Streamer):
    """An exported wavexport model (step or sequence graph) in ONNX Runtime, fed one timestep at a time.

    The state never leaves the session's device between steps: two IOBindings over the same pair of state
    buffers (A -> B and B -> A) are built once per ``reset`` and used alternately, so a step binds nothing and
    allocates nothing; on the CUDA provider the buffers live on the GPU and only x and y cross to the host.
    """

    def __init__(self, model, providers: Sequence | None = None, threads: int = 1):
        """``model``: a path, or an in-memory ``onnx.ModelProto`` (the exporter checks graphs before writing them)."""
        super().__init__()
        import onnxruntime as ort

        if isinstance(model, (str, os.PathLike)):
            self.path = source = os.fspath(model)
            check_onnx_file(self.path, StreamError)  # missing, a directory, a checkpoint: each said as such
        else:
            self.path, source = "<in-memory model>", model.SerializeToString()
        self._ort = ort
        try:
            self.session = ort.InferenceSession(source, streaming_session_options(threads),
                                                providers=list(providers or ["CPUExecutionProvider"]))
        except Exception as e:  # noqa: BLE001 - ORT raises its own exception types for bad graphs/providers
            read_contract(model)  # a file that is not ONNX, or not ours, is reported as such
            raise StreamError(f"{self.path}: ONNX Runtime cannot load it ({str(e)[:200]})") from None
        # The contract from ORT's own copy of the metadata: the file is read once, and onnx is not needed here.
        try:
            self.contract = Contract.from_metadata(self.session.get_modelmeta().custom_metadata_map)
        except ContractError as e:
            raise ContractError(f"{self.path}: {e}") from None
        self._check_graph()
        cuda = self.session.get_providers()[0] == "CUDAExecutionProvider"
        self.device = ("cuda", 0) if cuda else ("cpu", 0)
        self.sequence = self.contract.mode == "sequence"
        self.reset(self.contract.batch or 1)

    def _check_graph(self) -> None:
        """The metadata must describe the graph: every tensor it names exists, is float32, and has the rank and
        the sizes it gives (input.size, output.size, state.shapes). An edited or mismatched file is a ContractError
        here, when it is opened, not an ONNX Runtime error at the first step."""
        c = self.contract
        ins = {i.name: i for i in self.session.get_inputs()}
        outs = {o.name: o for o in self.session.get_outputs()}
        missing = [n for n in c.input_names if n not in ins] + [n for n in c.output_names if n not in outs]
        if missing:
            raise ContractError(f"{self.path}: the graph lacks the tensors its metadata names "
                                f"({K_STATE_NAMES} and the format): {', '.join(missing)}")
        batch = BATCH_DIM if c.batch is None else c.batch
        lead = [batch] if c.mode == "step" else [batch, None]  # None: the time axis, any length
        want = {c.input_name: (ins, [*lead, c.input_size], K_INPUT_SIZE),
                c.output_name: (outs, [*lead, c.output_size], K_OUTPUT_SIZE)}
        for n, n_next in zip(c.state_names, c.state_out_names):
            want[n] = (ins, list(c.state_shapes[n]), K_STATE_SHAPES)
            want[n_next] = (outs, list(c.state_shapes[n]), K_STATE_SHAPES)
        for name, (where, shape, key) in want.items():
            arg = where[name]
            got = list(arg.shape or [])
            if arg.type != "tensor(float)":
                raise ContractError(f"{self.path}: tensor {name!r} is {arg.type}, the contract needs float32")
            # sizes must agree where both are numbers; a fixed graph batch needs a fixed batch in the metadata
            bad = len(got) != len(shape) or any(
                isinstance(g, int) and ((isinstance(w, int) and g != w) or (w == BATCH_DIM and i == 0))
                for i, (g, w) in enumerate(zip(got, shape)))
            if bad:
                show = ["T" if w is None else w for w in shape]
                raise ContractError(f"{self.path}: metadata {key} gives {name!r} the shape {show}, but the graph's "
                                    f"is {['?' if g is None else g for g in got]}: the file's metadata was edited "
                                    "or does not belong to this graph")

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def _ortvalue(self, shape, device=None):
        dev, idx = device or self.device
        return self._ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.float32, dev, idx)

    def _zero_state(self, batch: int) -> None:
        c = self.contract
        shapes = {n: [batch, *c.state_shapes[n][1:]] for n in c.state_names}
        zeros = c.initial_state(batch)
        self._bufs = [[self._ortvalue(shapes[n]) for n in c.state_names] for _ in range(2)]
        for v, n in zip(self._bufs[0], c.state_names):
            v.update_inplace(zeros[n])
        self._cur = 0
        if self.sequence:
            return
        # step graph: x and y stay on the host (they come from / go to the caller); the state stays on the device
        self._x = np.zeros((batch, c.input_size), np.float32)
        self._y = np.zeros((batch, c.output_size), np.float32)
        x_ov = self._ort.OrtValue.ortvalue_from_numpy(self._x)
        y_ov = self._ort.OrtValue.ortvalue_from_numpy(self._y)
        self._bindings = []
        for src in (0, 1):
            b = self.session.io_binding()
            b.bind_ortvalue_input(c.input_name, x_ov)
            b.bind_ortvalue_output(c.output_name, y_ov)
            for i, n in enumerate(c.state_names):
                b.bind_ortvalue_input(n, self._bufs[src][i])
                b.bind_ortvalue_output(c.state_out_names[i], self._bufs[1 - src][i])
            self._bindings.append(b)

    def _step(self, x):
        if self.sequence:
            return self._feed(x[:, None])[:, 0]
        np.copyto(self._x, x)
        self.session.run_with_iobinding(self._bindings[self._cur])
        self._cur = 1 - self._cur
        return self._y.copy()

    def _feed(self, xs):
        if not self.sequence:
            return super()._feed(xs)
        c = self.contract
        b = self.session.io_binding()
        b.bind_cpu_input(c.input_name, xs)
        b.bind_output(c.output_name, "cpu")  # first output: ys, copied out below
        for i, n in enumerate(c.state_names):
            b.bind_ortvalue_input(n, self._bufs[self._cur][i])
            b.bind_ortvalue_output(c.state_out_names[i], self._bufs[1 - self._cur][i])
        self.session.run_with_iobinding(b)
        self._cur = 1 - self._cur
        return b.get_outputs()[0].numpy()

    def _get_state(self):
        return {n: v.numpy().copy() for n, v in zip(self.state_names, self._bufs[self._cur])}

    def _set_state(self, arrays):
        for v, a in zip(self._bufs[self._cur], arrays):
            v.update_inplace(a)


class TorchStreamer(_Streamer):
    """The same interface over a checkpoint, computed by the PyTorch model's own ``step``: the reference the ONNX
    session is tested against, and a drop-in where PyTorch is at hand."""

    def __init__(self, checkpoint, device: str = "cpu"):
        super().__init__()
        import torch

        from ..checkpoint import load_checkpoint

        ckpt = load_checkpoint(checkpoint)
        self.model, self.task = ckpt.build()
        self.model.to(device)
        self.contract = Contract.for_model(self.model, self.task, "step", None, model_config=ckpt.model_config)
        self._torch = torch
        self.device = device
        self.reset(1)

    def _zero_state(self, batch):
        self._state = self.model.initial_state(batch, device=self.device)

    def _step(self, x):
        with self._torch.no_grad():
            y, self._state = self.model.step(self._torch.from_numpy(x).to(self.device), self._state)
        return y.cpu().numpy()

    def _feed(self, xs):
        with self._torch.no_grad():
            ys, self._state = self.model(self._torch.from_numpy(xs).to(self.device), self._state)
        return ys.cpu().numpy()

    def _get_state(self):
        return {n: s.cpu().numpy().copy() for n, s in zip(self.state_names, self._state)}

    def _set_state(self, arrays):
        self._state = tuple(self._torch.tensor(a, device=self.device) for a in arrays)  # a copy, never the caller's
