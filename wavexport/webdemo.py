"""``wavexport demo``: serve the browser demo (examples/web) and one exported model on 127.0.0.1.

The page is static (plain ES modules, onnxruntime-web), so all this does is serve files over HTTP — browsers load
neither modules nor WebAssembly from ``file://`` — with the model at the fixed URL ``/model.onnx``. Standard library
only: ``http.server``'s threading server, bound to the loopback interface.

    server = serve("model.onnx", port=0)     # started, in a daemon thread
    print(server.url)
    ...
    server.stop()

:func:`run_demo` is the whole command: npm install when needed, serve, print the URL, wait for Ctrl-C.
"""
from __future__ import annotations

import errno
import functools
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import webbrowser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

from .core.errors import WavexportError

HOST = "127.0.0.1"
DEFAULT_PORT = 8000
MODEL_URL = "/model.onnx"
ORT_PACKAGE = "onnxruntime-web"
# The file the page imports from the local copy (examples/web/ort-loader.mjs); its presence means "installed".
ORT_ENTRY = Path("node_modules") / ORT_PACKAGE / "dist" / "ort.wasm.min.mjs"
WEB_ROOT_ENV = "WAVEXPORT_WEB_ROOT"


class DemoError(WavexportError):
    """The demo cannot be served: no page, no model, or the port is taken."""


# --- finding the page --------------------------------------------------------------------------------------------
def _is_web_root(path: Path) -> bool:
    return (path / "index.html").is_file() and (path / "app.mjs").is_file()


def find_web_root(web_root=None) -> Path:
    """The folder holding the demo page: ``web_root`` if given, else $WAVEXPORT_WEB_ROOT, else ``examples/web`` of
    the source checkout this package runs from (an editable install: ``pip install -e .``)."""
    if web_root is not None:
        candidates = [("the given web root", Path(web_root))]
    elif os.environ.get(WEB_ROOT_ENV):
        candidates = [(f"${WEB_ROOT_ENV}", Path(os.environ[WEB_ROOT_ENV]))]
    else:
        candidates = [("the source checkout", Path(__file__).resolve().parents[1] / "examples" / "web")]
    for _, path in candidates:
        if _is_web_root(path):
            return path.resolve()
    where, path = candidates[0]
    raise DemoError(f"the demo page was not found: {path} ({where}) has no index.html and app.mjs. The page ships "
                    f"in the source repository's examples/web: install from a checkout (pip install -e .) or "
                    f"point ${WEB_ROOT_ENV} at that folder")


def ort_installed(web_root) -> bool:
    """Whether ``npm ci`` has put the local copy of onnxruntime-web in ``web_root``."""
    return (Path(web_root) / ORT_ENTRY).is_file()


def _say(line: str) -> None:
    print(line, flush=True)


