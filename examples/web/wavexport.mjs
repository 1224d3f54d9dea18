// Reading and streaming a wavexport ONNX model in the browser, with no DOM and no build step.
//
// The contract (docs/EXPORT.md, wavexport/core/contract.py) lives in the file's metadata_props. onnxruntime-web does
// not expose custom metadata, so it is read here with a few lines of protobuf: ModelProto field 14 is
// metadata_props, each a StringStringEntryProto {key = 1, value = 2}. Field numbers are part of the ONNX spec.

const META_FIELD = 14;
const BATCH_DIM = 'batch';
const REQUIRED = ['wavexport.format', 'task', 'arch', 'state.names', 'state.shapes', 'state.init', 'input.size',
  'output.size', 'output.kind', 'task.seq_len', 'task.readout', 'input.permutation', 'input.scale'];

export class ContractError extends Error {}

function varint(buf, pos) {
  let value = 0;
  let mul = 1;
  for (;;) {
    if (pos >= buf.length) throw new ContractError('not an ONNX file (truncated protobuf)');
    const b = buf[pos++];
    value += (b & 0x7f) * mul;     // plain arithmetic, not bit shifts: lengths may pass 2^31
    if (!(b & 0x80)) return [value, pos];
    mul *= 128;
    if (mul > 2 ** 63) throw new ContractError('not an ONNX file (bad varint)');
  }
}

// The length-delimited fields numbered `want` of the message buf[start:end], as [start, end] byte ranges.
function lengthFields(buf, start, end, want) {
  const found = [];
  let pos = start;
  while (pos < end) {
    let key;
    let len;
    [key, pos] = varint(buf, pos);
    const field = Math.floor(key / 8);
    const wire = key % 8;
    if (wire === 0) [, pos] = varint(buf, pos);
    else if (wire === 1) pos += 8;
    else if (wire === 5) pos += 4;
    else if (wire === 2) {
      [len, pos] = varint(buf, pos);
      if (pos + len > end) throw new ContractError('not an ONNX file (field runs past the end)');
      if (field === want) found.push([pos, pos + len]);
      pos += len;
    } else throw new ContractError(`not an ONNX file (protobuf wire type ${wire})`);
  }
  if (pos !== end) throw new ContractError('not an ONNX file (truncated protobuf)');
  return found;
}

/** metadata_props of an ONNX file (bytes: Uint8Array or ArrayBuffer) as a plain {key: value} object. */
export function readMetadata(bytes) {
  const buf = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  const text = new TextDecoder('utf-8');
  const meta = {};
  for (const [s, e] of lengthFields(buf, 0, buf.length, META_FIELD)) {
    const key = lengthFields(buf, s, e, 1).pop();
    const value = lengthFields(buf, s, e, 2).pop();
    if (key) meta[text.decode(buf.subarray(...key))] = value ? text.decode(buf.subarray(...value)) : '';
  }
  return meta;
}

function json(meta, key, kind) {
  let v;
  try {
    v = JSON.parse(meta[key]);
  } catch {
    throw new ContractError(`metadata ${key} is not valid JSON`);
  }
  if (kind === 'array' ? !Array.isArray(v) : (typeof v !== 'object' || v === null || Array.isArray(v))) {
    throw new ContractError(`metadata ${key} should be a JSON ${kind}`);
  }
  return v;
}

function int(meta, key) {
  const v = Number(meta[key]);
  if (!Number.isInteger(v) || v < 0) throw new ContractError(`metadata ${key} should be an integer, got ${meta[key]}`);
  return v;
}

