"""Learning-rate restarts through the whole training loop (docs/original.md §5): every newly
discarded block restarts the schedule exactly once, whether it closed early in an epoch or in
its last steps, and the schedules follow tensorpack's timing (a point (e, v) holds from e+1)."""
import keras
import pytest

from epsilon_resnet import config as config_lib
from epsilon_resnet import training
from epsilon_resnet.gate import gates_of
from epsilon_resnet.run_folder import read_metrics

STEPS = 150  # per epoch: enough for a closed block's average (decay 0.95) to get within 1e-3 of 1


class CloseAt(keras.callbacks.Callback):
    """Closes a block for good from a given global step on, by giving its gate a huge ε.

    Listed after the ε scheduler, it closes the block again at each epoch start."""

    def __init__(self, steps_by_block):
        super().__init__()
        self.steps_by_block, self.closed = steps_by_block, set()

    def _close(self):
        for gate in gates_of(self.model):
            if gate.block in self.closed:
                gate.epsilon.assign(1e9)

    def on_epoch_begin(self, epoch, logs=None):
        self._close()

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        self.closed |= {block for block, at in self.steps_by_block.items() if at == step}
        self._close()


@pytest.mark.slow
def test_an_early_and_a_late_closure_each_restart_the_schedule_once(tmp_path, tiny_cifar):
    config = config_lib.from_dict({
        "data": {"name": "cifar10", "dir": tiny_cifar},
        "model": {"n": 1, "epsilon": 0.0},
        "train": {"batch_size": 8, "eval_batch_size": 8, "max_epoch": 5, "steps_per_epoch": STEPS, "seed": 0,
                  "lr_schedule": [[0, 0.01], [3, 0.004]], "lr_restart_schedule": [[0, 0.05], [1, 0.02]]}})
    # res1.0 closes after step 2 of epoch 1; res3.0 ten steps before the end of epoch 2, so its
    # average reads about 0.4 at that epoch's end and about 1 only one epoch later.
    closings = {"res1.0": 2, "res3.0": 2 * STEPS - 10}
    run_dir = str(tmp_path / "run")
    training.train_and_evaluate(config, run_dir, progress=False, extra_callbacks=[CloseAt(closings)])
    records = read_metrics(run_dir)

    counts = [r["discarded_cnt"] for r in records]
    assert 0.99 < counts[0] < 1.0 + 1e-6           # res1.0 closed for 148 steps
    assert 1.2 < counts[1] < 1.8                    # res3.0 only 10 steps: not a whole block yet
    assert all(1.999 < c <= 2.0 + 1e-6 for c in counts[2:])
    # Epoch:          1     2 (restart after 1)  3     4 (restart after 3)  5
    expected_lr = [0.01, 0.05, 0.02, 0.05, 0.02]
    assert [r["learning_rate"] for r in records] == pytest.approx(expected_lr)


def test_without_closures_the_initial_schedule_takes_effect_the_epoch_after_its_point(tmp_path, tiny_cifar):
    config = config_lib.from_dict({
        "data": {"name": "cifar10", "dir": tiny_cifar},
        "model": {"n": 1, "epsilon": 0.0, "epsilon_schedule": [[0, 0.0], [2, 1e-9]]},
        "train": {"batch_size": 8, "eval_batch_size": 8, "max_epoch": 4, "steps_per_epoch": 2, "seed": 0,
                  "lr_schedule": [[0, 0.01], [1, 0.004], [3, 0.002]], "lr_restart_schedule": [[0, 0.05]]}})
    run_dir = str(tmp_path / "run")
    training.train_and_evaluate(config, run_dir, progress=False)
    records = read_metrics(run_dir)
    assert [r["learning_rate"] for r in records] == pytest.approx([0.01, 0.004, 0.004, 0.002])
    assert [r["epsilon"] for r in records] == pytest.approx([0.0, 0.0, 1e-9, 1e-9])
