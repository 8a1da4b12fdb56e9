"""Fixtures shared by the kdlib tests."""

import pytest
import torch

from kdlib import data, models
from kdlib.distill import seed_everything, train_supervised


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Tiny models train fastest on one thread (and do not fight other processes for cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digits():
    """The embedded digits, split with seed 0."""
    return data.load_digits(seed=0)


@pytest.fixture(scope="module")
def quick_teacher(digits):
    """SmallCNN(width=16) trained for 3 epochs: block1 (16, 4, 4), block2 (32, 2, 2), pool (32,).
    Enough to give features and soft targets worth matching; not a strong teacher."""
    seed_everything(0)
    model = models.SmallCNN(width=16)
    train_supervised(
        model, digits.train.loader(64, shuffle=True), epochs=3, lr=3e-3, progress=False
    )
    return model
