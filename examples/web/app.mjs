// The demo page: stream a sequence through a wavexport step model, one step per animation frame, and draw it live.
// Everything about the model comes from its metadata (wavexport.mjs); nothing is specific to one export.
//
// URL parameters: model=URL (default model.onnx, what `wavexport demo` serves), digit=K (bundled digit to start
// with), autoplay=0, speed=S (steps per frame), cdn=0 (never fall back to the CDN for onnxruntime-web).
//
// Test hook: window.wavexport (see the end of this file) drives the page without animation frames.
import { loadOrt } from './ort-loader.mjs';
import { Model, argmax, prepareInputs, softmax, stateChannels } from './wavexport.mjs';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const DPR = Math.min(window.devicePixelRatio || 1, 2);
const IMAGE_SIDE = 28;

// --- colour maps -------------------------------------------------------------------------------------------------
function lut(stops) {
  const t = new Uint8Array(256 * 3);
  for (let i = 0; i < 256; i++) {
    const v = i / 255;
    let k = 0;
    while (k < stops.length - 2 && v > stops[k + 1][0]) k++;
    const [v0, c0] = stops[k];
    const [v1, c1] = stops[k + 1];
    const f = Math.min(1, Math.max(0, (v - v0) / (v1 - v0)));
    for (let j = 0; j < 3; j++) t[i * 3 + j] = Math.round(c0[j] + f * (c1[j] - c0[j]));
  }
  return t;
}
const INFERNO = lut([[0, [0, 0, 4]], [0.13, [31, 12, 72]], [0.25, [85, 15, 109]], [0.38, [136, 34, 106]],
  [0.5, [186, 54, 85]], [0.63, [227, 89, 51]], [0.75, [249, 140, 10]], [0.88, [249, 201, 50]], [1, [252, 255, 164]]]);
const DIVERGING = lut([[0, [130, 210, 255]], [0.25, [40, 110, 220]], [0.5, [8, 8, 12]], [0.75, [225, 85, 35]],
  [1, [255, 220, 130]]]);
const GRAY = lut([[0, [0, 0, 0]], [1, [255, 255, 255]]]);
const PROBS = lut([[0, [6, 8, 12]], [0.3, [30, 75, 120]], [0.65, [40, 160, 140]], [1, [250, 230, 50]]]);

/** One band of the space-time image (and one ring): its colour scale follows the values it has seen. */
class Band {
  constructor(label, rows, kind) {
    this.label = label;
    this.rows = rows;
    this.kind = kind; // 'state' | 'input' | 'probs' | 'value'
    this.reset();
  }

  reset() {
    this.scale = 0;
    this.neg = false;
  }

  observe(values) {
    if (this.kind === 'probs') return;
    let hi = 0;
    for (const v of values) {
      const a = Math.abs(v);
      if (a > hi) hi = a;
      if (v < 0 && a > 1e-6 * (this.scale || 1)) this.neg = true;
    }
    // decays slowly, so a wave that fades stays visible while a burst does not wash the band out for good
    this.scale = Math.max(hi, this.scale * 0.995);
  }

  /** -> [lut, offset] for value v */
  index(v) {
    if (this.kind === 'probs') return [PROBS, Math.round(Math.sqrt(Math.min(1, Math.max(0, v))) * 255) * 3];
    const s = this.scale || 1;
    if (this.neg) return [DIVERGING, Math.round((Math.max(-1, Math.min(1, v / s)) * 0.5 + 0.5) * 255) * 3];
    return [this.kind === 'input' ? GRAY : INFERNO, Math.round(Math.max(0, Math.min(1, v / s)) * 255) * 3];
  }

  rgb(v) {
    const [t, i] = this.index(v);
    return `rgb(${t[i]},${t[i + 1]},${t[i + 2]})`;
  }
}

// --- app state ---------------------------------------------------------------------------------------------------
const app = {
  ort: null, ortSource: null, ortVersion: null,
  model: null, c: null, streamer: null, modelName: '',
  channels: [], bands: [], inputBand: null, outputBand: null,
  seq: null, digits: null, digitIndex: 0,
  playing: false, busy: false, speed: Number(params.get('speed')) || 1, acc: 0, waiters: [],
  hist: 0, off: null, offCtx: null, col: null,
  last: null, history: [], error: null,
  ink: new Float32Array(IMAGE_SIDE * IMAGE_SIDE), seen: null, rngSeed: (Date.now() >>> 0),
};

function showMessage(text) {
  const m = $('message');
  m.textContent = text;
  m.hidden = false;
  app.error = text;
}

function clearMessage() {
  $('message').hidden = true;
  app.error = null;
}

