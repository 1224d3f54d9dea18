"""``python -m wavexport``: the CLI (what torchrun and subprocesses call)."""
from .cli import main

main(prog_name="wavexport")
