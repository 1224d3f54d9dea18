"""The ``wavexport`` command line: click lives here and only here, one module per command group, each a thin layer
over plain functions of the packages below. Heavy imports (torch, onnx) stay inside the commands, so
``wavexport --help`` is fast."""
from __future__ import annotations

import sys

import click

from .. import __version__
from ..core.errors import WavexportError


class Group(click.Group):
    """Turns the toolkit's own errors into one line on stderr and its exit status: no traceback for a user mistake;
    Ctrl-C exits with status 130, as the shell reports a process killed by SIGINT."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except WavexportError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:  # not click's "Aborted!" and status 1, which scripts read as a failed check
            click.echo("\ninterrupted", err=True)
            sys.exit(130)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="wavexport")
def main():
    """Train the Wave-RNN and its baselines on the paper's tasks, export them to ONNX, stream them.

    \b
    wavexport train psmnist --preset quick     train a small wRNN on a CPU in minutes
    wavexport eval runs/psmnist-wrnn-quick     test accuracy of its best checkpoint
    wavexport list                             tasks, architectures and paper parameter counts
    """


from .demo import demo_cmd  # noqa: E402
from .export import export_cmd, inspect_cmd  # noqa: E402
from .plot import plot  # noqa: E402
from .reproduce import reproduce_cmd  # noqa: E402
from .run import bench_cmd, run_cmd, sample_cmd  # noqa: E402
from .sweep import sweep  # noqa: E402
from .train import average_cmd, eval_cmd, list_cmd, train  # noqa: E402

for _cmd, _name in ((train, "train"), (eval_cmd, "eval"), (average_cmd, "average"), (list_cmd, "list"),
                    (export_cmd, "export"), (inspect_cmd, "inspect"), (run_cmd, "run"), (sample_cmd, "sample"),
                    (bench_cmd, "bench"), (plot, "plot"), (reproduce_cmd, "reproduce"), (demo_cmd, "demo"),
                    (sweep, "sweep")):
    main.add_command(_cmd, _name)