/** The contract from metadata_props: what the page needs to build inputs and state, validated like contract.py. */
export function parseContract(meta) {
  const missing = REQUIRED.filter((k) => !(k in meta));
  if (missing.length === REQUIRED.length) {
    throw new ContractError('not a wavexport export: the file has no wavexport metadata '
      + '(export it with `wavexport export`)');
  }
  if (missing.length) throw new ContractError(`not a wavexport export: metadata lacks ${missing.join(', ')}`);
  const format = meta['wavexport.format'];
  if (format !== 'step/1' && format !== 'sequence/1') {
    throw new ContractError(`unknown wavexport.format ${format} (this page reads step/1 and sequence/1)`);
  }
  if (meta['state.init'] !== 'zeros') throw new ContractError(`unknown state.init ${meta['state.init']}`);
  const stateNames = json(meta, 'state.names', 'array');
  const stateShapes = json(meta, 'state.shapes', 'object');
  for (const n of stateNames) {
    const s = stateShapes[n];
    if (!Array.isArray(s) || !s.length || !(s[0] === BATCH_DIM || Number.isInteger(s[0]))
        || !s.slice(1).every((d) => Number.isInteger(d) && d > 0)) {
      throw new ContractError(`state.shapes[${n}] must be ["batch" or int, sizes...]`);
    }
  }
  if (!stateNames.length) throw new ContractError('state.names is empty');
  const perm = meta['input.permutation'].trim() ? json(meta, 'input.permutation', 'array') : [];
  const scale = Number(meta['input.scale']);
  if (!Number.isFinite(scale)) throw new ContractError(`input.scale should be a number, got ${meta['input.scale']}`);
  const outputKind = meta['output.kind'];
  if (outputKind !== 'logits' && outputKind !== 'regression') {
    throw new ContractError(`unknown output.kind ${outputKind}`);
  }
  const first = stateShapes[stateNames[0]][0];
  const c = {
    format,
    mode: format === 'step/1' ? 'step' : 'sequence',
    version: meta['wavexport.version'] || '',
    task: meta.task,
    arch: meta.arch,
    modelConfig: meta['model.config'] ? json(meta, 'model.config', 'object') : {},
    stateNames,
    stateShapes,
    batch: first === BATCH_DIM ? 1 : first, // a dynamic batch runs one stream; a fixed one runs its N rows
    inputSize: int(meta, 'input.size'),
    outputSize: int(meta, 'output.size'),
    outputKind,
    seqLen: int(meta, 'task.seq_len'),
    readout: meta['task.readout'],
    permutation: perm.length ? perm.map(Number) : null,
    scale,
    metrics: meta.metrics ? json(meta, 'metrics', 'object') : {},
    quantization: meta.quantization || 'none',
  };
  if (c.permutation) {
    const seen = new Uint8Array(c.permutation.length);
    for (const p of c.permutation) {
      if (!Number.isInteger(p) || p < 0 || p >= seen.length || seen[p]++) {
        throw new ContractError(`input.permutation is not a permutation of 0..${seen.length - 1}`);
      }
    }
  }
  c.inputName = c.mode === 'step' ? 'x' : 'xs';
  c.outputName = c.mode === 'step' ? 'y' : 'ys';
  c.readoutSteps = c.readout === 'all' ? null : (c.readout === 'last' ? 1 : Number(c.readout.split(':')[1]));
  return c;
}

/** Raw samples (raster order, unscaled: e.g. 784 uint8 pixels) -> model inputs, Float32Array [T * n_in]:
 *  step t reads raw position permutation[t], values times input.scale, in float32 (as Contract.prepare_inputs). */
export function prepareInputs(c, raw) {
  const n = c.inputSize;
  if (raw.length % n) throw new ContractError(`${raw.length} values do not split into steps of ${n}`);
  const T = raw.length / n;
  if (c.permutation && c.permutation.length !== T) {
    throw new ContractError(`the input has ${T} positions; the permutation has ${c.permutation.length}`);
  }
  const scale = Math.fround(c.scale);
  const out = new Float32Array(T * n);
  for (let t = 0; t < T; t++) {
    const src = c.permutation ? c.permutation[t] : t;
    for (let i = 0; i < n; i++) out[t * n + i] = Math.fround(Math.fround(raw[src * n + i]) * scale);
  }
  return out;
}

