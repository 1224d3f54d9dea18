"""Sequential image tasks: (permuted) sequential MNIST and noisy sequential CIFAR-10."""
from __future__ import annotations

import numpy as np
import torch

from .base import ClassifyLast, Split
from .data import load_cifar10, load_mnist

MNIST_PIXELS = 784


def split_train(x: np.ndarray, y: np.ndarray, n_valid: int, seed: int) -> tuple[Split, Split]:
    """Seeded train/validation split (the authors' was unseeded; ours is reproducible from the run's seed)."""
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed + 7919))
    x_t, y_t = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)
    valid, train = order[:n_valid], order[n_valid:]
    return Split(x_t[train], y_t[train]), Split(x_t[valid], y_t[valid])


class DatasetTask(ClassifyLast):
    kind = "dataset"
    n_valid = 0

    def _load(self, data_dir, download):
        raise NotImplementedError

    def load_splits(self, data_dir, seed: int, download: bool | None = None) -> dict[str, Split]:
        train_x, train_y, test_x, test_y = self._load(data_dir, download)
        train, valid = split_train(train_x, train_y, self.n_valid, seed)
        test = Split(torch.from_numpy(np.ascontiguousarray(test_x)), torch.from_numpy(test_y))
        return {"train": train, "valid": valid, "test": test}

    def inputs(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Raw uint8 examples [B, ...] -> model inputs [B, T, n_in] float32 (on x's device)."""
        raise NotImplementedError


class SequentialMNIST(DatasetTask):
    """sMNIST: 784 pixels in raster order, one per step, scaled to [0, 1]. With ``permuted``, step t shows pixel
    ``permutation[t]`` of the raster-order image (psMNIST); the permutation is drawn from the run's seed unless
    given, and is stored in checkpoints and exported models."""
    n_in, n_out, seq_len = 1, 10, MNIST_PIXELS
    input_scale = 1.0 / 255.0
    n_valid = 3000

    def __init__(self, permuted: bool = False, permutation=None, seed: int = 0):
        self.permuted = bool(permuted)
        self.name = "psmnist" if permuted else "smnist"
        self._perm = None
        if permuted:
            if permutation is None:
                permutation = torch.randperm(MNIST_PIXELS, generator=torch.Generator().manual_seed(seed))
            perm = torch.as_tensor(permutation, dtype=torch.long)
            if sorted(perm.tolist()) != list(range(MNIST_PIXELS)):
                raise ValueError("psmnist permutation must be a permutation of 0..783")
            self._perm = perm

    @property
    def permutation(self):
        return None if self._perm is None else self._perm.tolist()

    def args(self):
        return {"permutation": self.permutation} if self.permuted else {}

    def _load(self, data_dir, download):
        return load_mnist(data_dir, download)

    def inputs(self, x, generator=None):
        xs = x.reshape(len(x), MNIST_PIXELS).float() * self.input_scale
        if self._perm is not None:
            xs = xs[:, self._perm.to(xs.device)]
        return xs.unsqueeze(-1)


class NoisyCIFAR10(DatasetTask):
    """nsCIFAR10 (Chang et al. 2019, as in the paper): one image row per step (32 px x RGB = 96 values, pixel-major:
    r,g,b of px 0, then px 1, ...) scaled to [0, 1], the 32 rows followed by N(0, 1) noise up to ``seq_len`` steps.
    The noise is fresh for every sample and epoch (the standard definition; the authors' code drew it once for all
    samples). Evaluation draws it from a fixed seed so a checkpoint's test accuracy is reproducible."""
    name = "nscifar10"
    n_in, n_out = 96, 10
    input_scale = 1.0 / 255.0
    n_valid = 3000
    rows = 32

    def __init__(self, seq_len: int = 1000):
        if seq_len < self.rows:
            raise ValueError(f"nscifar10 needs seq_len >= 32, got {seq_len}")
        self.seq_len = int(seq_len)

    def args(self):
        return {"seq_len": self.seq_len}

    def _load(self, data_dir, download):
        return load_cifar10(data_dir, download)

    def inputs(self, x, generator=None):
        b = len(x)
        img = x.reshape(b, 3, 32, 32).permute(0, 2, 3, 1).reshape(b, 32, 96).float() * self.input_scale
        n_noise = self.seq_len - self.rows
        if n_noise == 0:
            return img
        noise = torch.randn(b, n_noise, 96, generator=generator)
        return torch.cat([img, noise.to(img.device)], 1)
