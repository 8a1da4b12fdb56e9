"""kdlib.runtime (thread policy, progress bars) and how ``kdlib course run`` applies them.

The thread policy and ``progress_enabled`` are checked in this process; then tiny notebooks
(a few seconds each, no real course notebook) check what a kernel sees: the share of the cores
under ``--jobs``, bars in an interactive kernel and none under papermill, the same figures
from ``--jobs 2`` as from ``--jobs 1``, and no unencrypted-TCP warning on the console.
"""

from __future__ import annotations

import io
import json
import os

import nbformat
import pytest
import torch

from kdlib import runtime
from kdlib.course import run as course

HEADLESS = ("KDLIB_PROGRESS", "NBGRADER_EXECUTION", "CI", "JPY_SESSION_NAME")


@pytest.fixture
def clean_env(monkeypatch):
    """No variable that decides threads or bars is inherited from the shell running the tests."""
    for name in list(os.environ):
        if name in HEADLESS or name.startswith("PAPERMILL_") or name.startswith("KDLIB_"):
            monkeypatch.delenv(name, raising=False)
    return monkeypatch


# ------------------------------------------------------------------------ thread policy


def test_thread_policy(clean_env):
    # by the model's size (issue: 'mnist-t10k' gave every core to a tiny MLP), not the name
    big, small = torch.nn.Linear(1000, 1001), torch.nn.Linear(64, 10)  # 1,002,001 and 650
    assert runtime.resolve_threads(dataset="digits") == 1  # small models: one thread
    assert runtime.resolve_threads() == 1
    assert runtime.resolve_threads(dataset="cifar10", model=big) == runtime.available_cpus()
    assert runtime.resolve_threads(dataset="mnist-t10k", model=small) == 1
    assert runtime.resolve_threads(model=runtime.SMALL_MODEL_PARAMETERS + 1) > 0
    clean_env.setenv("KDLIB_CPUS", "3")  # the share course run gives a kernel
    assert runtime.available_cpus() == 3
    assert runtime.resolve_threads(dataset="mnist", model=big) == 3
    assert runtime.resolve_threads(dataset="digits") == 1
    clean_env.setenv("KDLIB_THREADS", "2")  # the user's choice wins over the policy
    assert runtime.resolve_threads(dataset="digits") == 2
    assert runtime.resolve_threads(4, dataset="digits") == 4  # and the argument over both
    clean_env.setenv("KDLIB_THREADS", "torch")
    assert runtime.resolve_threads(dataset="digits") == 0  # 0: PyTorch's default, untouched
    for bad, name in (("-1", "KDLIB_THREADS"), ("many", "KDLIB_THREADS")):
        clean_env.setenv(name, bad)
        with pytest.raises(ValueError, match=name):
            runtime.resolve_threads()
    with pytest.raises(ValueError, match="threads"):
        runtime.resolve_threads(-2)
    clean_env.setenv("KDLIB_CPUS", "0")
    with pytest.raises(ValueError, match="KDLIB_CPUS"):
        runtime.available_cpus()


def test_training_loops_fit_the_threads_to_the_model_after_setup(clean_env):
    from kdlib.distill import Distiller

    before = torch.get_num_threads()
    clean_env.setenv("KDLIB_CPUS", "3")
    try:
        runtime.setup("cpu", dataset="mnist-t10k")  # no model known yet: one thread
        assert torch.get_num_threads() == 1
        Distiller(torch.nn.Linear(1000, 1001), device="cpu", progress=False)  # a big student
        assert torch.get_num_threads() == 3
        Distiller(torch.nn.Linear(64, 10), device="cpu", progress=False)  # a tiny one
        assert torch.get_num_threads() == 1
        runtime.setup("cpu", threads=2)  # a choice made by hand stands
        Distiller(torch.nn.Linear(1000, 1001), device="cpu", progress=False)
        assert torch.get_num_threads() == 2
    finally:
        runtime.setup("cpu", threads=before)


