"""Contract.prepare_inputs: the raw shapes a user has at hand become the model's [batch, T, n_in] inputs."""
import numpy as np
import pytest

from wavexport.core.contract import Contract
from wavexport.core.errors import ContractError
from wavexport.tasks import make_task


class _Model:  # what Contract.for_model reads of a model (duck-typed there)
    state_names = ["h"]
    n_in, n_out = 1, 10

    def state_shape(self):
        return [4]


@pytest.fixture(scope="module")
def psmnist():
    task = make_task("psmnist", seed=0)
    return Contract.for_model(_Model(), task, model_config={"arch": "wrnn"}), task


def test_one_image_in_any_shape_is_one_sequence_and_a_batch_stays_a_batch(psmnist):
    c, task = psmnist
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 784), dtype=np.uint8)
    # Expected by hand: step t reads raster position permutation[t], scaled by 1/255.
    perm = np.asarray(task.permutation)
    want = (images[:, perm].astype(np.float32) * np.float32(1 / 255))[..., None]
    assert np.array_equal(c.prepare_inputs(images), want)
    for one in (images[1], images[1].reshape(28, 28), images[1:2], images[1].reshape(784, 1)):
        got = c.prepare_inputs(one)
        assert got.shape == (1, 784, 1) and np.array_equal(got, want[1:2]), one.shape


def test_a_wrong_length_names_both_accepted_forms(psmnist):
    c, _ = psmnist
    with pytest.raises(ContractError, match=r"raw input has 28 positions; the permutation has 784 \(one sequence: "
                                            r"784 values; a batch: \[batch, 784\]\)"):
        c.prepare_inputs(np.zeros((2, 28)))


def test_without_a_permutation_a_2d_array_stays_a_batch():
    c = Contract.for_model(_Model(), make_task("smnist"), model_config={"arch": "wrnn"})
    a = np.arange(784, dtype=np.uint8).reshape(2, 392)  # two 392-step sequences: sMNIST takes any length
    assert c.prepare_inputs(a).shape == (2, 392, 1)
    assert c.prepare_inputs(a.reshape(784)).shape == (1, 784, 1)  # one sequence

