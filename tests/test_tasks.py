import gzip
import pickle
import re
import shutil

import numpy as np
import pytest
import torch

from wavexport.tasks import DataError, load_cifar10, load_mnist, make_task, task_from_state
from wavexport.tasks.data import resolve_data_dir


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_copy_task_layout():
    t = make_task("copy", 30)
    assert t.seq_len == 50  # the paper's T + 20
    xs, y = t.sample(4, gen())
    assert xs.shape == (4, 50, 10) and y.shape == (4, 50)
    seq = xs.argmax(-1)
    assert torch.equal(xs.sum(-1), torch.ones(4, 50))  # one-hot
    assert ((seq[:, :10] >= 1) & (seq[:, :10] <= 8)).all()
    assert (seq[:, 10:39] == 0).all() and (seq[:, 39] == 9).all() and (seq[:, 40:] == 0).all()
    assert torch.equal(y[:, -10:], seq[:, :10]) and (y[:, :-10] == 0).all()
    perfect = torch.nn.functional.one_hot(y, 10).float() * 50
    m = t.metrics(perfect, y)
    assert m["acc"] == 4 and m["loss"] < 1e-6


def test_adding_task_targets():
    t = make_task("adding", 40)
    xs, y = t.sample(64, gen())
    assert xs.shape == (64, 40, 2) and y.shape == (64,)
    markers = xs[..., 1]
    assert torch.equal(markers.sum(1), torch.full((64,), 2.0))
    assert (markers[:, :20].sum(1) == 1).all() and (markers[:, 20:].sum(1) == 1).all()
    torch.testing.assert_close((xs[..., 0] * markers).sum(1), y)
    assert ((xs[..., 0] >= 0) & (xs[..., 0] < 1)).all()


def test_psmnist_permutation_is_seeded_and_restored():
    a, b, c = make_task("psmnist", seed=3), make_task("psmnist", seed=3), make_task("psmnist", seed=4)
    assert a.permutation == b.permutation != c.permutation
    assert sorted(a.permutation) == list(range(784))
    restored = task_from_state(a.state_dict())
    assert restored.permutation == a.permutation
    x = torch.arange(784, dtype=torch.uint8).repeat(2, 1) % 251
    xs = a.inputs(x)
    assert xs.shape == (2, 784, 1)
    torch.testing.assert_close(xs[0, :, 0], x[0, a.permutation].float() / 255)
    assert make_task("smnist").permutation is None


def test_mnist_reader_on_real_files(data_dir):
    tx, ty, sx, sy = load_mnist(data_dir, download=False)
    assert tx.shape == (60000, 784) and sx.shape == (10000, 784) and tx.dtype == np.uint8
    assert set(np.unique(ty)) == set(range(10)) and len(sy) == 10000
    splits = make_task("smnist").load_splits(data_dir, seed=0, download=False)
    assert [len(splits[k]) for k in ("train", "valid", "test")] == [57000, 3000, 10000]
    again = make_task("smnist").load_splits(data_dir, seed=0, download=False)
    assert torch.equal(splits["valid"].y, again["valid"].y)


def test_missing_data_is_one_clear_error(tmp_path):
    with pytest.raises(DataError, match=r"MNIST not found in .*MNIST/raw.*train-images-idx3-ubyte.gz"):
        load_mnist(tmp_path / "nowhere")
    with pytest.raises(DataError, match="^" + re.escape(
            f"MNIST not found in {tmp_path / 'nowhere' / 'MNIST' / 'raw'} (expected train-images-idx3-ubyte.gz, "
            "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz). Downloads are off "
            "(WAVEXPORT_OFFLINE). Put the files there, or point --data-dir / $WAVEXPORT_DATA at a folder holding "
            "MNIST/raw/.") + "$"):
        load_mnist(tmp_path / "nowhere")
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        load_cifar10(tmp_path)
    with pytest.raises(DataError, match="^" + re.escape(
            f"CIFAR-10 not found in {tmp_path / 'cifar-10-batches-py'} (expected data_batch_1, data_batch_2, "
            "data_batch_3, data_batch_4, data_batch_5, test_batch). Downloads are off (WAVEXPORT_OFFLINE).")):
        load_cifar10(tmp_path)