// --- sequences ---------------------------------------------------------------------------------------------------
function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function gaussian(rng) {
  return Math.sqrt(-2 * Math.log(1 - rng())) * Math.cos(2 * Math.PI * rng());
}

const isImageTask = (c) => c.seqLen * c.inputSize === IMAGE_SIDE * IMAGE_SIDE && c.inputSize === 1;

/** A raw image (raster order, 0..255) -> a sequence in the model's order (permutation and scale applied). */
function imageSequence(raw, label, name) {
  const c = app.c;
  return { kind: 'image', name, raw: Float32Array.from(raw), xs: prepareInputs(c, raw), T: c.seqLen, label };
}

/** copy (T+20 steps, one-hot of 10): 10 symbols 1..8, blanks, the delimiter 9, 10 blanks to recall them in. */
function copySequence(rng) {
  const c = app.c;
  const L = c.seqLen;
  const k = c.readoutSteps || 10;
  const tokens = new Array(L).fill(0);
  const symbols = [];
  for (let i = 0; i < k; i++) symbols.push(1 + Math.floor(rng() * 8));
  symbols.forEach((s, i) => { tokens[i] = s; });
  tokens[L - k - 1] = 9;
  const xs = new Float32Array(L * c.inputSize);
  tokens.forEach((tok, t) => { xs[t * c.inputSize + tok] = 1; });
  const tape = tokens.map((tok, t) => (tok === 9 ? '|' : tok ? String(tok) : (t >= L - k ? '?' : '·')));
  return { kind: 'copy', name: `copy: recall ${k} symbols after ${L - 2 * k} steps`, xs, T: L, symbols, tape };
}

/** adding: values U[0,1] on channel 0, two markers on channel 1 (one per half); the answer is their sum. */
function addingSequence(rng) {
  const T = app.c.seqLen;
  const half = Math.floor(T / 2);
  const values = Array.from({ length: T }, () => Math.fround(rng()));
  const first = Math.floor(rng() * half);
  const second = half + Math.floor(rng() * (T - half));
  const xs = new Float32Array(T * 2);
  for (let t = 0; t < T; t++) xs[t * 2] = values[t];
  xs[first * 2 + 1] = 1;
  xs[second * 2 + 1] = 1;
  const tape = values.map((v, t) => (t === first || t === second ? `[${v.toFixed(2)}]` : '·'));
  return { kind: 'adding', name: `adding: sum the two marked values of ${T}`, xs, T,
    target: values[first] + values[second], parts: [values[first], values[second]], tape };
}

/** Any other task (nscifar10, or one this page does not know): 32 random image rows then N(0, 1) noise for
 *  nscifar10, uniform [0, 1) values otherwise. The model's answer is shown, there is no right one. */
function randomSequence(rng) {
  const c = app.c;
  const n = c.inputSize;
  const T = c.seqLen;
  const xs = new Float32Array(T * n);
  if (c.task === 'nscifar10') {
    const base = [rng(), rng(), rng()];
    for (let r = 0; r < Math.min(32, T); r++) {
      for (let i = 0; i < n; i++) xs[r * n + i] = Math.min(1, Math.max(0, base[i % 3] + 0.25 * (rng() - 0.5)));
    }
    for (let i = 32 * n; i < T * n; i++) xs[i] = gaussian(rng);
    return { kind: 'random', name: 'a random image, then noise (no data set bundled)', xs, T };
  }
  for (let i = 0; i < T * n; i++) xs[i] = rng();
  return { kind: 'random', name: `${T} random steps`, xs, T };
}

function newGeneratedSequence() {
  const c = app.c;
  const rng = mulberry32(app.rngSeed++);
  if (c.task === 'copy' && c.inputSize === 10) return copySequence(rng);
  if (c.task === 'adding' && c.inputSize === 2) return addingSequence(rng);
  return randomSequence(rng);
}

// --- model -------------------------------------------------------------------------------------------------------
async function loadModel(source, name) {
  pause();
  let bytes = source;
  if (typeof source === 'string') {
    let r;
    try {
      r = await fetch(source, { cache: 'no-store' });
    } catch (e) {
      throw new Error(`cannot fetch the model ${source}: ${e.message}`);
    }
    if (!r.ok) {
      throw new Error(`no model at ${source} (HTTP ${r.status}): start this page with \`wavexport demo MODEL.onnx\`, `
        + 'or pick an exported .onnx file below');
    }
    bytes = new Uint8Array(await r.arrayBuffer());
  }
  const model = await Model.load(app.ort, bytes);
  app.model = model;
  app.c = model.contract;
  app.modelName = name || (typeof source === 'string' ? source.split('/').pop() : 'model');
  app.streamer = model.streamer();
  setupForModel();
  return summary();
}