def test_setup_sets_threads_and_returns_the_device(clean_env):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert runtime.setup("cpu", dataset="digits") == torch.device("cpu")
        assert torch.get_num_threads() == 1
        runtime.setup("cpu", threads=2)
        assert torch.get_num_threads() == 2
        runtime.setup("cpu", threads=0)  # leaves it
        assert torch.get_num_threads() == 2
        runtime.setup("cpu", dataset="digits", seed=3)
        a = torch.rand(3)
        runtime.setup("cpu", dataset="digits", seed=3)
        assert torch.equal(a, torch.rand(3))
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------ progress bars


class _Stream(io.StringIO):
    def __init__(self, tty):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


def test_progress_rules(clean_env):
    clean_env.setattr("sys.stderr", _Stream(tty=True))
    assert runtime.progress_enabled() is True  # a terminal
    assert runtime.progress_enabled(False) is False
    for name, value in (
        ("CI", "true"),
        ("NBGRADER_EXECUTION", "autograde"),
        ("PAPERMILL_INPUT_PATH", "x"),
        ("KDLIB_PROGRESS", "0"),
    ):
        clean_env.setenv(name, value)
        assert runtime.progress_enabled() is False, name
        clean_env.delenv(name)
    clean_env.setenv("KDLIB_PROGRESS", "0")
    assert runtime.progress_enabled(True) is False  # turns every bar off
    clean_env.delenv("KDLIB_PROGRESS")
    clean_env.setattr("sys.stderr", _Stream(tty=False))
    assert runtime.progress_enabled() is False  # a pipe, a log file
    assert runtime.progress_enabled(True) is True
    clean_env.setenv("KDLIB_PROGRESS", "1")
    assert runtime.progress_enabled() is True


