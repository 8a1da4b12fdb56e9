"""Fixtures shared by the kdlib tests."""

from pathlib import Path

import pytest
import torch

from kdlib import data, models
from kdlib.distill import train_supervised
from kdlib.runtime import seed_everything

ROOT = Path(__file__).resolve().parent.parent


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


@pytest.fixture(scope="session")
def course(tmp_path_factory):
    """Every solution notebook executed once, in fast mode, by `kdlib course run`.

    Returns ``(out, results)``: the output folder and ``{notebook name: NotebookResult}``;
    each notebook's headline figures are ``results[name].figures`` (what it passed to
    ``save_results``). Used by test_notebooks.py and test_claims.py.
    """
    from kdlib.course.run import run_course

    out = tmp_path_factory.mktemp("course")
    run = run_course(
        ROOT / "solutions",
        out,
        fast=True,
        device="cpu",
        timeout=600,
        render_html=False,
        progress=False,
        echo=lambda *a, **k: None,
    )
    return out, {nb.name: nb for nb in run.notebooks}