function summary() {
  const c = app.c;
  if (!c) return null;
  return { task: c.task, arch: c.arch, format: c.format, stateNames: c.stateNames, stateShapes: c.stateShapes,
    inputSize: c.inputSize, outputSize: c.outputSize, outputKind: c.outputKind, seqLen: c.seqLen,
    readout: c.readout, permuted: !!c.permutation, scale: c.scale, metrics: c.metrics, name: app.modelName };
}

function setupForModel() {
  const c = app.c;
  const shapes = c.stateNames.map((n) => `${n} [${c.stateShapes[n].join(', ')}]`).join(', ');
  const acc = typeof c.metrics.test_acc === 'number' ? ` · test acc ${(100 * c.metrics.test_acc).toFixed(1)}%` : '';
  const quant = c.quantization !== 'none' ? ` · ${c.quantization}` : '';
  $('model-info').textContent = `${app.modelName}: ${c.task} · ${c.arch} · state ${shapes} · ${c.seqLen} steps of `
    + `${c.inputSize} · ${c.outputSize} ${c.outputKind}${acc}${quant}`;
  app.channels = stateChannels(c);
  app.bands = app.channels.map((ch) => new Band(ch.label, ch.size, 'state'));
  app.inputBand = new Band('input', c.inputSize, isImageTask(c) ? 'input' : 'state');
  if (isImageTask(c)) app.inputBand.scale = 1; // pixels in [0, 1]: a fixed scale
  app.outputBand = new Band(c.outputKind === 'logits' ? 'p(class)' : 'output', c.outputSize,
    c.outputKind === 'logits' ? 'probs' : 'value');
  const wrnn = c.stateNames.length === 1 && c.stateShapes[c.stateNames[0]].length === 3;
  $('ring-note').textContent = wrnn
    ? `(${app.channels.length} channels × ${app.channels[0].size} units, h[0] outside)`
    : `(${c.arch}: each state tensor drawn as one ring)`;
  $('output-note').textContent = c.outputKind === 'logits' ? '(class probabilities)' : '(the running answer)';
  // the space-time image: one column per step, rows = input, output, every state channel
  app.hist = Math.min(1000, Math.max(1, c.seqLen)); // the whole sequence when it fits
  const rows = c.inputSize + c.outputSize + app.channels.reduce((a, ch) => a + ch.size, 0);
  app.off = document.createElement('canvas');
  app.off.width = app.hist;
  app.off.height = rows;
  app.offCtx = app.off.getContext('2d');
  app.col = app.offCtx.createImageData(1, rows);
  layoutSpacetime();
  buildBars();
  const image = isImageTask(c);
  $('image-input').hidden = !image;
  $('seq-input').hidden = image;
  $('perm-note').textContent = c.permutation ? '(permuted: pixels arrive scattered)' : '(raster order)';
  if (image) {
    buildPicker();
    startSequence(digitSequenceAt(app.digitIndex), { play: params.get('autoplay') !== '0' });
  } else {
    startSequence(newGeneratedSequence(), { play: params.get('autoplay') !== '0' });
  }
}

function digitSequenceAt(i) {
  if (!app.digits || !app.digits.length) return randomImageFallback();
  const d = app.digits[Math.min(i, app.digits.length - 1)];
  return imageSequence(d.pixels, d.label, `MNIST test #${d.index} (a ${d.label})`);
}

function randomImageFallback() {
  return imageSequence(new Array(IMAGE_SIDE * IMAGE_SIDE).fill(0), null, 'a blank image (digits.json missing)');
}

// --- streaming ---------------------------------------------------------------------------------------------------
function startSequence(seq, { play = false } = {}) {
  pause();
  app.seq = seq;
  $('seq-name').textContent = `· ${seq.name}`;
  resetStream();
  if (play) playStream();
}

function resetStream() {
  app.streamer.reset();
  app.bands.forEach((b) => b.reset());
  app.outputBand.reset();
  if (app.inputBand.kind !== 'input') app.inputBand.reset();
  app.offCtx.clearRect(0, 0, app.off.width, app.off.height);
  app.last = null;
  app.history = [];
  app.acc = 0;
  app.seen = null;
  render();
}

/** One step of the current sequence: run it, record its column of the space-time image. */
async function stepOnce() {
  const s = app.streamer;
  const seq = app.seq;
  const n = app.c.inputSize;
  if (s.t >= seq.T) return false;
  const t = s.t;
  const x = seq.xs.subarray(t * n, (t + 1) * n);
  const y = await s.step(x);
  const out = app.c.outputKind === 'logits' ? softmax(y) : Array.from(y);
  app.last = { t: s.t, x, y, out };
  app.history.push(app.c.outputKind === 'logits' ? argmax(y) : y[0]);
  writeColumn(t, x, out);
  return true;
}