def _notebook(cells, path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


TRAINING = """\
import torch
from kdlib.data import TensorLoader
from kdlib.distill import train_supervised
from kdlib.models import MLP
g = torch.Generator().manual_seed(0)
x, y = torch.randn(256, 64, generator=g), torch.randint(0, 10, (256,), generator=g)
torch.manual_seed(0)
history = train_supervised(MLP(64, (8,), 10), TensorLoader(x, y, 32), epochs=3, device="cpu")
print("trained", len(history), "epochs")"""

QUIET = dict.fromkeys([*HEADLESS, "PAPERMILL_INPUT_PATH"])  # None: removed from the kernel's env


def _bars(executed) -> list:
    """The progress bars a notebook showed: widget views (JupyterLab) or tqdm text on stderr."""
    found = []
    for cell in executed.cells:
        for output in cell.get("outputs", []):
            if "application/vnd.jupyter.widget-view+json" in output.get("data", {}):
                found.append("widget")
            elif output.get("name") == "stderr" and "it/s" in output.get("text", ""):
                found.append("text")
    return found


@pytest.mark.notebooks
def test_bars_in_an_interactive_kernel_not_under_papermill(tmp_path):
    import papermill
    from nbclient import NotebookClient

    path = _notebook([TRAINING], tmp_path / "bars.ipynb")
    # JupyterLab (through jupyter_server) starts the kernel with JPY_SESSION_NAME
    interactive = nbformat.read(str(path), as_version=4)
    manager = course._kernel_manager_class({**QUIET, "JPY_SESSION_NAME": str(path)}, str(tmp_path))
    NotebookClient(interactive, kernel_manager_class=manager, timeout=120).execute()
    assert "trained 3 epochs" in json.dumps(interactive.cells[0].outputs)
    assert _bars(interactive) == ["widget"]
    # papermill starts it itself: no bar, although nothing else says "headless"
    out = tmp_path / "papermill.ipynb"
    papermill.execute_notebook(
        str(path),
        str(out),
        kernel_name="python3",
        progress_bar=False,
        kernel_manager_class=course._kernel_manager_class(QUIET, str(tmp_path)),
    )
    executed = nbformat.read(str(out), as_version=4)
    assert "trained 3 epochs" in json.dumps(executed.cells[0].outputs)
    assert _bars(executed) == []


# ---------------------------------------------------------------- course run --jobs


def _course(folder):
    """Two small notebooks with figures that depend on nothing but their seed, and that print
    what their kernel was given."""
    report = (
        "import os, torch\nprint('threads', torch.get_num_threads(), "
        "'cpus', os.environ.get('KDLIB_CPUS'), 'progress', os.environ.get('KDLIB_PROGRESS'))"
    )
    params = "import os\nseed = 0\nfast = True\nresults_dir = None\ndataset = 'digits'"
    for stem, body, figures in (
        (
            "01_matrix",
            "g = torch.Generator().manual_seed(seed)\n"
            "a = torch.randn(64, 64, generator=g)\nvalue = float((a @ a).tanh().sum())",
            '{"value": value}',
        ),
        ("02_train", TRAINING + "\nvalue = history[-1]['train_loss']", '{"loss": value}'),
    ):
        path = _notebook([], folder / stem / f"{stem}.ipynb")
        nb = nbformat.read(str(path), as_version=4)
        cells = [
            nbformat.v4.new_code_cell(params),
            nbformat.v4.new_code_cell(
                "from kdlib.runtime import setup\ndevice = setup('cpu', dataset=dataset)"
            ),
            nbformat.v4.new_code_cell(report),
            nbformat.v4.new_code_cell(body),
            nbformat.v4.new_code_cell(
                "import kdlib.course.results\nkdlib.course.results"
                f".save_results({stem!r}, {figures}, results_dir)"
            ),
        ]
        cells[0].metadata["tags"] = ["parameters"]
        nb.cells = cells
        nbformat.write(nb, str(path))
    return folder


@pytest.mark.notebooks
def test_jobs_2_gives_the_figures_of_jobs_1(tmp_path, capfd):
    source = _course(tmp_path / "solutions")
    figures, printed = {}, {}
    for jobs in (1, 2):
        out = tmp_path / f"jobs{jobs}"
        code = course.main(course_args(source, out, jobs))
        assert code == 0
        report = json.loads((out / "results.json").read_text())
        assert [nb["name"] for nb in report["notebooks"]] == ["01_matrix", "02_train"]
        assert report["environment"]["jobs"] == jobs
        figures[jobs] = [nb["figures"] for nb in report["notebooks"]]
        printed[jobs] = [
            "".join(
                o.get("text", "")
                for c in nbformat.read(str(out / f"{n}.ipynb"), 4).cells
                for o in c.get("outputs", [])
            )
            for n in ("01_matrix", "02_train")
        ]
    assert figures[1] == figures[2] and all(f for f in figures[1])
    share = {jobs: max(1, runtime.available_cpus() // jobs) for jobs in (1, 2)}
    for jobs in (1, 2):
        for text in printed[jobs]:
            # the kernel's share of the cores; one thread for digits; no bars in the kernels
            assert f"threads 1 cpus {share[jobs]} progress 0" in text
    console = capfd.readouterr()
    assert "without encryption" not in console.out + console.err  # IPC, not TCP


def course_args(source, out, jobs):
    from kdlib.course.cli import build_parser

    argv = [
        "course",
        "run",
        "--source",
        str(source),
        "--out",
        str(out),
        "--jobs",
        str(jobs),
        "--no-html",
        "--no-progress",
    ]
    return build_parser(argv).parse_args(argv)


def test_kernel_environment():
    env = course.kernel_environment(fast=True, jobs=2)
    share = str(max(1, runtime.available_cpus() // 2))
    assert env["KDLIB_CPUS"] == env["OMP_NUM_THREADS"] == share
    assert env["KDLIB_PROGRESS"] == "0" and env["KDLIB_FAST"] == "1"
    torch_default = course.kernel_environment(fast=False, threads="torch")
    assert torch_default["KDLIB_THREADS"] == "0" and torch_default["OMP_NUM_THREADS"] is None
    assert course.kernel_environment(True, threads="3")["KDLIB_THREADS"] == "3"
    with pytest.raises(ValueError, match="threads"):
        course.kernel_environment(True, threads="many")
    assert 1 <= course.default_jobs(5) <= min(5, runtime.available_cpus())
    assert course.default_jobs(1) == 1
