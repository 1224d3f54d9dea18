"""The browser demo (examples/web, ``wavexport demo``): its server, and the page itself in headless Chromium.

The page runs onnxruntime-web (WebAssembly) from the local copy that ``npm ci`` puts in examples/web; Chromium is
driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: NUL-separated JSON on fds 3 and 4), so
nothing beyond the standard library is needed. The browser tests skip only when chromium is not installed
(``apt-get install chromium``); without the local onnxruntime-web they fail, saying to run ``npm ci``.

Run as a script to redraw the README's screenshot: ``python tests/test_web.py MODEL.onnx docs/demo.png``.
"""
from __future__ import annotations

import base64
import fcntl
import gzip
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "examples" / "web"
TOL = 1e-4


def _chromium() -> str | None:
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


CHROMIUM = _chromium()
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")


# --- a DevTools-protocol client over a pipe ------------------------------------------------------------------------
class CDPError(RuntimeError):
    pass


def _high_fd(fd: int) -> int:
    """Move fd to 10 or above (close-on-exec), so that dup2 into 0..4 in the child cannot clobber another."""
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return new


class Chromium:
    """Headless Chromium, driven over ``--remote-debugging-pipe`` (the browser reads fd 3 and writes fd 4)."""

    def __init__(self, executable: str, width: int = 1280, height: int = 960):
        self.width, self.height = width, height
        self.tmp = Path(tempfile.mkdtemp(prefix="wavexport-chromium-"))
        cmd_r, cmd_w = (_high_fd(f) for f in os.pipe())
        out_r, out_w = (_high_fd(f) for f in os.pipe())
        log = _high_fd(os.open(self.tmp / "chromium.log", os.O_WRONLY | os.O_CREAT, 0o644))
        null = _high_fd(os.open(os.devnull, os.O_RDONLY))
        args = [executable, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
                f"--user-data-dir={self.tmp / 'profile'}", "--no-first-run", "--no-default-browser-check",
                "--disable-extensions", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-dev-shm-usage", "--mute-audio", "--hide-scrollbars",
                "--disable-renderer-backgrounding", "--disable-background-timer-throttling",
                "--disable-backgrounding-occluded-windows", f"--window-size={width},{height}", "about:blank"]
        actions = [(os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, log, 1), (os.POSIX_SPAWN_DUP2, log, 2),
                   (os.POSIX_SPAWN_DUP2, cmd_r, 3), (os.POSIX_SPAWN_DUP2, out_w, 4)]
        try:
            self.pid = os.posix_spawn(executable, args, os.environ, file_actions=actions, setpgroup=0)
        finally:
            for fd in (cmd_r, out_w, log, null):
                os.close(fd)
        self._w, self._r = cmd_w, out_r
        self._next = 0
        self._lock = threading.Condition()
        self._replies: dict[int, dict] = {}
        self.events: list[dict] = []
        self._closed = False
        threading.Thread(target=self._reader, daemon=True).start()
        self.send("Browser.getVersion", timeout=60)  # the browser is up

    def _reader(self):
        buf = b""
        while True:
            try:
                chunk = os.read(self._r, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                with self._lock:
                    self._closed = True
                    self._lock.notify_all()
                return
            buf += chunk
            *msgs, buf = buf.split(b"\0")
            with self._lock:
                for m in msgs:
                    msg = json.loads(m)
                    if "id" in msg:
                        self._replies[msg["id"]] = msg
                    else:
                        self.events.append(msg)
                self._lock.notify_all()

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60):
        with self._lock:
            self._next += 1
            i = self._next
        msg = {"id": i, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self._lock:
            while i not in self._replies:
                left = deadline - time.monotonic()
                if self._closed or left <= 0:
                    raise CDPError(f"{method}: {'the browser exited' if self._closed else f'no reply in {timeout} s'}"
                                   f"{self._log_tail()}")
                self._lock.wait(left)
            reply = self._replies.pop(i)
        if "error" in reply:
            raise CDPError(f"{method}: {reply['error'].get('message')} {reply['error'].get('data', '')}")
        return reply.get("result", {})

    def _log_tail(self) -> str:
        try:
            return "\nchromium log:\n" + (self.tmp / "chromium.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def console(self) -> list[str]:
        """What the page logged (console messages and uncaught exceptions), for failure messages."""
        out = []
        with self._lock:
            events = list(self.events)
        for e in events:
            p = e.get("params", {})
            if e.get("method") == "Runtime.consoleAPICalled":
                out.append(f"console.{p.get('type')}: " + " ".join(str(a.get("value", a.get("description", "")))
                                                                     for a in p.get("args", [])))
            elif e.get("method") == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                out.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")
        return out

    def open(self, url: str, timeout: float = 60) -> "Page":
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        sid = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, sid)
        for m in ("Runtime.enable", "Page.enable"):
            self.send(m, session=sid)
        self.send("Emulation.setDeviceMetricsOverride", {"width": self.width, "height": self.height,
                                                         "deviceScaleFactor": 1, "mobile": False}, session=sid)
        self.send("Page.navigate", {"url": url}, session=sid)
        page.wait_for("typeof window.wavexport === 'object' && document.readyState === 'complete'", timeout)
        return page

    def close(self):
        try:
            self.send("Browser.close", timeout=10)
        except CDPError:
            pass
        for _ in range(100):
            pid, _status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(0.1)
        else:
            os.killpg(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        for fd in (self._w, self._r):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.tmp, ignore_errors=True)


class Page:
    def __init__(self, browser: Chromium, session: str):
        self.browser, self.session = browser, session

    def eval(self, expression: str, timeout: float = 120):
        """Evaluate in the page, awaiting a promise; the value comes back as JSON."""
        r = self.browser.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                   "returnByValue": True}, self.session, timeout)
        if "exceptionDetails" in r:
            d = r["exceptionDetails"]
            raise CDPError(f"{expression[:80]}: {d.get('exception', {}).get('description') or d.get('text')}\n"
                           + "\n".join(self.browser.console()))
        return r["result"].get("value")

    def wait_for(self, condition: str, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.eval(f"!!({condition})", timeout=10):
                    return
            except CDPError:  # the old document went away mid-navigation
                pass
            if time.monotonic() > deadline:
                raise CDPError(f"timed out waiting for {condition}\n" + "\n".join(self.browser.console()))
            time.sleep(0.1)

    def screenshot(self, path: Path, full_page: bool = True) -> Path:
        params = {"format": "png"}
        if full_page:
            size = self.browser.send("Page.getLayoutMetrics", session=self.session)["cssContentSize"]
            params.update(clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
                          captureBeyondViewport=True)
        data = self.browser.send("Page.captureScreenshot", params, self.session)["data"]
        Path(path).write_bytes(base64.b64decode(data))
        return Path(path)


# --- pictures ------------------------------------------------------------------------------------------------------
def png_pixels(data: bytes) -> np.ndarray:
    """An 8-bit RGB(A) PNG -> [H, W, C] uint8 (Pillow when installed, else this plain decoder)."""
    try:
        from PIL import Image

        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    except ImportError:
        pass
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, w = 8, b"", 0
    while pos < len(data):
        n = int.from_bytes(data[pos:pos + 4], "big")
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, ctype, interlace = (int.from_bytes(body[0:4], "big"), int.from_bytes(body[4:8], "big"),
                                             body[8], body[9], body[12])
            assert depth == 8 and ctype in (2, 6) and not interlace, "only 8-bit RGB/RGBA, non-interlaced"
            bpp = 3 if ctype == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + w * bpp)
    out = np.zeros((h, w * bpp), np.int32)
    prev = np.zeros(w * bpp, np.int32)
    for y in range(h):
        f, line = raw[y, 0], raw[y, 1:].astype(np.int32)
        if f == 0:
            cur = line
        elif f == 1:
            cur = np.cumsum(line.reshape(w, bpp), 0).reshape(-1) % 256
        elif f == 2:
            cur = (line + prev) % 256
        else:
            cur = line.copy()
            for i in range(w * bpp):
                a = cur[i - bpp] if i >= bpp else 0
                b, c = prev[i], prev[i - bpp] if i >= bpp else 0
                if f == 3:
                    cur[i] = (cur[i] + (a + b) // 2) % 256
                else:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    cur[i] = (cur[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) % 256
        out[y], prev = cur, cur
    return out.reshape(h, w, bpp)[..., :3].astype(np.uint8)


def assert_not_blank(png: Path, regions: dict | None = None):
    """The picture is not blank: many colours, none covering most of it; so is each region {name: (x, y, w, h)}."""
    img = png_pixels(png.read_bytes())
    for name, (x, y, w, h) in {"the page": (0, 0, img.shape[1], img.shape[0]), **(regions or {})}.items():
        part = img[int(y):int(y + h), int(x):int(x + w)].astype(np.int32)
        assert part.size, f"{png}: {name} is outside the picture"
        flat = ((part[..., 0] << 16) | (part[..., 1] << 8) | part[..., 2]).reshape(-1)
        colors, counts = np.unique(flat, return_counts=True)
        need = 100 if name == "the page" else 20
        assert len(colors) > need, f"{png}: {name} has only {len(colors)} colours: blank?"
        assert counts.max() / len(flat) < 0.8, f"{png}: {counts.max() / len(flat):.0%} of {name} is one colour"
    return img


# --- models and data -----------------------------------------------------------------------------------------------
def wavexport_cmd() -> list[str]:
    """The installed ``wavexport`` command (the console script beside this Python), else ``python -m wavexport``."""
    exe = Path(sys.executable).with_name("wavexport")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "wavexport"]


def run_cli(*args, env=None, timeout=900):
    env = {**os.environ, "WAVEXPORT_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    r = subprocess.run([*wavexport_cmd(), *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout)
    assert r.returncode == 0, f"wavexport {' '.join(map(str, args))} failed:\n{r.stdout}\n{r.stderr}"
    return r


def mnist_test(data_dir: Path, n: int):
    raw = data_dir / "MNIST" / "raw"
    with gzip.open(raw / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 784)
    with gzip.open(raw / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    return images[:n], labels[:n]


def reference(model: Path, raw: np.ndarray) -> dict:
    """Python ONNX Runtime on the same raw sequence, from the documented contract alone (docs/EXPORT.md)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    names, shapes = json.loads(meta["state.names"]), json.loads(meta["state.shapes"])
    perm = json.loads(meta["input.permutation"] or "[]")
    n_in = int(meta["input.size"])
    xs = np.asarray(raw, np.float32).reshape(-1, n_in)
    if perm:
        xs = xs[perm]
    xs = (xs * np.float32(float(meta["input.scale"]))).astype(np.float32)
    state = {n: np.zeros([1 if d == "batch" else d for d in shapes[n]], np.float32) for n in names}
    for t in range(len(xs)):
        y, *nxt = sess.run(None, {"x": xs[t][None], **state})
        state = dict(zip(names, nxt))
    y = y[0].astype(np.float64)
    probs = np.exp(y - y.max())
    return {"y": y, "probs": probs / probs.sum(), "state": {n: s[0].reshape(-1) for n, s in state.items()}}


def assert_matches(page: dict, ref: dict, what: str):
    err_p = np.abs(np.asarray(page["probs"]) - ref["probs"]).max()
    err_y = np.abs(np.asarray(page["y"]) - ref["y"]).max()
    err_s = max(np.abs(np.asarray(page["state"][n]) - ref["state"][n]).max() for n in ref["state"])
    assert err_p <= TOL and err_y <= TOL and err_s <= TOL, (
        f"{what}: page vs Python ONNX Runtime: max |error| probs {err_p:.2e}, logits {err_y:.2e}, state {err_s:.2e}")


@pytest.fixture(scope="module")
def psmnist_model(tmp_path_factory):
    """A wRNN quick-trained on real psMNIST (20 steps) and exported as a step graph, through the CLI."""
    from conftest import DATA_DIR, HAVE_MNIST

    if not HAVE_MNIST:
        pytest.skip(f"real MNIST not found under {DATA_DIR}")
    d = tmp_path_factory.mktemp("web-psmnist")
    run_cli("train", "psmnist", "--preset", "quick", "--steps", 20, "--eval-limit", 200, "--threads", 1,
            "--data-dir", DATA_DIR, "--out", d / "run", "--quiet")
    run_cli("export", d / "run", d / "model.onnx", "--data-dir", DATA_DIR)
    return {"model": d / "model.onnx", "data": DATA_DIR}


@pytest.fixture(scope="module")
def lstm_model(tmp_path_factory):
    """A two-tensor state (h, c), not a wave: the page draws each tensor as one ring."""
    d = tmp_path_factory.mktemp("web-lstm")
    run_cli("train", "copy", "--arch", "lstm", "--preset", "quick", "--seq", 6, "--hidden", 5, "--steps", 3,
            "--eval-every", 3, "--eval-batch", 16, "--threads", 1, "--out", d / "run", "--quiet")
    run_cli("export", d / "run", d / "model.onnx")
    return d / "model.onnx"


def _web_root_ready():
    if not (WEB / "node_modules" / "onnxruntime-web" / "dist" / "ort.wasm.min.mjs").exists():
        pytest.fail("examples/web has no local onnxruntime-web: run `npm ci --no-audit --no-fund` in examples/web "
                    "(.ci/run does); the test must not reach the CDN")


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    b = Chromium(CHROMIUM)
    yield b
    b.close()


# --- the server (no browser needed) --------------------------------------------------------------------------------
def _get(url):
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.status, r.headers.get("Content-Type", ""), r.read()


def test_server_serves_the_page_and_the_model_on_loopback(lstm_model):
    from wavexport.webdemo import serve

    server = serve(lstm_model, port=0)
    try:
        assert server.server_address[0] == "127.0.0.1" and server.url.startswith("http://127.0.0.1:")
        status, ctype, body = _get(server.url)
        assert status == 200 and ctype.startswith("text/html") and b"app.mjs" in body
        assert _get(server.url + "app.mjs")[1].startswith("text/javascript")
        assert _get(server.url + "model.onnx?x=1")[2] == lstm_model.read_bytes()
        if (WEB / "node_modules").exists():
            wasm = next((WEB / "node_modules" / "onnxruntime-web" / "dist").glob("*.wasm")).name
            assert _get(f"{server.url}node_modules/onnxruntime-web/dist/{wasm}")[1] == "application/wasm"
        for bad in ("node_modules/", "../pyproject.toml", "nothing.js"):
            with pytest.raises(urllib.error.HTTPError) as e:
                _get(server.url + bad)
            assert e.value.code == 404
    finally:
        server.stop()
    with pytest.raises(OSError):  # stopped: the port is closed
        _get(server.url)


def test_server_errors_are_one_clear_line(tmp_path, lstm_model):
    from wavexport.webdemo import DemoError, find_web_root, serve

    with pytest.raises(DemoError, match="no such file"):
        serve(tmp_path / "missing.onnx", port=0)
    (tmp_path / "x.onnx").write_bytes(b"not onnx")
    with pytest.raises(DemoError, match="x.onnx"):
        serve(tmp_path / "x.onnx", port=0)
    with pytest.raises(DemoError, match="index.html"):
        find_web_root(tmp_path)
    assert find_web_root() == WEB.resolve()
    first = serve(lstm_model, port=0)
    try:
        with pytest.raises(DemoError, match=f"port {first.server_address[1]} .* in use"):
            serve(lstm_model, port=first.server_address[1])
    finally:
        first.stop()


def test_demo_prints_the_url_and_stops_cleanly_on_ctrl_c(lstm_model):
    p = subprocess.Popen([sys.executable, "-m", "wavexport.webdemo", str(lstm_model), "--port", "0", "--no-npm"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    try:
        line = ""
        while "http://" not in line:
            line = p.stdout.readline()
            assert line, "the demo exited without printing a URL"
        url = re.search(r"http://127\.0\.0\.1:\d+/", line).group(0)
        assert _get(url)[0] == 200
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=30)
        assert p.returncode == 0, out
        assert "Traceback" not in out and "stopped" in out
    finally:
        if p.poll() is None:
            p.kill()


def test_the_pinned_onnxruntime_web_version_is_the_same_everywhere():
    pkg = json.loads((WEB / "package.json").read_text())
    lock = json.loads((WEB / "package-lock.json").read_text())
    pinned = pkg["dependencies"]["onnxruntime-web"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", pinned), "pin an exact version: the CDN fallback loads the same one"
    assert lock["packages"]["node_modules/onnxruntime-web"]["version"] == pinned
    loader = (WEB / "ort-loader.mjs").read_text()
    assert f"ORT_VERSION = '{pinned}'" in loader


def test_bundled_digits_are_mnist_test_images():
    from conftest import DATA_DIR, HAVE_MNIST

    digits = json.loads((WEB / "digits.json").read_text())["digits"]
    assert len(digits) >= 3 and all(len(d["pixels"]) == 784 for d in digits)
    assert all(0 <= v <= 255 for d in digits for v in d["pixels"])
    if not HAVE_MNIST:
        pytest.skip(f"real MNIST not found under {DATA_DIR}: the digits' provenance is not checked")
    images, labels = mnist_test(DATA_DIR, max(d["index"] for d in digits) + 1)
    for d in digits:
        assert d["pixels"] == images[d["index"]].tolist() and d["label"] == int(labels[d["index"]])


# --- the page, in headless Chromium -------------------------------------------------------------------------------
@pytest.mark.slow
@needs_chromium
def test_page_streams_digits_like_python_onnxruntime(browser, psmnist_model, tmp_path):
    """Three MNIST test digits through the page: its final probabilities and state equal Python ONNX Runtime's."""
    from wavexport.webdemo import serve

    _web_root_ready()
    model = psmnist_model["model"]
    images, labels = mnist_test(psmnist_model["data"], 3)
    refs = [reference(model, img) for img in images]
    server = serve(model, port=0)
    try:
        page = browser.open(server.url + "?autoplay=0&cdn=0")
        status = page.eval("window.wavexport.ready")
        assert status["ok"], f"{status}\n" + "\n".join(browser.console())
        assert status["ortSource"] == "local" and status["ortVersion"] == json.loads(
            (WEB / "package.json").read_text())["dependencies"]["onnxruntime-web"]
        assert status["model"]["task"] == "psmnist" and status["model"]["permuted"]
        assert len(status["model"]["stateShapes"]["h"]) == 3  # a wRNN: [batch, channels, ring]
        for i, (img, ref) in enumerate(zip(images, refs)):
            # the hook: a fresh state, no drawing
            got = page.eval(f"window.wavexport.runSequence({json.dumps(img.tolist())})")
            assert got["t"] == 784
            assert_matches(got, ref, f"digit {i} (runSequence)")
            # the animated page, as a user sees it: one frame streams `speed` steps and draws them
            pause = ", pauseAt: 500" if i == 0 else ""
            got = page.eval(f"window.wavexport.stream({json.dumps(img.tolist())}, "
                            f"{{speed: 16, label: {int(labels[i])}{pause}}})")
            if i == 0:  # mid-stream: the waves are on the screen
                assert got["t"] == 500
                shot = page.screenshot(tmp_path / "demo.png")
                boxes = page.eval("Object.fromEntries(['ring', 'spacetime', 'seen'].map((id) => {"
                                  "const r = document.getElementById(id).getBoundingClientRect();"
                                  "return [id, [r.x, r.y, r.width, r.height]]; }))")
                assert_not_blank(shot, boxes)  # the rings, the space-time image and the digit so far are drawn
                answer = page.eval("document.getElementById('answer').textContent")
                assert "guess after 500 of 784" in answer
                got = page.eval("window.wavexport.play()")
            assert got["t"] == 784
            assert_matches(got, ref, f"digit {i} (streamed)")
        answer = page.eval("document.getElementById('answer').textContent")
        assert answer.startswith("prediction") and f"label {int(labels[2])}" in answer
        # a digit drawn with the mouse: a vertical stroke (a "1"), streamed by its button
        box = page.eval("(({x, y, width, height}) => ({x, y, width, height}))("
                        "document.getElementById('draw').getBoundingClientRect())")
        stroke = [(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * (0.2 + 0.06 * k)) for k in range(11)]
        for kind, (x, y) in [("mousePressed", stroke[0]), *[("mouseMoved", p) for p in stroke[1:]],
                             ("mouseReleased", stroke[-1])]:
            browser.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left",
                                                      "buttons": 0 if kind == "mouseReleased" else 1,
                                                      "clickCount": 1}, page.session)
        page.eval("document.getElementById('stream-drawing').click()")
        page.wait_for("window.wavexport.result().t === 784", 120)
        drawn = page.eval("window.wavexport.result()")
        assert page.eval("document.getElementById('seq-name').textContent").endswith("your drawing")
        assert abs(sum(drawn["probs"]) - 1) < 1e-6
        assert not page.eval("window.wavexport.status().error")
    finally:
        server.stop()


@needs_chromium
def test_page_runs_a_synthetic_task_with_a_two_tensor_state(browser, lstm_model):
    """Any arch: an LSTM (states h and c, each drawn as one ring) on the copy task, loaded as bytes."""
    from wavexport.webdemo import serve

    _web_root_ready()
    server = serve(lstm_model, port=0)
    try:
        page = browser.open(server.url + "?autoplay=0&cdn=0")
        status = page.eval("window.wavexport.ready")
        assert status["ok"], f"{status}\n" + "\n".join(browser.console())
        assert status["model"]["task"] == "copy" and status["model"]["stateNames"] == ["h", "c"]
        T = status["model"]["seqLen"]
        rng = np.random.default_rng(0)
        tokens = [*rng.integers(1, 9, 10), *[0] * (T - 21), 9, *[0] * 10]
        xs = np.eye(10, dtype=np.float32)[tokens].reshape(-1)
        got = page.eval(f"window.wavexport.runSequence({json.dumps(xs.tolist())})")
        assert_matches(got, reference(lstm_model, xs), "copy/lstm")
        # the page's own generated sequence plays to the end and shows the recall
        page.eval("document.getElementById('new-seq').click()")
        page.wait_for("window.wavexport.result().t === window.wavexport.result().T", 60)
        assert page.eval("document.getElementById('answer').textContent").startswith("given:")
        assert page.eval("document.getElementById('ring-note').textContent").startswith("(lstm")
    finally:
        server.stop()


@needs_chromium
def test_page_says_clearly_when_onnxruntime_web_cannot_load(browser, lstm_model, tmp_path):
    """No local copy (no npm ci) and no CDN allowed: the page shows what to do, instead of a blank."""
    from wavexport.webdemo import serve

    root = tmp_path / "web"
    shutil.copytree(WEB, root, ignore=shutil.ignore_patterns("node_modules"))
    server = serve(lstm_model, port=0, web_root=root)
    try:
        page = browser.open(server.url + "?cdn=0")
        status = page.eval("window.wavexport.ready")
        assert not status["ok"] and "could not be loaded" in status["error"] and "npm ci" in status["error"]
        assert page.eval("!document.getElementById('message').hidden")
    finally:
        server.stop()


if __name__ == "__main__":  # python tests/test_web.py MODEL.onnx OUT.png [STEPS [DIGIT]]: a screenshot mid-stream
    from wavexport.webdemo import serve

    model, out = Path(sys.argv[1]), Path(sys.argv[2])
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 560
    digit = int(sys.argv[4]) if len(sys.argv) > 4 else 4
    server = serve(model, port=0)
    b = Chromium(CHROMIUM, width=1200, height=900)
    try:
        page = b.open(server.url + "?autoplay=0&cdn=0")
        print(page.eval("window.wavexport.ready"))
        page.eval(f"document.querySelectorAll('#digit-picker canvas')[{digit}].click()")  # as a user would
        page.eval(f"window.wavexport.play({{speed: 8, pauseAt: {steps}}})")
        page.screenshot(out)
        print(out, out.stat().st_size)
    finally:
        b.close()
        server.stop()