function writeColumn(t, x, out) {
  const px = app.col.data;
  let row = 0;
  const put = (band, values) => {
    band.observe(values);
    for (let i = 0; i < values.length; i++, row++) {
      const [tab, k] = band.index(values[i]);
      const o = row * 4;
      px[o] = tab[k]; px[o + 1] = tab[k + 1]; px[o + 2] = tab[k + 2]; px[o + 3] = 255;
    }
  };
  put(app.inputBand, x);
  put(app.outputBand, out);
  const state = app.streamer.stateRow0();
  app.channels.forEach((ch, i) => put(app.bands[i], state[ch.state].subarray(ch.offset, ch.offset + ch.size)));
  app.offCtx.putImageData(app.col, t % app.hist, 0);
}

function playStream() {
  if (!app.model || app.playing) return;
  if (app.streamer.t >= app.seq.T) resetStream();
  app.playing = true;
  $('play').textContent = '❚❚ pause';
  requestAnimationFrame(frame);
}

function pause() {
  if (!app.playing) return;
  app.playing = false;
  $('play').textContent = '▶ play';
  if (!app.busy) settle();
}

function settle() {
  const w = app.waiters;
  app.waiters = [];
  const r = result();
  w.forEach((f) => f(r));
}

async function frame() {
  if (!app.playing) return;
  app.busy = true;
  try {
    app.acc += app.speed;
    let n = Math.floor(app.acc);
    app.acc -= n;
    while (n-- > 0 && app.playing) {
      if (!(await stepOnce())) break;
      if (app.pauseAt != null && app.streamer.t >= app.pauseAt) {
        app.pauseAt = null;
        app.playing = false;
      }
    }
    if (app.streamer.t >= app.seq.T) app.playing = false;
  } catch (e) {
    app.playing = false;
    showMessage(`streaming failed at step ${app.streamer.t}: ${e.message || e}`);
  } finally {
    app.busy = false;
  }
  render();
  if (app.playing) requestAnimationFrame(frame);
  else {
    $('play').textContent = '▶ play';
    settle();
  }
}

function result() {
  const s = app.streamer;
  if (!s) return null;
  const state = {};
  for (const [name, v] of Object.entries(s.stateRow0())) state[name] = Array.from(v);
  const y = s.y ? Array.from(s.y) : null;
  const probs = y && app.c.outputKind === 'logits' ? softmax(y) : null;
  return { t: s.t, T: app.seq ? app.seq.T : null, y, probs, pred: probs ? argmax(y) : null, state };
}

// --- drawing -----------------------------------------------------------------------------------------------------
function render() {
  if (!app.model) return;
  renderRing();
  renderSpacetime();
  renderOutput();
  renderInput();
  $('counter').textContent = `t = ${app.streamer.t} / ${app.seq.T}`;
}

function renderRing() {
  const cv = $('ring');
  const W = 360 * DPR;
  if (cv.width !== W) { cv.width = W; cv.height = W; }
  const ctx = cv.getContext('2d');
  ctx.fillStyle = '#161b22';
  ctx.fillRect(0, 0, W, W);
  const cx = W / 2;
  const R = W / 2 - 4 * DPR;
  const r0 = R * 0.32;
  const C = app.channels.length;
  const width = (R - r0) / C;
  const gap = C > 1 ? Math.min(1.5 * DPR, width * 0.15) : 0;
  const state = app.streamer.stateRow0();
  app.channels.forEach((ch, c) => {
    const band = app.bands[c];
    const v = state[ch.state].subarray(ch.offset, ch.offset + ch.size);
    const N = ch.size;
    const rOut = R - c * width;
    const rIn = rOut - width + gap;
    const da = (2 * Math.PI) / N;
    for (let i = 0; i < N; i++) {
      const a0 = -Math.PI / 2 + i * da;
      const a1 = a0 + da * 1.02; // a hair of overlap hides the seams between wedges
      ctx.beginPath();
      ctx.arc(cx, cx, rOut, a0, a1);
      ctx.arc(cx, cx, rIn, a1, a0, true);
      ctx.closePath();
      ctx.fillStyle = band.rgb(v[i]);
      ctx.fill();
    }
  });
  // centre: the current input and the step
  const last = app.last;
  ctx.textAlign = 'center';
  ctx.textBaseline = 'middle';
  if (app.c.inputSize === 1) { // one value a step: its colour
    ctx.beginPath();
    ctx.arc(cx, cx, r0 * 0.55, 0, 2 * Math.PI);
    ctx.fillStyle = app.inputBand.rgb(last ? last.x[0] : 0);
    ctx.fill();
    ctx.strokeStyle = '#2a313c';
    ctx.lineWidth = DPR;
    ctx.stroke();
  } else if (last && app.seq.kind === 'copy') { // a one-hot token: its symbol
    ctx.fillStyle = '#d8dee9';
    ctx.font = `bold ${28 * DPR}px system-ui, sans-serif`;
    const k = argmax(last.x);
    ctx.fillText(k === 0 ? '·' : (k === 9 ? '|' : String(k)), cx, cx);
  }
  ctx.fillStyle = '#8b949e';
  ctx.font = `${12 * DPR}px system-ui, sans-serif`;
  ctx.fillText(`t ${app.streamer.t}`, cx, cx + r0 * 0.8);
  ctx.fillText('input', cx, cx - r0 * 0.75);
}

