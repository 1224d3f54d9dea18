import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# The models under test are tiny: one thread is as fast, and it does not stall when the two cores are shared.
torch.set_num_threads(1)


def _data_dir() -> Path:
    env = os.environ.get("WAVEXPORT_DATA")
    return Path(env) if env else ROOT.parent / "shared" / "data"


DATA_DIR = _data_dir()
HAVE_MNIST = (DATA_DIR / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz").exists()
needs_mnist = pytest.mark.skipif(not HAVE_MNIST, reason=f"real MNIST not found under {DATA_DIR}")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """Nothing here can download; tests never try."""
    monkeypatch.setenv("WAVEXPORT_OFFLINE", "1")
    torch.manual_seed(0)


@pytest.fixture
def data_dir() -> Path:
    if not HAVE_MNIST:
        pytest.skip(f"real MNIST not found under {DATA_DIR}")
    return DATA_DIR
