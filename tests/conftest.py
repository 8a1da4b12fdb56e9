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


@pytest.fixture
def python_without_kdlib(tmp_path):
    """``(python, env)``: a fresh virtual environment in ``tmp_path/venv`` that reuses this one's
    packages (torch, Jupyter, pip) but not its kdlib (an editable install's finder lives in a
    .pth file, which a path added this way does not run), and an environment for it."""
    import os
    import subprocess
    import sysconfig
    import venv

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = subprocess.run(
        [python, "-c", purelib], capture_output=True, text=True, check=True
    ).stdout.strip()
    Path(site, "reuse.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return python, env