function layoutSpacetime() {
  const c = app.c;
  const cv = $('spacetime');
  const cssW = Math.max(400, cv.clientWidth || 1200);
  const gutter = 64;
  const chBudget = 300;
  const chH = Math.max(10, Math.min(64, Math.floor(chBudget / app.channels.length)));
  const rows = [
    [app.inputBand, Math.max(12, Math.min(64, c.inputSize * 3))],
    [app.outputBand, Math.max(12, Math.min(80, c.outputSize * 6))],
    ...app.bands.map((b) => [b, Math.max(chH, Math.min(2 * b.rows, chH))]),
  ];
  let y = 0;
  let srcY = 0;
  app.layout = rows.map(([band, h], i) => {
    const item = { band, srcY, dy: y, dh: h };
    srcY += band.rows;
    y += h + (i < 2 ? 6 : 2);
    return item;
  });
  app.layoutW = cssW;
  app.gutter = gutter;
  cv.width = Math.round(cssW * DPR);
  cv.height = Math.round((y + 16) * DPR);
  cv.style.height = `${y + 16}px`;
}

function renderSpacetime() {
  const cv = $('spacetime');
  const ctx = cv.getContext('2d');
  ctx.setTransform(DPR, 0, 0, DPR, 0, 0);
  ctx.fillStyle = '#0b0e13';
  ctx.fillRect(0, 0, app.layoutW, cv.height / DPR);
  ctx.imageSmoothingEnabled = false;
  const H = app.hist;
  const t = app.streamer.t;
  const x0 = app.gutter;
  const plotW = app.layoutW - x0 - 4;
  const sx = plotW / H;
  // pieces of the ring buffer, oldest first: [srcX, width]
  const pieces = t <= H ? [[0, t]] : [[t % H, H - (t % H)], [0, t % H]];
  const filled = Math.min(t, H);
  for (const item of app.layout) {
    let dx = x0 + (H - filled) * sx;
    for (const [srcX, w] of pieces) {
      if (w > 0) ctx.drawImage(app.off, srcX, item.srcY, w, item.band.rows, dx, item.dy, w * sx, item.dh);
      dx += w * sx;
    }
  }
  ctx.fillStyle = '#8b949e';
  ctx.font = '11px system-ui, sans-serif';
  ctx.textAlign = 'right';
  ctx.textBaseline = 'middle';
  for (const item of app.layout) {
    if (item.dh >= 10) ctx.fillText(item.band.label, x0 - 6, item.dy + item.dh / 2);
  }
  const bottom = app.layout.length ? app.layout[app.layout.length - 1].dy + app.layout[app.layout.length - 1].dh : 0;
  ctx.textBaseline = 'top';
  ctx.fillText(`t = ${t}`, x0 + plotW, bottom + 3);
  ctx.textAlign = 'left';
  ctx.fillText(t > H ? `t = ${t - H}` : '', x0, bottom + 3);
}

function classLabel(i) {
  const c = app.c;
  if (c.task === 'copy') return i === 0 ? 'blank' : (i === 9 ? '|' : String(i));
  return String(i);
}

function buildBars() {
  const el = $('bars');
  el.innerHTML = '';
  const c = app.c;
  if (c.outputKind !== 'logits' || c.outputSize > 40) return;
  for (let i = 0; i < c.outputSize; i++) {
    const lab = document.createElement('span');
    lab.className = 'lab';
    lab.textContent = classLabel(i);
    const bar = document.createElement('div');
    bar.className = 'bar';
    const fill = document.createElement('div');
    fill.className = 'fill';
    bar.append(fill);
    const val = document.createElement('span');
    val.className = 'val';
    el.append(lab, bar, val);
  }
}

