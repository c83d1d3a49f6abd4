"""Top-1 and top-5 error against NumPy on known logits, and the one evaluation loop."""
import numpy as np
import pytest
import tensorflow as tf

from epsilon_resnet.errors import Interrupted, RunError
from epsilon_resnet.evaluation import Evaluator, batch_sums, run_batches, top_k_wrong


def distinct_logits(rng, count, classes):
    """Logits without ties, so argmax and argsort give one answer."""
    return np.stack([rng.permutation(classes) for _ in range(count)]).astype(np.float32) + rng.uniform(0, 0.5)


@pytest.mark.parametrize("k", [1, 5])
def test_top_k_error_against_numpy_argsort(k):
    rng = np.random.default_rng(k)
    logits = distinct_logits(rng, 64, 20)
    labels = rng.integers(0, 20, 64).astype(np.int32)
    top = np.argsort(-logits, axis=1)[:, :k]
    expected = np.array([label not in row for label, row in zip(labels, top)], np.float32)
    assert 0 < expected.sum() < 64  # both hits and misses
    np.testing.assert_array_equal(top_k_wrong(logits, labels, k).numpy(), expected)


def test_batch_sums_top5_only_beyond_ten_classes():
    labels = np.zeros(2, np.int32)
    assert "val_error_top5" not in batch_sums({"logits": np.zeros((2, 10), np.float32)}, labels)
    sums = batch_sums({"logits": np.zeros((2, 100), np.float32), "side_logits": np.zeros((2, 100), np.float32)}, labels)
    assert set(sums) == {"val_error", "val_cost", "val_error_top5", "val_error_side"}


class Linear(tf.Module):
    """A stand-in model: logits = images @ w, as a dict like the networks'."""

    def __init__(self, w):
        self.w = tf.constant(w)

    def __call__(self, images, training=False):
        return {"logits": tf.matmul(images, self.w)}


def test_evaluator_weighs_a_short_last_batch_by_its_images():
    rng = np.random.default_rng(3)
    images = rng.normal(size=(10, 4)).astype(np.float32)
    w = rng.normal(size=(4, 3)).astype(np.float32)
    labels = rng.integers(0, 3, 10).astype(np.int32)
    batches = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)  # 4, 4, 2
    errors = Evaluator(Linear(w))(batches)
    assert errors["val_error"] == pytest.approx(np.mean((images @ w).argmax(axis=1) != labels))
    first_two = Evaluator(Linear(w))(batches, max_batches=2)
    assert first_two["val_error"] == pytest.approx(np.mean((images[:8] @ w).argmax(axis=1) != labels[:8]))


def test_empty_set_and_stop_request_are_errors():
    empty = tf.data.Dataset.from_tensor_slices((np.zeros((0, 4), np.float32), np.zeros(0, np.int32))).batch(4)
    with pytest.raises(RunError, match="evaluation set is empty"):
        Evaluator(Linear(np.ones((4, 3), np.float32)))(empty)

    class Stopped:
        signal = "SIGTERM"

    batches = tf.data.Dataset.from_tensor_slices((np.ones((8, 4), np.float32), np.zeros(8, np.int32))).batch(4)
    with pytest.raises(Interrupted, match="SIGTERM during evaluation"):
        list(run_batches(lambda images, labels: {}, batches, stop=Stopped()))
