// onnxruntime-web, from the local copy that `npm ci` installs here, else from the public CDN, same pinned version.
// Keep ORT_VERSION equal to the version in package.json (tests/test_web.py checks it).
export const ORT_VERSION = '1.30.0';
const FILE = 'ort.wasm.min.mjs'; // the WebAssembly (CPU) build; it fetches its .wasm from its own folder

export const SOURCES = {
  local: new URL(`./node_modules/onnxruntime-web/dist/${FILE}`, import.meta.url).href,
  cdn: `https://cdn.jsdelivr.net/npm/onnxruntime-web@${ORT_VERSION}/dist/${FILE}`,
};

/** Import onnxruntime-web: {ort, source: 'local' | 'cdn', url}. Throws one message naming every place tried. */
export async function loadOrt({ allowCdn = true } = {}) {
  const tried = [];
  for (const source of allowCdn ? ['local', 'cdn'] : ['local']) {
    const url = SOURCES[source];
    try {
      const ort = await import(url);
      ort.env.wasm.numThreads = 1;  // a step is tiny; threads need cross-origin isolation and would not pay
      ort.env.wasm.proxy = false;
      ort.env.logLevel = 'error';
      return { ort, source, url, version: (ort.env.versions && ort.env.versions.web) || ORT_VERSION };
    } catch (e) {
      tried.push(`${source}: ${url} (${e.message || e})`);
    }
  }
  throw new Error(`onnxruntime-web ${ORT_VERSION} could not be loaded. Tried ${tried.join('; ')}. `
    + 'Run `npm ci` in examples/web (or `wavexport demo`, which does it when npm is installed), '
    + 'or allow this page to reach the CDN.');
}
