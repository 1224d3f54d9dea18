"""The exported-model contract: tensor names, metadata keys and format strings, defined once.

The exporter writes it, ``wavexport inspect`` prints it, the streaming runtime and external programs read it.
Everything a caller needs to build inputs and the initial state is in the ONNX file's ``metadata_props`` (all
values are strings; structured ones are JSON), so no checkpoint or Python code is needed to run a model.

Step graph (``step/1``):      x [batch, n_in], *state            -> y [batch, n_out], *state_next
Sequence graph (``sequence/1``): xs [batch, T, n_in], *initial state -> ys [batch, T, n_out], *final state
State tensors are named by ``state.names`` (``h``; the LSTM also ``c``); each output is the name + ``_next``.

This module imports neither torch nor onnx at import time: a runtime can use it with onnxruntime alone.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ContractError
from .io import check_onnx_file

# --- formats and tensor names -------------------------------------------------------------------------------------
FORMAT_STEP = "step/1"
FORMAT_SEQUENCE = "sequence/1"
FORMATS = {"step": FORMAT_STEP, "sequence": FORMAT_SEQUENCE}
MODES = {v: k for k, v in FORMATS.items()}

STEP_INPUT, STEP_OUTPUT = "x", "y"
SEQ_INPUT, SEQ_OUTPUT = "xs", "ys"
NEXT_SUFFIX = "_next"
BATCH_DIM = "batch"     # name of the dynamic batch axis, in the graph and in ``state.shapes``
TIME_DIM = "T"          # name of the dynamic time axis of the sequence graph
STATE_INIT_ZEROS = "zeros"
OUTPUT_KINDS = ("logits", "regression")


def next_name(state_name: str) -> str:
    """Output name of the state tensor ``state_name`` after a step (or after the whole sequence)."""
    return state_name + NEXT_SUFFIX


# --- metadata keys ------------------------------------------------------------------------------------------------
K_FORMAT = "wavexport.format"
K_VERSION = "wavexport.version"
K_TASK = "task"
K_ARCH = "arch"
K_MODEL_CONFIG = "model.config"
K_STATE_NAMES = "state.names"
K_STATE_SHAPES = "state.shapes"
K_STATE_INIT = "state.init"
K_INPUT_SIZE = "input.size"
K_OUTPUT_SIZE = "output.size"
K_OUTPUT_KIND = "output.kind"
K_SEQ_LEN = "task.seq_len"
K_TASK_ARGS = "task.args"   # the task's own constructor arguments: any task is rebuilt from the file alone
K_READOUT = "task.readout"
K_PERMUTATION = "input.permutation"
K_SCALE = "input.scale"
K_METRICS = "metrics"
K_SOURCE_SHA256 = "source.sha256"
K_QUANTIZATION = "quantization"

REQUIRED_KEYS = (K_FORMAT, K_VERSION, K_TASK, K_TASK_ARGS, K_ARCH, K_MODEL_CONFIG, K_STATE_NAMES, K_STATE_SHAPES, K_STATE_INIT,
                 K_INPUT_SIZE, K_OUTPUT_SIZE, K_OUTPUT_KIND, K_SEQ_LEN, K_READOUT, K_PERMUTATION, K_SCALE,
                 K_METRICS, K_SOURCE_SHA256)
# Written on every export too, but optional when reading (``none`` if absent).
OPTIONAL_KEYS = (K_QUANTIZATION,)
ALL_KEYS = REQUIRED_KEYS + OPTIONAL_KEYS

QUANT_NONE = "none"


@dataclass
class Contract:
    """The parsed metadata of one exported model, with helpers to build its inputs and initial state."""
    format: str
    version: str
    task: str
    task_args: dict
    arch: str
    model_config: dict
    state_names: list[str]
    state_shapes: dict[str, list]      # name -> [BATCH_DIM or int, *sizes]
    state_init: str
    input_size: int
    output_size: int
    output_kind: str
    seq_len: int
    readout: str
    permutation: list[int] | None
    input_scale: float
    metrics: dict = field(default_factory=dict)
    source_sha256: str = ""
    quantization: str = QUANT_NONE

    # --- names ---------------------------------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return MODES[self.format]

    @property
    def input_name(self) -> str:
        return STEP_INPUT if self.mode == "step" else SEQ_INPUT

    @property
    def output_name(self) -> str:
        return STEP_OUTPUT if self.mode == "step" else SEQ_OUTPUT

    @property
    def state_out_names(self) -> list[str]:
        return [next_name(n) for n in self.state_names]

    @property
    def input_names(self) -> list[str]:
        return [self.input_name, *self.state_names]

    @property
    def output_names(self) -> list[str]:
        return [self.output_name, *self.state_out_names]

    @property
    def batch(self) -> int | None:
        """The fixed batch size, or None when the batch axis is dynamic."""
        first = self.state_shapes[self.state_names[0]][0]
        return None if first == BATCH_DIM else int(first)

    @property
    def readout_steps(self) -> int | None:
        """How many final steps carry the answer: 1 for ``last``, K for ``last:K``, None for ``all``."""
        if self.readout == "last":
            return 1
        if self.readout.startswith("last:"):
            return int(self.readout.split(":", 1)[1])
        return None

    # --- building inputs ----------------------------------------------------------------------------------------
    def initial_state(self, batch: int | None = None) -> dict[str, np.ndarray]:
        """The initial state tensors by input name (float32 zeros), for ``batch`` rows (the fixed batch if None)."""
        if self.state_init != STATE_INIT_ZEROS:
            raise ContractError(f"unknown state.init {self.state_init!r} (this reader knows {STATE_INIT_ZEROS!r})")
        fixed = self.batch
        if batch is None:
            if fixed is None:
                raise ContractError("the batch axis is dynamic: pass the batch size")
            batch = fixed
        elif fixed is not None and batch != fixed:
            raise ContractError(f"this model was exported with a fixed batch of {fixed}, not {batch}")
        return {n: np.zeros([batch, *self.state_shapes[n][1:]], dtype=np.float32) for n in self.state_names}

    def prepare_inputs(self, raw) -> np.ndarray:
        """Raw samples -> model inputs [batch, T, n_in] float32: positions reordered by ``input.permutation``
        (step t reads raw position ``permutation[t]``), then values multiplied by ``input.scale``.

        ``raw`` is [batch, T, n_in], or [batch, T] when n_in is 1 (e.g. MNIST's 784 raster-order pixels, uint8), or
        one sequence [T] when n_in is 1. With a permutation (psMNIST), whose sequences are all seq_len long, any
        array of exactly seq_len values is one sequence read in raster order (a 28x28 image). Returns
        [batch, T, n_in]; one sequence gives batch 1.
        """
        a = np.asarray(raw)
        if self.input_size == 1 and a.ndim < 3 and a.size == self.seq_len and (
                a.ndim == 1 or self.permutation is not None):
            a = a.reshape(1, self.seq_len)  # one sequence: [784]; with a permutation also [28, 28], [784, 1]
        if a.ndim == 2 and self.input_size == 1:
            a = a[..., None]
        if a.ndim != 3 or a.shape[-1] != self.input_size:
            raise ContractError(f"raw input of shape {tuple(a.shape)}: expected [batch, T, {self.input_size}]"
                                + (f", [batch, T] or one sequence of {self.seq_len} values" if self.input_size == 1
                                   else ""))
        if self.permutation is not None:
            if a.shape[1] != len(self.permutation):
                raise ContractError(f"raw input has {a.shape[1]} positions; the permutation has "
                                    f"{len(self.permutation)} (one sequence: {self.seq_len} values; a batch: "
                                    f"[batch, {self.seq_len}])")
            a = a[:, np.asarray(self.permutation, dtype=np.int64)]
        return (a.astype(np.float32) * np.float32(self.input_scale)).astype(np.float32)

    # --- construction -------------------------------------------------------------------------------------------
    @classmethod
    def for_model(cls, model, task, mode: str = "step", batch: int | None = None, metrics: dict | None = None,
                  source_sha256: str = "", quantization: str = QUANT_NONE, model_config: dict | None = None,
                  arch: str | None = None) -> "Contract":
        """The metadata of an export of ``model`` (a ``RecurrentModel``) for ``task`` (a ``Task``): everything needed
        to feed it without Python. Both are duck-typed, so this floor imports neither torch nor the models."""
        from .. import __version__

        if mode not in FORMATS:
            raise ContractError(f"unknown mode {mode!r} (step or sequence)")
        b = BATCH_DIM if batch is None else int(batch)
        cfg = dict(model_config or {})
        return cls(
            format=FORMATS[mode], version=__version__, task=task.name, task_args=dict(task.args()),
            arch=arch or cfg.get("arch", type(model).__name__), model_config=cfg,
            state_names=list(model.state_names),
            state_shapes={n: [b, *model.state_shape()] for n in model.state_names}, state_init=STATE_INIT_ZEROS,
            input_size=int(model.n_in), output_size=int(model.n_out), output_kind=task.output_kind,
            seq_len=int(task.seq_len), readout=task.readout, permutation=task.permutation,
            input_scale=float(task.input_scale), metrics=dict(metrics or {}), source_sha256=source_sha256,
            quantization=quantization)

    # --- (de)serialisation --------------------------------------------------------------------------------------
    def to_metadata(self) -> dict[str, str]:
        """Every key, in the order of ``ALL_KEYS``, as the strings stored in ``metadata_props``."""
        d = {
            K_FORMAT: self.format,
            K_VERSION: self.version,
            K_TASK: self.task,
            K_TASK_ARGS: json.dumps(self.task_args, sort_keys=True),
            K_ARCH: self.arch,
            K_MODEL_CONFIG: json.dumps(self.model_config, sort_keys=True),
            K_STATE_NAMES: json.dumps(list(self.state_names)),
            K_STATE_SHAPES: json.dumps({n: list(self.state_shapes[n]) for n in self.state_names}),
            K_STATE_INIT: self.state_init,
            K_INPUT_SIZE: str(int(self.input_size)),
            K_OUTPUT_SIZE: str(int(self.output_size)),
            K_OUTPUT_KIND: self.output_kind,
            K_SEQ_LEN: str(int(self.seq_len)),
            K_READOUT: self.readout,
            K_PERMUTATION: json.dumps(list(self.permutation)) if self.permutation is not None else "[]",
            K_SCALE: repr(float(self.input_scale)),  # repr round-trips a float exactly
            K_METRICS: json.dumps(self.metrics, sort_keys=True),
            K_SOURCE_SHA256: self.source_sha256,
            K_QUANTIZATION: self.quantization,
        }
        return {k: d[k] for k in ALL_KEYS}

    @classmethod
    def from_metadata(cls, meta: dict[str, str]) -> "Contract":
        """Parse and validate; raises :class:`ContractError` naming the first bad or missing key."""
        missing = [k for k in REQUIRED_KEYS if k not in meta]
        if len(missing) == len(REQUIRED_KEYS):
            raise ContractError("not a wavexport export: it carries none of wavexport's metadata (an ONNX model "
                                "from elsewhere, or one whose metadata was stripped)")
        if missing:
            raise ContractError(f"not a wavexport export: metadata lacks {', '.join(missing)}")

        def js(key, kind):
            try:
                v = json.loads(meta[key])
            except json.JSONDecodeError:
                raise ContractError(f"metadata {key!r} is not valid JSON: {meta[key][:80]!r}") from None
            if not isinstance(v, kind):
                raise ContractError(f"metadata {key!r} should be a JSON {kind.__name__}")
            return v

        def integer(key):
            try:
                return int(meta[key])
            except ValueError:
                raise ContractError(f"metadata {key!r} should be an integer, got {meta[key]!r}") from None

        fmt = meta[K_FORMAT]
        if fmt not in MODES:
            raise ContractError(f"unknown {K_FORMAT} {fmt!r} (this reader knows {', '.join(MODES)})")
        names = js(K_STATE_NAMES, list)
        shapes = js(K_STATE_SHAPES, dict)
        if not names or any(n not in shapes for n in names):
            raise ContractError(f"{K_STATE_SHAPES} must give a shape for every name in {K_STATE_NAMES}")
        for n in names:
            s = shapes[n]
            if (not isinstance(s, list) or not s or not (s[0] == BATCH_DIM or isinstance(s[0], int))
                    or not all(isinstance(v, int) and v > 0 for v in s[1:])):
                raise ContractError(f"{K_STATE_SHAPES}[{n!r}] must be [{BATCH_DIM!r} or int, sizes...], got {s}")
        perm_text = meta[K_PERMUTATION].strip()
        perm = js(K_PERMUTATION, list) if perm_text else []
        try:
            scale = float(meta[K_SCALE])
        except ValueError:
            raise ContractError(f"metadata {K_SCALE!r} should be a number, got {meta[K_SCALE]!r}") from None
        if not math.isfinite(scale):
            raise ContractError(f"metadata {K_SCALE!r} must be finite")
        kind = meta[K_OUTPUT_KIND]
        if kind not in OUTPUT_KINDS:
            raise ContractError(f"unknown {K_OUTPUT_KIND} {kind!r} (expected {' or '.join(OUTPUT_KINDS)})")
        c = cls(format=fmt, version=meta[K_VERSION], task=meta[K_TASK], task_args=js(K_TASK_ARGS, dict), arch=meta[K_ARCH],
                model_config=js(K_MODEL_CONFIG, dict), state_names=names, state_shapes=shapes,
                state_init=meta[K_STATE_INIT], input_size=integer(K_INPUT_SIZE), output_size=integer(K_OUTPUT_SIZE),
                output_kind=kind, seq_len=integer(K_SEQ_LEN), readout=meta[K_READOUT],
                permutation=[int(p) for p in perm] or None, input_scale=scale, metrics=js(K_METRICS, dict),
                source_sha256=meta[K_SOURCE_SHA256], quantization=meta.get(K_QUANTIZATION, QUANT_NONE))
        try:
            k = c.readout_steps
        except ValueError:
            k = None
        if c.readout != "all" and (k is None or k < 1):
            raise ContractError(f"unknown {K_READOUT} {c.readout!r} (expected last, last:K with K >= 1, or all)")
        for key in ("eval_seed", "eval_n"):  # where eval of the file draws its held-out data (evaluation.py)
            v = c.metrics.get(key)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < (key == "eval_n")):
                want = "a positive integer" if key == "eval_n" else "an integer >= 0"
                raise ContractError(f"metadata {K_METRICS!r}: {key} must be {want}, got {v!r}")
        if c.permutation is not None and sorted(c.permutation) != list(range(len(c.permutation))):
            raise ContractError(f"{K_PERMUTATION} is not a permutation of 0..{len(c.permutation) - 1}")
        return c


def read_metadata(model: Any) -> dict[str, str]:
    """``metadata_props`` of an ONNX model (a path or a loaded ``ModelProto``) as a plain dict."""
    if isinstance(model, (str, os.PathLike)):
        import onnx

        check_onnx_file(model, ContractError)  # a checkpoint or a directory is named as such, not as bad protobuf
        try:
            model = onnx.load(os.fspath(model), load_external_data=False)
        except Exception as e:  # noqa: BLE001 - protobuf decode errors have no common base
            raise ContractError(f"{model}: not a readable ONNX file ({type(e).__name__}: {str(e)[:160]})") from None
    return {p.key: p.value for p in model.metadata_props}


def read_contract(model: Any) -> Contract:
    """The validated :class:`Contract` of an exported model (a path or a ``ModelProto``)."""
    meta = read_metadata(model)
    try:
        return Contract.from_metadata(meta)
    except ContractError as e:
        raise ContractError(f"{model}: {e}" if isinstance(model, (str, os.PathLike)) else str(e)) from None


def write_metadata(model, contract: Contract) -> None:
    """Replace the ``metadata_props`` of ``model`` (a ``ModelProto``) with the contract's keys."""
    del model.metadata_props[:]
    for k, v in contract.to_metadata().items():
        p = model.metadata_props.add()
        p.key, p.value = k, v
