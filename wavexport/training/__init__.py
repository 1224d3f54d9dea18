from .checkpoint import CheckpointError, atomic_write, load_checkpoint, model_from_checkpoint, save_checkpoint
from .config import PRESETS, TrainConfig, make_config, preset_values
from .trainer import Trainer, TrainingError, evaluate_split, evaluate_synthetic, load_eval_splits, resolve_device

__all__ = ["CheckpointError", "atomic_write", "load_checkpoint", "model_from_checkpoint", "save_checkpoint",
           "PRESETS", "TrainConfig", "make_config", "preset_values", "Trainer", "TrainingError", "evaluate_split",
           "evaluate_synthetic", "load_eval_splits", "resolve_device"]