function renderOutput() {
  const c = app.c;
  const last = app.last;
  const seq = app.seq;
  const done = app.streamer.t >= seq.T;
  if (c.outputKind === 'logits' && c.outputSize <= 40) {
    const kids = $('bars').children;
    const top = last ? argmax(last.out) : -1;
    for (let i = 0; i < c.outputSize; i++) {
      const p = last ? last.out[i] : 0;
      const [lab, bar, val] = [kids[3 * i], kids[3 * i + 1], kids[3 * i + 2]];
      bar.firstChild.style.width = `${(100 * p).toFixed(1)}%`;
      val.textContent = last ? `${(100 * p).toFixed(1)}%` : '';
      for (const e of [lab, bar, val]) e.classList.toggle('top', i === top);
    }
  }
  const a = $('answer');
  if (!last) {
    a.innerHTML = '<span class="dim">press play</span>';
    return;
  }
  if (seq.kind === 'copy') {
    const k = seq.symbols.length;
    const start = seq.T - k;
    const got = app.history.slice(start).map((v, i) => {
      const ok = v === seq.symbols[i];
      return `<span class="${ok ? 'good' : 'bad'}">${v}</span>`;
    });
    const recalled = got.join(' ') || '<span class="dim">(after the delimiter)</span>';
    a.innerHTML = `given: ${seq.symbols.join(' ')}<br>recalled: ${recalled}`;
    return;
  }
  if (c.outputKind === 'regression') {
    const y = last.y;
    const text = y.length === 1 ? y[0].toFixed(4) : `[${Array.from(y, (v) => v.toFixed(3)).join(', ')}]`;
    let extra = '';
    if (seq.kind === 'adding') {
      extra = `<br>target ${seq.target.toFixed(4)} = ${seq.parts[0].toFixed(3)} + ${seq.parts[1].toFixed(3)}`;
      const err = Math.abs(y[0] - seq.target);
      if (done) extra += ` · |error| <span class="${err < 0.1 ? 'good' : 'bad'}">${err.toFixed(4)}</span>`;
    }
    a.innerHTML = `${done ? 'answer' : 'running answer'} <span class="big">${text}</span>${extra}`;
    return;
  }
  const k = argmax(last.out);
  const p = (100 * last.out[k]).toFixed(1);
  if (done) {
    const lab = seq.label;
    const mark = k === lab ? '<span class="good">✓</span>' : '<span class="bad">✗</span>';
    const verdict = lab == null ? '' : ` · label ${lab} ${mark}`;
    a.innerHTML = `prediction <span class="big">${classLabel(k)}</span> (${p}%)${verdict}`;
  } else {
    a.innerHTML = `guess after ${app.streamer.t} of ${seq.T} steps: <span class="big">${classLabel(k)}</span> (${p}%)`;
  }
}

function renderInput() {
  const seq = app.seq;
  const c = app.c;
  const t = app.streamer.t;
  if (seq.kind === 'image') {
    const cv = $('seen');
    const ctx = cv.getContext('2d');
    if (!app.seen) {
      app.seen = ctx.createImageData(IMAGE_SIDE, IMAGE_SIDE);
      app.seenT = 0;
      for (let i = 0; i < app.seen.data.length; i += 4) app.seen.data.set([38, 46, 66, 255], i); // not seen yet
    }
    for (; app.seenT < t; app.seenT++) {
      const pos = c.permutation ? c.permutation[app.seenT] : app.seenT;
      const v = Math.round(Math.min(255, Math.max(0, seq.raw[pos])));
      app.seen.data.set([v, v, v, 255], pos * 4);
    }
    ctx.putImageData(app.seen, 0, 0);
    if (t > 0 && t < seq.T) {
      const pos = c.permutation ? c.permutation[t - 1] : t - 1;
      ctx.fillStyle = '#f0a030';
      ctx.fillRect(pos % IMAGE_SIDE, Math.floor(pos / IMAGE_SIDE), 1, 1);
    }
    return;
  }
  const el = $('seq-text');
  if (!seq.tape) {
    el.textContent = `${seq.T} steps of ${c.inputSize} values; the input band of the space-time image shows them.`;
    return;
  }
  el.innerHTML = seq.tape.map((s, i) => {
    const cls = i === t - 1 ? 'cur' : (i < t ? 'seen' : 'unseen');
    return `<span class="${cls}">${s}</span>`;
  }).join(' ');
}

// --- the image inputs: bundled digits and the drawing pad ----------------------------------------------------------
async function loadDigits() {
  try {
    const r = await fetch('digits.json');
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    app.digits = (await r.json()).digits;
  } catch (e) {
    app.digits = [];
    console.warn(`digits.json: ${e.message}`);
  }
  const want = Number(params.get('digit'));
  if (Number.isInteger(want) && want >= 0) app.digitIndex = want;
}

function paintImage(canvas, pixels) {
  const ctx = canvas.getContext('2d');
  const img = ctx.createImageData(IMAGE_SIDE, IMAGE_SIDE);
  for (let i = 0; i < pixels.length; i++) {
    const v = Math.round(Math.min(255, pixels[i]));
    img.data.set([v, v, v, 255], i * 4);
  }
  ctx.putImageData(img, 0, 0);
}

