"""Training: the loop that turns a config into a run directory (checkpoint.pt, best.pt, metrics.jsonl)."""
from .trainer import Trainer

__all__ = ["Trainer"]
