"""``wavexport inspect``: what an app developer needs to wire an exported model up, read from the file alone."""
from __future__ import annotations

import json
import os

from ..core.contract import BATCH_DIM, K_PERMUTATION, QUANT_NONE, Contract, read_metadata
from ..core.errors import ContractError, ExportError
from ..core.io import check_onnx_file


def _dtype_name(elem_type: int) -> str:
    import onnx

    try:
        return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name
    except Exception:  # noqa: BLE001 - e.g. undefined type
        return onnx.TensorProto.DataType.Name(elem_type).lower()


def _graphs(graph):
    """A graph and every subgraph in it (the Scan body of a sequence export)."""
    import onnx

    yield graph
    for n in graph.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    yield from _graphs(g)


def count_parameters(model) -> dict:
    """Learned values stored in the file: elements of the float and int8 initializers that have at least one axis,
    over the graph and its subgraphs. Scalars are left out: they are constants the exporter lifted (the 1 in the
    GRU's 1 - z) or per-tensor quantization scales/zero points, not weights. Per-channel scales of an int8
    export are counted, as stored."""
    import onnx

    weight_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
                    onnx.TensorProto.DOUBLE, onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
    total, by_type = 0, {}
    for g in _graphs(model.graph):
        for t in g.initializer:
            if t.data_type not in weight_types or not t.dims:
                continue
            n = 1
            for d in t.dims:
                n *= d
            total += n
            name = _dtype_name(t.data_type)
            by_type[name] = by_type.get(name, 0) + n
    return {"total": total, "by_dtype": by_type}


def _io(values, skip=()) -> list[dict]:
    out = []
    for v in values:
        if v.name in skip:
            continue
        t = v.type.tensor_type
        out.append({"name": v.name, "dtype": _dtype_name(t.elem_type),
                    "shape": [d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else "?")
                              for d in t.shape.dim]})
    return out


def describe(path) -> dict:
    """Everything ``inspect`` prints, as a JSON-able dict. Raises :class:`ExportError` if not an ONNX file."""
    import onnx

    path = os.fspath(path)
    check_onnx_file(path, ExportError)  # a directory or a checkpoint is named as such, not as corrupt protobuf
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf decode errors have no common base
        raise ExportError(f"{path} is not a readable ONNX file ({type(e).__name__}: {str(e)[:160]})") from None
    if not model.graph.node and not model.graph.input:
        raise ExportError(f"{path} is not an ONNX model (no graph)")
    weights = {t.name for t in model.graph.initializer}
    meta = read_metadata(model)
    try:
        contract = Contract.from_metadata(meta)
        contract_error = None
    except ContractError as e:
        contract, contract_error = None, str(e)
    ops: dict[str, int] = {}
    for n in model.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    return {
        "path": path,
        "file_bytes": os.path.getsize(path),
        "ir_version": model.ir_version,
        "opsets": {(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "inputs": _io(model.graph.input, skip=weights),
        "outputs": _io(model.graph.output),
        "parameters": count_parameters(model),
        "top_level_ops": ops,
        "metadata": meta,
        "wavexport": contract is not None,
        "contract_error": contract_error,
        "usage": _usage(contract) if contract else None,
    }


def _usage(c: Contract) -> list[str]:
    """How to call it, in words: the part of the contract that is not obvious from the tensor shapes."""
    b = BATCH_DIM if c.batch is None else str(c.batch)
    feed = ("inputs: raw sample positions reordered by input.permutation (step t reads position permutation[t])"
            if c.permutation else "inputs: raw values in step order")
    shapes = ", ".join(f"{n} [{', '.join(map(str, c.state_shapes[n]))}]" for n in c.state_names)
    lines = [f"initial state: float32 {c.state_init}: {shapes}",
             f"{feed}, times input.scale = {c.input_scale:g}; {c.seq_len} steps of {c.input_size} value(s)"]
    if c.mode == "step":
        lines.append(f"call once per step with {c.input_name} [{b}, {c.input_size}] and the state; feed "
                     f"{', '.join(c.state_out_names)} back as {', '.join(c.state_names)}")
    else:
        lines.append(f"call once with {c.input_name} [{b}, T, {c.input_size}] (any T) and the initial state; "
                     f"{', '.join(c.state_out_names)} is the state after the last step (pass it to continue)")
    k = c.readout_steps
    where = "every step" if k is None else ("the last step" if k == 1 else f"the last {k} steps")
    lines.append(f"answer: {c.output_kind} [{c.output_size}] at {where} of the task's {c.seq_len}")
    if c.quantization != QUANT_NONE:
        lines.append(f"weights quantized: {c.quantization}")
    return lines


def _short(value: str, key: str, width: int = 90) -> str:
    if key == K_PERMUTATION and len(value) > width:
        try:
            perm = json.loads(value)
            head = ", ".join(map(str, perm[:8]))
            return f"[{head}, ...] ({len(perm)} positions; full list with --json)"
        except json.JSONDecodeError:
            pass
    return value if len(value) <= width else value[:width - 3] + "..."


def format_text(d: dict) -> str:
    p = d["parameters"]
    opsets = ", ".join(f"{k} {v}" for k, v in d["opsets"].items())
    out = [f"{d['path']}: {d['file_bytes'] / 1024:.1f} KiB, {p['total']:,} parameters "
           f"({', '.join(f'{k} {v:,}' for k, v in p['by_dtype'].items()) or 'none'}), opset {opsets}, "
           f"IR {d['ir_version']}, producer {d['producer'] or '?'}"]
    out.append("graph: " + ", ".join(f"{k} x{v}" for k, v in d["top_level_ops"].items()))
    w = max([len(v["name"]) for v in d["inputs"] + d["outputs"]] + [1])
    for title in ("inputs", "outputs"):
        out.append(f"{title}:")
        for v in d[title]:
            out.append(f"  {v['name']:<{w}}  {v['dtype']:<8} [{', '.join(map(str, v['shape']))}]")
    out.append("metadata:")
    kw = max([len(k) for k in d["metadata"]] + [1])
    for k, v in d["metadata"].items():
        out.append(f"  {k:<{kw}}  {_short(v, k)}")
    if d["usage"]:
        out.append("usage:")
        out += [f"  {line}" for line in d["usage"]]
    else:
        out.append(d["contract_error"])
    return "\n".join(out)
