"""``demo``: the exported model streaming in a browser page, its waves drawn live."""
from __future__ import annotations

import click


@click.command("demo")
@click.argument("model", type=click.Path())
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="0 = any free port.")
@click.option("--open", "open_browser", is_flag=True, help="Open the page in the default browser.")
@click.option("--no-npm", is_flag=True,
              help="Never run npm ci (without a local onnxruntime-web the page uses the public CDN).")
@click.option("--verbose", "-v", is_flag=True, help="Log every request.")
def demo_cmd(model, port, open_browser, no_npm, verbose):
    """See it think: stream MODEL (an exported step model) in the browser and watch its waves.

    \b
    Serves examples/web and MODEL on 127.0.0.1 and prints the URL; Ctrl-C stops.
    onnxruntime-web: a local copy (npm ci in examples/web, run here when npm is installed), else the public CDN.
    """
    from ..webdemo import run_demo

    run_demo(model, port=port, open_browser=open_browser, npm_install=not no_npm, echo=click.echo, verbose=verbose)