function buildPicker() {
  const el = $('digit-picker');
  el.innerHTML = '';
  (app.digits || []).forEach((d, i) => {
    const cv = document.createElement('canvas');
    cv.width = cv.height = IMAGE_SIDE;
    cv.className = 'pixelated';
    cv.title = `MNIST test image #${d.index} (label ${d.label})`;
    paintImage(cv, d.pixels);
    cv.addEventListener('click', () => {
      app.digitIndex = i;
      markPicker();
      startSequence(digitSequenceAt(i), { play: true });
    });
    el.append(cv);
  });
  markPicker();
}

function markPicker() {
  const drawn = app.seq && app.seq.drawn;
  [...$('digit-picker').children].forEach((cv, i) => cv.classList.toggle('active', i === app.digitIndex && !drawn));
}

function setupDrawing() {
  const cv = $('draw');
  let last = null;
  const pos = (e) => {
    const r = cv.getBoundingClientRect();
    return [((e.clientX - r.left) / r.width) * IMAGE_SIDE, ((e.clientY - r.top) / r.height) * IMAGE_SIDE];
  };
  const stamp = ([x, y]) => {
    // a soft pen about 2.5 px wide, like MNIST's anti-aliased strokes
    for (let py = Math.floor(y - 2); py <= Math.ceil(y + 2); py++) {
      for (let px = Math.floor(x - 2); px <= Math.ceil(x + 2); px++) {
        if (px < 0 || py < 0 || px >= IMAGE_SIDE || py >= IMAGE_SIDE) continue;
        const d = Math.hypot(px + 0.5 - x, py + 0.5 - y);
        const v = 255 * Math.min(1, Math.max(0, 1.6 - d));
        const k = py * IMAGE_SIDE + px;
        app.ink[k] = Math.max(app.ink[k], v);
      }
    }
  };
  const line = (a, b) => {
    const n = Math.max(1, Math.ceil(Math.hypot(b[0] - a[0], b[1] - a[1]) / 0.25));
    for (let i = 1; i <= n; i++) stamp([a[0] + ((b[0] - a[0]) * i) / n, a[1] + ((b[1] - a[1]) * i) / n]);
    paintImage(cv, app.ink);
  };
  cv.addEventListener('pointerdown', (e) => {
    cv.setPointerCapture(e.pointerId);
    last = pos(e);
    line(last, last);
  });
  cv.addEventListener('pointermove', (e) => {
    if (!last) return;
    const p = pos(e);
    line(last, p);
    last = p;
  });
  const up = () => { last = null; };
  cv.addEventListener('pointerup', up);
  cv.addEventListener('pointercancel', up);
  $('clear-drawing').addEventListener('click', () => {
    app.ink.fill(0);
    paintImage(cv, app.ink);
  });
  $('stream-drawing').addEventListener('click', () => {
    const raw = centred(app.ink);
    if (!raw) {
      showMessage('Draw a digit in the box first.');
      return;
    }
    clearMessage();
    const seq = imageSequence(raw, null, 'your drawing');
    seq.drawn = true;
    startSequence(seq, { play: true });
    markPicker();
  });
  paintImage(cv, app.ink);
}

/** MNIST digits are centred by their centre of mass: shift the drawing the same way (whole pixels). */
function centred(ink) {
  let m = 0;
  let mx = 0;
  let my = 0;
  for (let i = 0; i < ink.length; i++) {
    m += ink[i];
    mx += ink[i] * (i % IMAGE_SIDE);
    my += ink[i] * Math.floor(i / IMAGE_SIDE);
  }
  if (m === 0) return null;
  const dx = Math.round(13.5 - mx / m);
  const dy = Math.round(13.5 - my / m);
  const out = new Array(ink.length).fill(0);
  for (let y = 0; y < IMAGE_SIDE; y++) {
    for (let x = 0; x < IMAGE_SIDE; x++) {
      const sx = x - dx;
      const sy = y - dy;
      if (sx >= 0 && sy >= 0 && sx < IMAGE_SIDE && sy < IMAGE_SIDE) {
        out[y * IMAGE_SIDE + x] = Math.round(ink[sy * IMAGE_SIDE + sx]);
      }
    }
  }
  return out;
}

