"""The paper's five benchmark tasks, by name."""
from __future__ import annotations

from .base import Split, Task
from .data import DataError, load_cifar10, load_mnist, resolve_data_dir
from .images import DatasetTask, NoisyCIFAR10, SequentialMNIST
from .synthetic import AddingTask, CopyTask, SyntheticTask

TASKS = {
    "copy": "remember 10 symbols across T blanks and recall them (length T+20)",
    "adding": "sum the two marked values of a length-T sequence (MSE on the last step)",
    "smnist": "MNIST pixel by pixel in raster order (784 steps)",
    "psmnist": "MNIST pixel by pixel under a fixed random permutation (784 steps)",
    "nscifar10": "CIFAR-10 row by row (32 steps) followed by Gaussian noise up to 1000 steps",
}


def make_task(name: str, seq: int | None = None, seed: int = 0, **state) -> Task:
    """Build a task by name. ``seq``: T for copy/adding, total length for nscifar10. ``state`` comes from
    ``Task.args()`` of a saved task (e.g. the psMNIST permutation) and wins over ``seed``."""
    if name == "copy":
        return CopyTask(state.get("T", seq or 80))
    if name == "adding":
        return AddingTask(state.get("T", seq or 100))
    if name in ("smnist", "psmnist"):
        if seq not in (None, 784):
            raise ValueError(f"{name} has a fixed length of 784 steps")
        return SequentialMNIST(name == "psmnist", state.get("permutation"), seed)
    if name == "nscifar10":
        return NoisyCIFAR10(state.get("seq_len", seq or 1000))
    raise ValueError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}")


def task_from_state(d: dict) -> Task:
    return make_task(d["name"], **d.get("args", {}))


__all__ = ["TASKS", "make_task", "task_from_state", "Task", "Split", "SyntheticTask", "DatasetTask", "CopyTask",
           "AddingTask", "SequentialMNIST", "NoisyCIFAR10", "DataError", "load_mnist", "load_cifar10",
           "resolve_data_dir"]