def ensure_npm_install(web_root, echo: Callable[[str], None] = _say, npm: str | None = None) -> str:
    """Make sure the page has its local onnxruntime-web: run ``npm ci`` in ``web_root`` when it is missing and npm
    is installed. Returns ``"local"`` when the local copy is there afterwards, ``"cdn"`` when the page will fall
    back to the public CDN (no npm, or npm failed: said through ``echo``, never raised)."""
    web_root = Path(web_root)
    if ort_installed(web_root):
        return "local"
    npm = npm or shutil.which("npm")
    if npm is None:
        echo(f"npm not found: the page will load {ORT_PACKAGE} from the public CDN (install Node.js and npm, or run "
             f"`npm ci` in {web_root}, to serve a local copy)")
        return "cdn"
    cmd = [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"]
    echo(f"installing {ORT_PACKAGE} in {web_root} (npm ci) ...")
    try:
        r = subprocess.run(cmd, cwd=web_root, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        echo(f"npm ci failed ({e}): the page will load {ORT_PACKAGE} from the public CDN")
        return "cdn"
    if r.returncode != 0 or not ort_installed(web_root):
        last = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
        echo(f"npm ci failed (exit {r.returncode}: {last[0][:200]}): the page will load {ORT_PACKAGE} from the CDN")
        return "cdn"
    return "local"


# --- serving -----------------------------------------------------------------------------------------------------
class DemoHandler(SimpleHTTPRequestHandler):
    """Static files from the web root, the model at ``/model.onnx``; GET and HEAD only, no directory listings,
    nothing cached (a re-exported model shows on reload)."""

    model_path: Path = Path()
    extensions_map = {
        **SimpleHTTPRequestHandler.extensions_map,
        ".html": "text/html; charset=utf-8",
        ".js": "text/javascript; charset=utf-8",
        ".mjs": "text/javascript; charset=utf-8",
        ".css": "text/css; charset=utf-8",
        ".json": "application/json",
        ".wasm": "application/wasm",
        ".onnx": "application/octet-stream",
        ".map": "application/json",
    }

    def translate_path(self, path):
        clean = path.split("?", 1)[0].split("#", 1)[0]
        if clean == MODEL_URL:
            return str(self.model_path)
        return super().translate_path(path)

    def list_directory(self, path):
        self.send_error(404, "No listing")
        return None

    def end_headers(self):
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        log = getattr(self.server, "log", None)
        if log is not None:
            log(f"{self.address_string()} {format % args}")


class DemoServer(ThreadingHTTPServer):
    """The HTTP server of one demo; ``url`` is the page, ``stop()`` shuts it down and frees the port."""

    daemon_threads = True
    log: Callable[[str], None] | None = None

    def __init__(self, address, handler, model_path: Path, web_root: Path):
        super().__init__(address, handler)
        self.model_path, self.web_root = model_path, web_root
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    def start(self) -> "DemoServer":
        self._thread = threading.Thread(target=self.serve_forever, name="wavexport-demo", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def check_model(model_path) -> Path:
    """The model file, checked to be a wavexport export the page can stream (a step or sequence graph)."""
    from .core.contract import read_contract
    from .core.errors import ContractError
    from .core.io import check_onnx_file

    path = Path(model_path)
    check_onnx_file(path, DemoError)  # missing, a directory, a checkpoint: each said as such

    try:
        read_contract(str(path))
    except ContractError as e:  # an unreadable file's message names the path already: name it once
        msg = str(e)
        raise DemoError(msg if msg.startswith(f"{path}:") else f"{path}: {msg}") from None
    return path.resolve()


def serve(model_path, port: int = DEFAULT_PORT, open_browser: bool = False, web_root=None, host: str = HOST,
          log: Callable[[str], None] | None = None) -> DemoServer:
    """Serve the page and ``model_path`` on ``host:port`` (port 0: any free one), in a daemon thread; returns the
    started server (``server.url``, ``server.stop()``). ``open_browser`` opens the URL in the default browser.
    ``log`` receives one line per request (None: silent)."""
    model = check_model(model_path)
    root = find_web_root(web_root)
    handler = functools.partial(type("Handler", (DemoHandler,), {"model_path": model}), directory=str(root))
    try:
        server = DemoServer((host, int(port)), handler, model, root)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise DemoError(f"port {port} on {host} is in use: pick another with --port P "
                            f"(0 = any free port)") from None
        raise DemoError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    server.log = log
    server.start()
    if open_browser:
        threading.Thread(target=webbrowser.open, args=(server.url,), daemon=True).start()
    return server


def run_demo(model_path, port: int = DEFAULT_PORT, open_browser: bool = False, web_root=None, npm_install=True,
             echo: Callable[[str], None] = _say, verbose: bool = False) -> None:
    """The ``wavexport demo`` command: install the local onnxruntime-web if needed (and npm is there), serve, print
    the URL, block until Ctrl-C, then stop cleanly (the port is freed, exit status 0)."""
    model = check_model(model_path)
    root = find_web_root(web_root)
    if npm_install:
        ensure_npm_install(root, echo=echo)
    elif not ort_installed(root):
        echo(f"{ORT_PACKAGE} is not installed in {root}: the page will load it from the public CDN")
    if threading.current_thread() is threading.main_thread():
        # Ctrl-C must stop it even when started from a shell that ignores SIGINT for background jobs
        # (Python then never installs its KeyboardInterrupt handler).
        signal.signal(signal.SIGINT, signal.default_int_handler)
    server = serve(model, port=port, open_browser=open_browser, web_root=root,
                   log=(lambda line: echo(line)) if verbose else None)
    try:
        echo(f"serving {model.name} at {server.url}  (Ctrl-C stops)")
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        echo("stopped")
    finally:
        server.stop()


def _main(argv=None) -> int:
    """``python -m wavexport.webdemo MODEL.onnx [--port P] [--open] [--no-npm]``: the command without the CLI."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m wavexport.webdemo", description=run_demo.__doc__)
    ap.add_argument("model")
    ap.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 = any free port")
    ap.add_argument("--open", action="store_true", help="open the page in the default browser")
    ap.add_argument("--no-npm", action="store_true", help="never run npm ci (the page falls back to the CDN)")
    a = ap.parse_args(argv)
    try:
        run_demo(a.model, port=a.port, open_browser=a.open, npm_install=not a.no_npm)
    except WavexportError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(_main())