// --- controls ----------------------------------------------------------------------------------------------------
function setupControls() {
  $('play').addEventListener('click', () => (app.playing ? pause() : playStream()));
  $('step').addEventListener('click', () => stepButton());
  $('reset').addEventListener('click', () => { pause(); resetStream(); });
  const speed = $('speed');
  if (params.get('speed')) {
    const opt = [...speed.options].find((o) => Number(o.value) === app.speed);
    if (opt) speed.value = opt.value;
  }
  speed.addEventListener('change', () => { app.speed = Number(speed.value); });
  $('new-seq').addEventListener('click', () => startSequence(newGeneratedSequence(), { play: true }));
  $('model-file').addEventListener('change', async (e) => {
    const f = e.target.files[0];
    if (!f) return;
    try {
      clearMessage();
      await loadModel(new Uint8Array(await f.arrayBuffer()), f.name);
    } catch (err) {
      showMessage(`${f.name}: ${err.message || err}`);
    }
  });
  document.addEventListener('keydown', (e) => {
    if (['INPUT', 'SELECT', 'TEXTAREA'].includes(document.activeElement?.tagName)) return;
    if (e.key === ' ') { e.preventDefault(); $('play').click(); }
    else if (e.key === 'ArrowRight') { e.preventDefault(); stepButton(); }
    else if (e.key === 'r') $('reset').click();
  });
  window.addEventListener('resize', () => { if (app.model) { layoutSpacetime(); render(); } });
}

async function stepButton() {
  if (!app.model || app.busy) return;
  pause();
  app.busy = true;
  try {
    await stepOnce();
  } finally {
    app.busy = false;
  }
  render();
}

// --- start -------------------------------------------------------------------------------------------------------
async function start() {
  setupControls();
  setupDrawing();
  try {
    const { ort, source, version } = await loadOrt({ allowCdn: params.get('cdn') !== '0' });
    app.ort = ort;
    app.ortSource = source;
    app.ortVersion = version;
    const badge = $('ort-info');
    badge.textContent = `onnxruntime-web ${version} · ${source === 'local' ? 'local copy' : 'CDN'}`;
    badge.classList.toggle('cdn', source === 'cdn');
  } catch (e) {
    showMessage(e.message);
    $('model-info').textContent = 'no runtime';
    return { ok: false, error: e.message };
  }
  await loadDigits();
  try {
    await loadModel(params.get('model') || 'model.onnx');
  } catch (e) {
    showMessage(e.message || String(e));
    $('model-info').textContent = 'no model loaded';
    return { ok: false, error: app.error };
  }
  return { ok: true };
}

const ready = start().catch((e) => {
  showMessage(`the page failed to start: ${e.message || e}`);
  return { ok: false, error: app.error };
});

// --- test hook: drive the page deterministically (tests/test_web.py) ---------------------------------------------
window.wavexport = {
  ready: ready.then(() => status()),
  status,
  /** Load a model (URL or bytes); resolves to its summary. */
  load: async (source, name) => loadModel(source, name),
  /** Stream raw values (raster order, unscaled: e.g. 784 pixels 0..255) through a fresh state, with no drawing.
   *  Permutation and scale come from the metadata. Resolves to {t, y, probs, pred, state: {name: [...]}}. */
  runSequence: async (values, { raw = true } = {}) => {
    const c = app.c;
    const xs = raw ? prepareInputs(c, values) : Float32Array.from(values);
    const s = app.model.streamer();
    const n = c.inputSize;
    for (let t = 0; t < xs.length / n; t++) await s.step(xs.subarray(t * n, (t + 1) * n));
    const state = {};
    for (const [name, v] of Object.entries(s.stateRow0())) state[name] = Array.from(v);
    const y = Array.from(s.y);
    const probs = c.outputKind === 'logits' ? softmax(y) : null;
    return { t: s.t, y, probs, pred: probs ? argmax(y) : null, state };
  },
  /** Stream raw image values through the animated page (as a click on a digit would); resolves when it stops:
   *  at pauseAt, or at the end. */
  stream: (values, { speed = 1, pauseAt = null, label = null } = {}) => {
    const seq = isImageTask(app.c) ? imageSequence(values, label, 'test input')
      : { kind: 'random', name: 'test input', xs: prepareInputs(app.c, values), T: values.length / app.c.inputSize };
    startSequence(seq);
    return window.wavexport.play({ speed, pauseAt });
  },
  /** Play the current sequence (animation frames); resolves to the result when it stops. */
  play: ({ speed = null, pauseAt = null } = {}) => {
    if (speed) {
      app.speed = speed;
      const opt = [...$('speed').options].find((o) => Number(o.value) === speed);
      if (opt) $('speed').value = opt.value;
    }
    app.pauseAt = pauseAt;
    const done = new Promise((resolve) => app.waiters.push(resolve));
    playStream();
    if (!app.playing) settle();
    return done;
  },
  pause,
  result,
  digits: () => app.digits,
};

function status() {
  return { ok: !!app.model && !app.error, error: app.error, ortSource: app.ortSource, ortVersion: app.ortVersion,
    model: summary(), t: app.streamer ? app.streamer.t : 0, playing: app.playing };
}