/** How to draw the state: a wRNN state [batch, C, N] is C rings of N units; any other state is one channel. */
export function stateChannels(c) {
  const channels = [];
  for (const name of c.stateNames) {
    const dims = c.stateShapes[name].slice(1);
    const size = dims.reduce((a, b) => a * b, 1);
    if (dims.length === 2) {
      for (let k = 0; k < dims[0]; k++) {
        channels.push({ state: name, offset: k * dims[1], size: dims[1], label: `${name}[${k}]` });
      }
    } else channels.push({ state: name, offset: 0, size, label: name });
  }
  return channels;
}

export function softmax(y) {
  const m = Math.max(...y);
  const e = Array.from(y, (v) => Math.exp(v - m));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
}

export function argmax(y) {
  let k = 0;
  for (let i = 1; i < y.length; i++) if (y[i] > y[k]) k = i;
  return k;
}

/** One model's session; every run goes through one queue (an onnxruntime-web session runs one call at a time). */
export class Model {
  constructor(ort, session, contract) {
    this.ort = ort;
    this.session = session;
    this.contract = contract;
    this.queue = Promise.resolve();
  }

  static async load(ort, bytes) {
    const buf = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
    const contract = parseContract(readMetadata(buf));
    let session;
    try {
      session = await ort.InferenceSession.create(buf, { executionProviders: ['wasm'], graphOptimizationLevel: 'all' });
    } catch (e) {
      throw new Error(`onnxruntime-web cannot load the model: ${e.message || e}`);
    }
    const want = [contract.inputName, ...contract.stateNames];
    const wantOut = [contract.outputName, ...contract.stateNames.map((n) => `${n}_next`)];
    const lack = [...want.filter((n) => !session.inputNames.includes(n)),
      ...wantOut.filter((n) => !session.outputNames.includes(n))];
    if (lack.length) throw new ContractError(`the graph lacks the tensors its metadata names: ${lack.join(', ')}`);
    return new Model(ort, session, contract);
  }

  run(feeds) {
    const result = this.queue.then(() => this.session.run(feeds));
    this.queue = result.catch(() => {});
    return result;
  }

  streamer() {
    return new Streamer(this);
  }
}

/** A stream through the model: state held here, one timestep per step() (as StreamingSession in Python). */
export class Streamer {
  constructor(model) {
    this.model = model;
    this.c = model.contract;
    this.reset();
  }

  reset() {
    const { ort } = this.model;
    this.t = 0;
    this.state = {};
    for (const name of this.c.stateNames) {
      const dims = [this.c.batch, ...this.c.stateShapes[name].slice(1)];
      this.state[name] = new ort.Tensor('float32', new Float32Array(dims.reduce((a, b) => a * b, 1)), dims);
    }
    this.y = null;
  }

  /** x: the n_in model-space inputs of one step (already permuted and scaled). Returns y (row 0) as Float32Array. */
  async step(x) {
    const { ort } = this.model;
    const c = this.c;
    const B = c.batch;
    const n = c.inputSize;
    const data = new Float32Array(B * n);
    for (let b = 0; b < B; b++) data.set(x.subarray ? x.subarray(0, n) : x.slice(0, n), b * n);
    const dims = c.mode === 'step' ? [B, n] : [B, 1, n];
    const out = await this.model.run({ [c.inputName]: new ort.Tensor('float32', data, dims), ...this.state });
    for (const name of c.stateNames) this.state[name] = out[`${name}_next`];
    this.y = out[c.outputName].data.slice(0, c.outputSize);
    this.t += 1;
    return this.y;
  }

  /** The state of row 0 by name, as Float32Arrays (no batch axis). */
  stateRow0() {
    const s = {};
    for (const name of this.c.stateNames) {
      const size = this.c.stateShapes[name].slice(1).reduce((a, b) => a * b, 1);
      s[name] = this.state[name].data.subarray(0, size);
    }
    return s;
  }
}