def write_idx(path, arr):
    """An uncompressed IDX file (the format of the MNIST files): magic 0x08 0x<ndim>, big-endian dims, uint8 data."""
    arr = np.asarray(arr, np.uint8)
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    path.write_bytes(header + arr.tobytes())


def write_tiny_mnist(root, n_train=3, n_test=2, seed=0):
    """Small uncompressed MNIST files (torchvision keeps these next to the .gz): no real data needed."""
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    out = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        out[f"{split}-images-idx3-ubyte"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        out[f"{split}-labels-idx1-ubyte"] = rng.integers(0, 10, n, dtype=np.uint8)
    for name, arr in out.items():
        write_idx(raw / name, arr)
    return raw, out


def test_mnist_reader_and_its_errors_on_small_written_files(tmp_path):
    raw, written = write_tiny_mnist(tmp_path)
    tx, ty, sx, sy = load_mnist(tmp_path, download=False)
    assert tx.shape == (3, 784) and sx.shape == (2, 784) and tx.dtype == np.uint8 and ty.dtype == np.int64
    np.testing.assert_array_equal(tx, written["train-images-idx3-ubyte"].reshape(3, 784))
    np.testing.assert_array_equal(sy, written["t10k-labels-idx1-ubyte"])
    labels = raw / "train-labels-idx1-ubyte"
    good = labels.read_bytes()
    labels.write_bytes(good[:-1])  # one label short of its header
    with pytest.raises(DataError, match="^" + re.escape(f"{labels}: truncated or padded: header says [3], payload "
                                                        "is 2 bytes") + "$"):
        load_mnist(tmp_path, download=False)
    labels.write_bytes(good + b"\x00")  # one byte too many
    with pytest.raises(DataError, match=re.escape(f"{labels}: truncated or padded: header says [3], payload is 4")):
        load_mnist(tmp_path, download=False)
    labels.write_bytes(good[:6])
    with pytest.raises(DataError, match="^" + re.escape(f"{labels}: file is truncated (6 bytes)") + "$"):
        load_mnist(tmp_path, download=False)
    write_idx(labels, np.zeros((3, 1)))  # images' layout where labels belong
    with pytest.raises(DataError, match="^" + re.escape(f"{labels}: not an IDX file of 1 dims (magic 0x802)") + "$"):
        load_mnist(tmp_path, download=False)
    write_idx(labels, np.zeros(2))  # a valid file with fewer labels than images
    with pytest.raises(DataError, match="^" + re.escape(f"{raw}: train images (3, 28, 28) and labels (2,) do not "
                                                        "match") + "$"):
        load_mnist(tmp_path, download=False)
    labels.write_bytes(good)
    (raw / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b garbage")  # a .gz is read first, md5-checked
    with pytest.raises(DataError, match="^" + re.escape(f"{raw / 'train-images-idx3-ubyte.gz'} is corrupt or not "
                                                        "the canonical MNIST file (md5 ")):
        load_mnist(tmp_path, download=False)


def test_corrupt_or_truncated_mnist_is_refused(data_dir, tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (data_dir / "MNIST" / "raw").glob("*.gz"):
        shutil.copy(f, raw / f.name)
    victim = raw / "train-labels-idx1-ubyte.gz"
    victim.write_bytes(victim.read_bytes()[:1000])
    with pytest.raises(DataError, match="corrupt"):
        load_mnist(tmp_path, download=False)
    with pytest.raises(DataError, match="^" + re.escape(f"{victim} is corrupt or not the canonical MNIST file (md5 ")):
        load_mnist(tmp_path, download=False)
    # an uncompressed file (torchvision keeps both) that is truncated is caught by its header
    victim.unlink()
    data = gzip.decompress((data_dir / "MNIST/raw/train-labels-idx1-ubyte.gz").read_bytes())
    (raw / "train-labels-idx1-ubyte").write_bytes(data[:-5])
    with pytest.raises(DataError, match="truncated"):
        load_mnist(tmp_path, download=False)
    with pytest.raises(DataError, match="^" + re.escape(f"{raw / 'train-labels-idx1-ubyte'}: truncated or padded: "
                                                        "header says [60000], payload is 59995 bytes") + "$"):
        load_mnist(tmp_path, download=False)


def write_cifar(root, n_train=4, n_test=3, seed=0):
    """Small files in the real CIFAR-10 python format (pickled dicts, uint8 [n, 3072] R,G,B planes)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    out = {}
    for name, n in [*[(f"data_batch_{i}", n_train) for i in range(1, 6)], ("test_batch", n_test)]:
        d = {"batch_label": name, "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             "labels": rng.integers(0, 10, n).tolist(), "filenames": [f"{name}_{i}.png" for i in range(n)]}
        with open(folder / name, "wb") as f:
            pickle.dump(d, f, protocol=2)
        out[name] = d
    return out


def test_cifar_reader_and_nscifar_inputs(tmp_path):
    written = write_cifar(tmp_path)
    tx, ty, sx, sy = load_cifar10(tmp_path, download=False)
    assert tx.shape == (20, 3072) and sx.shape == (3, 3072)
    assert np.array_equal(tx[:4], written["data_batch_1"]["data"])
    assert sy.tolist() == written["test_batch"]["labels"]
    task = make_task("nscifar10", 40)
    xs = task.inputs(torch.from_numpy(sx), gen())
    assert xs.shape == (3, 40, 96)
    img = sx[1].reshape(3, 32, 32)
    # step r holds row r: r,g,b of pixel 0, then pixel 1, ...
    np.testing.assert_allclose(xs[1, 5, :6].numpy(), [img[0, 5, 0] / 255, img[1, 5, 0] / 255, img[2, 5, 0] / 255,
                                                      img[0, 5, 1] / 255, img[1, 5, 1] / 255, img[2, 5, 1] / 255],
                               rtol=1e-6)
    noise = xs[:, 32:]
    assert noise.abs().max() > 1.0 and abs(noise.mean().item()) < 0.2  # N(0, 1), not pixels
    assert not torch.equal(task.inputs(torch.from_numpy(sx), gen(1)), xs)


def test_cifar_truncated_and_hostile_pickles_are_refused(tmp_path):
    write_cifar(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:500])
    with pytest.raises(DataError, match="data_batch_3 is corrupt or truncated"):
        load_cifar10(tmp_path, download=False)
    with pytest.raises(DataError, match="^" + re.escape(f"{batch} is corrupt or truncated (UnpicklingError: ")):
        load_cifar10(tmp_path, download=False)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    batch.write_bytes(pickle.dumps({"data": Evil(), "labels": []}))
    with pytest.raises(DataError, match="refusing"):
        load_cifar10(tmp_path, download=False)
    hostile = f"{batch} is corrupt or truncated (UnpicklingError: refusing to load builtins.print); delete it to "
    with pytest.raises(DataError, match="^" + re.escape(hostile + "download it again") + "$"):
        load_cifar10(tmp_path, download=False)


def test_data_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("WAVEXPORT_DATA", str(tmp_path))
    assert resolve_data_dir(None) == tmp_path
    assert resolve_data_dir("/x") == type(tmp_path)("/x")
    monkeypatch.delenv("WAVEXPORT_DATA")
    assert resolve_data_dir(None).name == "wavexport"


def test_unknown_task_and_bad_lengths():
    with pytest.raises(ValueError, match=r"^unknown task 'imagenet'; choose one of: copy, adding, smnist, psmnist, "
                                         r"nscifar10$"):
        make_task("imagenet")
    with pytest.raises(ValueError, match=r"^psmnist has a fixed length of 784 steps$"):
        make_task("psmnist", 100)
