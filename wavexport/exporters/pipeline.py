"""checkpoint -> verified ONNX file: what ``wavexport export`` does, callable from Python.

The file is written under a temporary name in the destination folder, verified there, and renamed onto the
destination only if every check passes; on any failure neither the file nor the temporary one remains.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import onnx

from .. import __version__
from ..checkpoint import load_checkpoint
from ..core.contract import FORMATS, QUANT_NONE, Contract, write_metadata
from ..core.io import atomic_write, file_digest
from ..core.errors import ExportError, VerificationError
from ..evaluation import held_out_draw
from .onnx_export import DEFAULT_OPSET, export_step_graph, parse_batch, parse_opset, sequence_from_step
from .quantize import (METHOD_NAMES, QuantReport, calibration_feeds, check_int8, compare_int8, quant_data,
                       quantize_step_int8, time_per_step)
from .verify import ParityReport, check_file, check_io, parity, session, verify_fp32

QUANTIZATIONS = {"int8": "static"}  # --quantize value -> quantize_step_int8 method (why: quantize.py)


@dataclass
class ExportReport:
    path: str
    mode: str
    opset: int
    batch: int | None
    task: str
    arch: str
    export_seconds: float
    size_bytes: int = 0
    verify_seconds: float = 0.0
    verified: bool = False
    parity: ParityReport | None = None
    quant: QuantReport | None = None
    quantization: str = QUANT_NONE

    def lines(self) -> list[str]:
        b = "dynamic" if self.batch is None else str(self.batch)
        weights = "float32" if self.quantization == QUANT_NONE else self.quantization
        out = [f"exported {self.task}/{self.arch} {self.mode} graph ({weights}), opset {self.opset}, "
               f"batch {b} -> {self.path} ({self.size_bytes / 1024:.1f} KiB) in {self.export_seconds:.2f} s"]
        if self.parity is not None:
            out.append("verified: onnx.checker full_check ok; " + self.parity.summary())
        if self.quant is not None:
            if self.quant.n:
                out.append(f"verified int8: {self.quant.summary()}")
            out.append(f"int8: {self.quant.size_speed()}")
        if not self.verified:
            out.append("NOT verified (--no-verify)")
        elif self.verify_seconds:
            out.append(f"verification took {self.verify_seconds:.1f} s")
        return out


def build_graphs(model, mode: str, opset: int, batch: int | None, quantize: str | None = None,
                 step_contract: Contract | None = None, calibration=None):
    """(float32 graph, final graph): the final one is int8 when asked, calibrated on ``calibration`` sequences
    (run through the float step graph, described by ``step_contract``). A sequence graph wraps the step graph."""
    step = export_step_graph(model, opset, batch)
    names = list(model.state_names)
    fp32 = sequence_from_step(step, names) if mode == "sequence" else step
    if not quantize:
        return fp32, fp32
    method = QUANTIZATIONS[quantize]
    feeds = calibration_feeds(step, step_contract, calibration) if method == "static" else None
    q_step = quantize_step_int8(step, method=method, calibration=feeds)
    return fp32, (sequence_from_step(q_step, names) if mode == "sequence" else q_step)


def export_checkpoint(checkpoint, out, mode: str = "step", opset=DEFAULT_OPSET, batch="dynamic",
                      quantize: str | None = None, verify: bool = True, data_dir=None,
                      tolerance: float | None = None, log: Callable[[str], None] | None = None) -> ExportReport:
    """Export a checkpoint to ``out``; raises :class:`ExportError` (bad input) or :class:`VerificationError`."""
    log = log or (lambda msg: None)
    opset = parse_opset(opset)
    batch = parse_batch(batch)
    if mode not in FORMATS:
        raise ExportError(f"unknown mode {mode!r} (step or sequence)")
    if quantize not in (None, *QUANTIZATIONS):
        raise ExportError(f"unknown quantization {quantize!r} (int8)")
    if tolerance is not None and not (tolerance > 0):
        raise ExportError(f"--tolerance must be a positive number, got {tolerance}")
    out = Path(out)
    if out.is_dir():
        raise ExportError(f"{out} is a directory; give the path of the .onnx file to write")
    t0 = time.perf_counter()
    ckpt = load_checkpoint(checkpoint)
    model, task = ckpt.build()
    contract = Contract.for_model(model, task, mode, batch,
                                  metrics={**ckpt.test_metrics(), **held_out_draw(ckpt.train_config, task)},
                                  source_sha256=file_digest(ckpt.path) if ckpt.path else "",
                                  model_config=ckpt.model_config, arch=ckpt.arch)
    calib = eval_xs = eval_y = None
    if quantize:
        log("loading calibration" + (" and test" if verify else "") + " data for int8 ...")
        calib, eval_xs, eval_y = quant_data(task, ckpt, data_dir, evaluate=verify)
    fp32, final = build_graphs(model, mode, opset, batch, quantize,
                               step_contract=replace(contract, format=FORMATS["step"]), calibration=calib)
    write_metadata(fp32, contract)
    final_contract = contract
    if quantize:
        final_contract = replace(contract, quantization=METHOD_NAMES[QUANTIZATIONS[quantize]])
        write_metadata(final, final_contract)
    final.producer_name, final.producer_version = "wavexport", __version__
    rep = ExportReport(path=str(out), mode=mode, opset=opset, batch=batch, task=task.name, arch=contract.arch,
                       export_seconds=time.perf_counter() - t0, quantization=final_contract.quantization)

    def write(tmp: str) -> None:
        onnx.save(final, tmp)
        if not verify:
            if quantize:
                rep.quant = QuantReport("-", 0.0, 0.0, 0, 0.0, fp32_bytes=fp32.ByteSize(),
                                        int8_bytes=os.path.getsize(tmp))
            return
        t1 = time.perf_counter()
        if not quantize:
            log(f"verifying: {task.seq_len} chained steps, ONNX Runtime vs PyTorch ...")
            rep.parity = verify_fp32(tmp, model, task, final_contract, tolerance)
        else:
            check_file(tmp)
            check_io(onnx.load(tmp), final_contract)
            log(f"verifying the float32 graph: {task.seq_len} chained steps, ONNX Runtime vs PyTorch ...")
            rep.parity = parity(session(fp32), model, task, contract, tolerance=tolerance)
            if not rep.parity.ok:
                raise VerificationError("parity check of the float32 graph failed: " + rep.parity.summary())
            log(f"verifying int8 on the task metric: {len(eval_xs)} test samples, int8 vs float32 ...")
            s32, s8 = session(fp32), session(tmp)
            rep.quant = compare_int8(s32, s8, task, eval_xs, eval_y)
            rep.quant.fp32_bytes, rep.quant.int8_bytes = fp32.ByteSize(), os.path.getsize(tmp)
            rep.quant.fp32_step_us = time_per_step(session(fp32), contract)
            rep.quant.int8_step_us = time_per_step(session(tmp), final_contract)
            check_int8(rep.quant)
            # The metrics above are the float32 checkpoint's; say what the int8 graph itself measured, on what.
            q = rep.quant
            write_metadata(final, replace(final_contract, metrics={
                **final_contract.metrics,
                "int8_check": {"metric": q.metric, "n": q.n, "float32": q.fp32, "int8": q.int8}}))
            onnx.save(final, tmp)
        rep.verify_seconds = time.perf_counter() - t1
        rep.verified = True

    atomic_write(out, write)
    rep.size_bytes = os.path.getsize(out)
    return rep
