"""Readers for the real MNIST and CIFAR-10 files, in torchvision's on-disk layout so existing downloads are reused.

ROOT/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] and ROOT/cifar-10-batches-py/{data_batch_1..5,
test_batch}. Missing files are downloaded (checksummed) unless downloads are off; a file that exists but is corrupt
or truncated raises :class:`DataError`, never yields garbage.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

from ..core.errors import DataError


MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "https://yann.lecun.com/exdb/mnist/")
MNIST_FILES = {  # name -> md5 of the .gz
    "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
}
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST = "test_batch"


def default_data_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "wavexport"


def resolve_data_dir(data_dir: str | os.PathLike | None = None, recorded: str | None = None) -> Path:
    """``--data-dir``, else ``$WAVEXPORT_DATA``, else ``recorded`` (where a run found its data), else the user
    cache directory."""
    for d in (data_dir, os.environ.get("WAVEXPORT_DATA"), recorded):
        if d:
            return Path(d).expanduser()
    return default_data_dir()


def downloads_allowed() -> bool:
    return os.environ.get("WAVEXPORT_OFFLINE", "").lower() not in ("1", "true", "yes")


def md5sum(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(urls, dest: Path, md5: str) -> None:
    """Fetch the first URL that works into ``dest`` (temp name + rename), checking its md5."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for url in urls:
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=30) as resp:
                shutil.copyfileobj(resp, out)
            got = md5sum(Path(tmp))
            if got != md5:
                raise OSError(f"checksum mismatch (md5 {got}, expected {md5})")
            os.replace(tmp, dest)
            return
        except Exception as e:  # noqa: BLE001 - any failure means: try the next mirror
            errors.append(f"{url}: {e}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise OSError("; ".join(errors))


# --- MNIST -------------------------------------------------------------------------------------------------------
def _parse_idx(data: bytes, name: str, expect_dims: int) -> np.ndarray:
    if len(data) < 4 + 4 * expect_dims:
        raise DataError(f"{name}: file is truncated ({len(data)} bytes)")
    magic = int.from_bytes(data[:4], "big")
    if magic != 0x0800 + expect_dims:
        raise DataError(f"{name}: not an IDX file of {expect_dims} dims (magic {magic:#x})")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(expect_dims)]
    offset = 4 + 4 * expect_dims
    if len(data) - offset != int(np.prod(dims)):
        raise DataError(f"{name}: truncated or padded: header says {dims}, payload is {len(data) - offset} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims).copy()


def _read_mnist_file(raw: Path, name: str, dims: int, download: bool) -> np.ndarray:
    gz, plain = raw / f"{name}.gz", raw / name
    if not gz.exists() and not plain.exists():
        if not download:
            raise FileNotFoundError(gz)
        _download([m + f"{name}.gz" for m in MNIST_MIRRORS], gz, MNIST_FILES[name])
    if gz.exists():
        got = md5sum(gz)
        if got != MNIST_FILES[name]:
            raise DataError(f"{gz} is corrupt or not the canonical MNIST file (md5 {got}, expected "
                            f"{MNIST_FILES[name]}); delete it to download it again")
        try:
            data = gzip.decompress(gz.read_bytes())
        except (OSError, EOFError) as e:
            raise DataError(f"{gz} cannot be decompressed ({e}); delete it to download it again") from None
        return _parse_idx(data, str(gz), dims)
    return _parse_idx(plain.read_bytes(), str(plain), dims)


def load_mnist(root: str | os.PathLike, download: bool | None = None):
    """(train_x [60000, 784] uint8, train_y [60000] int64, test_x [10000, 784], test_y [10000])."""
    raw = Path(root) / "MNIST" / "raw"
    download = downloads_allowed() if download is None else download
    try:
        arrays = {name: _read_mnist_file(raw, name, 3 if "images" in name else 1, download) for name in MNIST_FILES}
    except FileNotFoundError:
        raise DataError(_missing_msg("MNIST", raw, [f"{n}.gz" for n in MNIST_FILES], download, None)) from None
    except OSError as e:
        raise DataError(_missing_msg("MNIST", raw, [f"{n}.gz" for n in MNIST_FILES], download, e)) from None
    out = []
    for split in ("train", "t10k"):
        x, y = arrays[f"{split}-images-idx3-ubyte"], arrays[f"{split}-labels-idx1-ubyte"]
        if len(x) != len(y) or x.shape[1:] != (28, 28):
            raise DataError(f"{raw}: {split} images {x.shape} and labels {y.shape} do not match")
        out += [x.reshape(len(x), 784), y.astype(np.int64)]
    return tuple(out)


# --- CIFAR-10 ----------------------------------------------------------------------------------------------------
class _SafeUnpickler(pickle.Unpickler):
    """CIFAR batches are pickles: allow the numpy array machinery and nothing else (no code from a data file)."""

    def find_class(self, module, name):
        if module.split(".")[0] == "numpy" and name in ("_reconstruct", "ndarray", "dtype", "scalar"):
            return super().find_class(module, name)
        if (module, name) == ("_codecs", "encode"):  # how protocol-2 pickles spell bytes
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            d = _SafeUnpickler(f, encoding="latin1").load()
        data = np.asarray(d["data"], dtype=np.uint8)
        labels = np.asarray(d["labels"], dtype=np.int64)
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated pickles raise many kinds of error
        raise DataError(f"{path} is corrupt or truncated ({type(e).__name__}: {e}); delete it to download it "
                        "again") from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DataError(f"{path}: expected data [n, 3072] with n labels, found {data.shape} and {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{path}: labels outside 0..9")
    return data, labels


def load_cifar10(root: str | os.PathLike, download: bool | None = None):
    """(train_x [50000, 3072] uint8 (R, G, B planes of 32x32), train_y, test_x [10000, 3072], test_y)."""
    root = Path(root)
    folder = root / CIFAR10_DIR
    names = [*CIFAR10_TRAIN, CIFAR10_TEST]
    download = downloads_allowed() if download is None else download
    if not all((folder / n).exists() for n in names):
        if not download:
            raise DataError(_missing_msg("CIFAR-10", folder, names, False, None))
        archive = root / "cifar-10-python.tar.gz"
        try:
            if not archive.exists() or md5sum(archive) != CIFAR10_MD5:
                _download([CIFAR10_URL], archive, CIFAR10_MD5)
            with tarfile.open(archive) as tar:
                tar.extractall(root, filter="data")
        except (OSError, tarfile.TarError) as e:
            raise DataError(_missing_msg("CIFAR-10", folder, names, True, e)) from None
    parts = [_read_cifar_batch(folder / n) for n in CIFAR10_TRAIN]
    test_x, test_y = _read_cifar_batch(folder / CIFAR10_TEST)
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), test_x, test_y)


def _missing_msg(what: str, folder: Path, files, tried_download: bool, err) -> str:
    missing = [f for f in files if not (folder / f).exists()]
    if missing and len(missing) < len(files):  # say which: evaluating on the test split needs the training files too
        msg = f"{what} is incomplete in {folder}: {', '.join(missing)} missing (expected {', '.join(files)})."
    else:
        msg = f"{what} not found in {folder} (expected {', '.join(files)})."
    if tried_download:
        msg += f" Download failed: {err}."
    else:
        msg += " Downloads are off (WAVEXPORT_OFFLINE)."
    return msg + (" Put the files there, or point --data-dir / $WAVEXPORT_DATA at a folder holding "
                  f"{'MNIST/raw/' if what == 'MNIST' else CIFAR10_DIR + '/'}.")
