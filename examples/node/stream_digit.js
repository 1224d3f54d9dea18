#!/usr/bin/env node
// Stream one MNIST digit through an exported wavexport *step* model, one pixel per step, with onnxruntime-node.
// Nothing about the model is hard-coded: state names and shapes, input size, pixel permutation and scale all come
// from the ONNX file's metadata_props (read with onnx-proto, since onnxruntime-node exposes no custom metadata).
//
//   node stream_digit.js MODEL.onnx --mnist DATA_ROOT [--index I] [--every K]
//   node stream_digit.js MODEL.onnx --pixels digit.json      (a JSON array of raw values, raster order)
//
// Prints one JSON line per step: {"step": t, "y": [...], "pred": k} (every K-th step with --every K), then a
// summary line {"final": true, "pred": k, "label": l}.
'use strict';
const fs = require('fs');
const path = require('path');
const zlib = require('zlib');
const ort = require('onnxruntime-node');
const { onnx } = require('onnx-proto');

function usage(msg) {
  if (msg) console.error(`error: ${msg}`);
  console.error('usage: node stream_digit.js MODEL.onnx (--mnist DATA_ROOT [--index I] | --pixels FILE.json) [--every K]');
  process.exit(2);
}

function parseArgs(argv) {
  const args = { every: 1, index: 0 };
  const rest = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--mnist') args.mnist = argv[++i];
    else if (a === '--pixels') args.pixels = argv[++i];
    else if (a === '--index') args.index = parseInt(argv[++i], 10);
    else if (a === '--every') args.every = parseInt(argv[++i], 10);
    else if (a === '-h' || a === '--help') usage();
    else rest.push(a);
  }
  if (rest.length !== 1) usage('give exactly one MODEL.onnx');
  if (!args.mnist === !args.pixels) usage('give --mnist DATA_ROOT or --pixels FILE.json');
  if (!(args.every >= 1) || !(args.index >= 0)) usage('--every and --index take non-negative integers');
  args.model = rest[0];
  return args;
}

// The wavexport contract, from the file's metadata_props alone.
function readContract(modelPath) {
  const proto = onnx.ModelProto.decode(fs.readFileSync(modelPath));
  const meta = {};
  for (const p of proto.metadataProps) meta[p.key] = p.value;
  if (meta['wavexport.format'] !== 'step/1') {
    throw new Error(`${modelPath}: not a wavexport step model (wavexport.format = ${meta['wavexport.format']})`);
  }
  const perm = meta['input.permutation'] ? JSON.parse(meta['input.permutation']) : [];
  return {
    stateNames: JSON.parse(meta['state.names']),
    stateShapes: JSON.parse(meta['state.shapes']),
    inputSize: parseInt(meta['input.size'], 10),
    outputSize: parseInt(meta['output.size'], 10),
    outputKind: meta['output.kind'],
    seqLen: parseInt(meta['task.seq_len'], 10),
    scale: parseFloat(meta['input.scale']),
    permutation: perm.length ? perm : null,
    task: meta['task'],
  };
}

// One test image from the real MNIST files (torchvision's layout: ROOT/MNIST/raw/t10k-*-ubyte.gz).
function readMnistDigit(root, index) {
  const raw = path.join(root, 'MNIST', 'raw');
  const images = zlib.gunzipSync(fs.readFileSync(path.join(raw, 't10k-images-idx3-ubyte.gz')));
  const labels = zlib.gunzipSync(fs.readFileSync(path.join(raw, 't10k-labels-idx1-ubyte.gz')));
  if (images.readUInt32BE(0) !== 0x803 || labels.readUInt32BE(0) !== 0x801) throw new Error('not MNIST IDX files');
  const n = images.readUInt32BE(4);
  const size = images.readUInt32BE(8) * images.readUInt32BE(12);
  if (index >= n) throw new Error(`--index ${index}: the test set has ${n} images`);
  const pixels = Array.from(images.subarray(16 + index * size, 16 + (index + 1) * size));
  return { pixels, label: labels[8 + index] };
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const c = readContract(args.model);
  const digit = args.mnist ? readMnistDigit(args.mnist, args.index)
    : { pixels: JSON.parse(fs.readFileSync(args.pixels, 'utf8')).flat(), label: null };
  const T = digit.pixels.length / c.inputSize;
  if (!Number.isInteger(T)) throw new Error(`${digit.pixels.length} values do not split into steps of ${c.inputSize}`);
  if (c.permutation && c.permutation.length !== T) throw new Error(`permutation has ${c.permutation.length} steps, input ${T}`);

  const session = await ort.InferenceSession.create(args.model, {
    intraOpNumThreads: 1, interOpNumThreads: 1, executionMode: 'sequential',
  });
  // Initial state: zeros of state.shapes with the batch axis set to 1.
  let state = {};
  for (const name of c.stateNames) {
    const dims = c.stateShapes[name].map((d) => (d === 'batch' ? 1 : d));
    state[name] = new ort.Tensor('float32', new Float32Array(dims.reduce((a, b) => a * b, 1)), dims);
  }
  let last = null;
  for (let t = 0; t < T; t++) {
    const src = c.permutation ? c.permutation[t] : t;  // step t reads raw position permutation[t]
    const x = new Float32Array(c.inputSize);
    for (let i = 0; i < c.inputSize; i++) x[i] = Math.fround(digit.pixels[src * c.inputSize + i] * c.scale);
    const out = await session.run({ x: new ort.Tensor('float32', x, [1, c.inputSize]), ...state });
    for (const name of c.stateNames) state[name] = out[`${name}_next`];
    const y = Array.from(out.y.data);
    const pred = c.outputKind === 'logits' ? y.indexOf(Math.max(...y)) : null;
    last = { step: t, y, pred };
    if ((t + 1) % args.every === 0) process.stdout.write(JSON.stringify(last) + '\n');
  }
  process.stdout.write(JSON.stringify({ final: true, steps: T, pred: last.pred, label: digit.label }) + '\n');
}

main().catch((e) => { console.error(`error: ${e.message}`); process.exit(1); });
