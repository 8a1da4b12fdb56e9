"""``kdlib course run`` on tiny notebooks written into a temporary folder.

The notebooks follow the course conventions (imports, a ``parameters`` cell, ``save_results``
last) and compute numbers the tests know: 6 * 7, ``seed + 100``, ``scale * 2.5``. Six notebook
executions in all (a kernel start-up each); the rest needs no kernel.
"""

from __future__ import annotations

import json
import re
import time

import nbformat
import pytest

from kdlib.course import report
from kdlib.course import run as course
from kdlib.course.cli import main as kdlib_main

IMPORTS = "import os\nimport time\n\nimport kdlib.course.results"
PARAMETERS = """\
device = "auto"        # "auto" (CUDA, then MPS, then CPU), "cpu", "cuda", "mps"
dataset = "digits"     # digits (embedded, offline) | mnist | fashion_mnist | cifar10 | cifar100
seed = 0
fast = os.environ.get("KDLIB_FAST", "0") not in ("", "0") or "NBGRADER_EXECUTION" in os.environ
epochs = None          # None: the notebook's own default for fast or full mode
n_seeds = None         # None: the notebook's own default (fast: fewer seeds)
results_dir = None     # kdlib course run sets it; save_results writes <results_dir>/<stem>.json
"""


def write_notebook(folder, stem, body, extra_parameters="", figures="{}", claims="None"):
    """``folder/stem/stem.ipynb``: title, imports, parameters, ``body`` cells, save_results."""
    params = nbformat.v4.new_code_cell(PARAMETERS + extra_parameters)
    params.metadata["tags"] = ["parameters"]
    cells = [
        nbformat.v4.new_markdown_cell(f"# {stem}"),
        nbformat.v4.new_code_cell(IMPORTS),
        params,
        *(nbformat.v4.new_code_cell(source) for source in body),
        nbformat.v4.new_code_cell(
            f"kdlib.course.results.save_results({stem!r}, {figures}, results_dir, {claims})"
        ),
    ]
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    path = folder / stem / f"{stem}.ipynb"
    path.parent.mkdir(parents=True)
    nbformat.write(nb, str(path))
    return path


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A course of four notebooks: broken, answer, plot, sleepy."""
    folder = tmp_path_factory.mktemp("solutions")
    write_notebook(folder, "01_broken", ["x = 1", 'raise ValueError("deliberately <broken>")'])
    write_notebook(
        folder,
        "02_answer",
        [
            "answer = 6 * 7\nprint(f'the answer is {answer}')",
            "from kdlib.course.results import Claims\nfrom kdlib.stats import mean_interval\n"
            "claims = Claims('02_answer')\n"
            "claims.record('answer_positive', 'the answer is positive',"
            " mean_interval([answer, answer + 1], 'answer', scale=1.0), 'greater')",
        ],
        figures='{"answer": answer, "seed_plus": seed + 100, "fast": int(fast)}',
        claims="claims",
    )
    write_notebook(
        folder,
        "03_plot",
        [
            "import matplotlib.pyplot as plt\nvalue = scale * 2.5\n"
            "plt.plot([0, 1], [0, value])\nplt.show()"
        ],
        extra_parameters="scale = 1\n",
        figures='{"value": value, "dataset_len": len(dataset)}',
    )
    write_notebook(folder, "04_sleepy", ["time.sleep(120)"], figures='{"never": 1}')
    (folder / "README.md").write_text("not a notebook folder")
    (folder / "02_answer" / ".ipynb_checkpoints").mkdir()
    return folder


def kernel_processes():
    psutil = pytest.importorskip("psutil")
    children = psutil.Process().children(recursive=True)
    found = []
    for child in children:
        try:
            if "ipykernel" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:
            pass
    return found


# ----------------------------------------------------------------------- no kernel


def test_discover_and_select(source):
    found = course.discover_notebooks(source)
    assert [p.stem for p in found] == ["01_broken", "02_answer", "03_plot", "04_sleepy"]
    pick = course.select_notebooks
    assert [p.stem for p in pick(found, "03,2")] == ["02_answer", "03_plot"]
    assert [p.stem for p in pick(found, "02-03")] == ["02_answer", "03_plot"]
    assert [p.stem for p in pick(found, "04_sl")] == ["04_sleepy"]
    assert pick(found, None) == found
    with pytest.raises(ValueError, match="99"):
        pick(found, "02,99")


def test_parameters_only_those_declared(source):
    wanted = {"seed": 3, "scale": 2, "results_dir": "/r"}
    params, warnings = course.notebook_parameters(
        source / "02_answer" / "02_answer.ipynb", wanted, explicit={"seed", "scale"}
    )
    assert params == {"seed": 3, "results_dir": "/r"}
    assert any("'scale'" in w for w in warnings)
    params, warnings = course.notebook_parameters(
        source / "03_plot" / "03_plot.ipynb", wanted, explicit={"seed", "scale"}
    )
    assert params == wanted and warnings == []


def test_index_escapes_text(tmp_path):
    bad = course.NotebookResult(
        name="05_<b>",
        source="x",
        status="failed",
        seconds=1.0,
        figures={"<k>": 1.5},
        error={
            "cell": 2,
            "execution_count": 3,
            "cell_source": "<script>alert(1)</script>",
            "ename": "ValueError",
            "evalue": "<img src=x onerror=alert(1)>",
        },
    )
    page = report.render_index(course.CourseRun(out=str(tmp_path), options={}, notebooks=[bad]))
    assert "<script>" not in page and "<img src=x" not in page and "<b>" not in page
    assert "&lt;script&gt;" in page and "05_&lt;b&gt;" in page and "cell 2 (In [3])" in page


def test_nothing_to_run_exits_2(source, tmp_path):
    assert (
        kdlib_main(
            ["course", "run", "--source", str(source), "--only", "42", "--out", str(tmp_path / "o")]
        )
        == 2
    )
    assert (
        kdlib_main(
            ["course", "run", "--source", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]
        )
        == 2
    )


def test_find_repo_root(tmp_path):
    (tmp_path / "nbgrader_config.py").write_text("")
    (tmp_path / "a" / "b").mkdir(parents=True)
    assert course.find_repo_root(tmp_path / "a" / "b") == tmp_path.resolve()


# ------------------------------------------------------------------- with kernels


@pytest.mark.notebooks
def test_two_notebook_subset(source, tmp_path, capsys):
    out = tmp_path / "course"
    code = kdlib_main(
        [
            "course",
            "run",
            "--source",
            str(source),
            "--out",
            str(out),
            "--only",
            "02,03",
            "--seed",
            "5",
            "-p",
            "scale=3",
            "--no-progress",
        ]
    )
    assert code == 0

    # the executed notebooks, and only the selected ones
    assert (out / "02_answer.ipynb").is_file() and (out / "03_plot.ipynb").is_file()
    assert not (out / "01_broken.ipynb").exists() and not (out / "04_sleepy.ipynb").exists()
    executed = nbformat.read(str(out / "02_answer.ipynb"), as_version=4)
    printed = "".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
    assert "the answer is 42" in printed
    injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "seed = 5" in injected[0].source

    # results.json: the figures the executed notebooks wrote, with their parameters
    report = json.loads((out / "results.json").read_text())
    assert report["ok"] is True and report["counts"] == {"ok": 2}
    by_name = {nb["name"]: nb for nb in report["notebooks"]}
    assert list(by_name) == ["02_answer", "03_plot"]
    answer, plot = by_name["02_answer"], by_name["03_plot"]
    assert answer["figures"] == {"answer": 42, "seed_plus": 105, "fast": 1}
    assert plot["figures"] == {"value": 7.5, "dataset_len": len("digits")}
    assert answer["status"] == plot["status"] == "ok" and answer["seconds"] > 0
    assert answer["parameters"]["seed"] == 5 and answer["parameters"]["fast"] is True
    assert answer["parameters"]["results_dir"] == str((out / "results").resolve())
    assert "scale" not in answer["parameters"] and plot["parameters"]["scale"] == 3
    assert any("'scale'" in w for w in answer["warnings"])
    saved = json.loads((out / "results" / "02_answer.json").read_text())
    assert saved["figures"] == answer["figures"]
    # the claims the notebook recorded: in its results file, in results.json, on the scoreboard
    assert [c["id"] for c in saved["claims"]] == ["answer_positive"] and saved["claims"][0]["holds"]
    assert answer["claims"] == saved["claims"] and plot["claims"] == []

    # index.html links each notebook rendered to HTML, shows figures and the plot
    page = (out / "index.html").read_text()
    for stem in ("02_answer", "03_plot"):
        assert f'href="{stem}.html"' in page and f'href="{stem}.ipynb"' in page
        assert "the answer is 42" in (out / "02_answer.html").read_text()
    assert "answer=42" in page and "data:image/png;base64," in page
    assert "1 of 1 claims hold" in page and "the answer is positive" in page

    # one console line per notebook, with its time and headline figures
    lines = capsys.readouterr().out.splitlines()
    line = next(x for x in lines if x.startswith("02_answer"))
    assert " ok " in line and "answer=42" in line and "seed_plus=105" in line
    assert "claims 1/1 hold" in line
    assert any(x.startswith("03_plot") and "value=7.5" in x for x in lines)


@pytest.mark.notebooks
def test_broken_notebook_is_reported_and_others_run(source, tmp_path, capsys):
    out = tmp_path / "course"
    code = kdlib_main(
        [
            "course",
            "run",
            "--source",
            str(source),
            "--out",
            str(out),
            "--only",
            "01,02",
            "--no-html",
        ]
    )
    assert code == 1
    report = json.loads((out / "results.json").read_text())
    assert report["ok"] is False
    broken, answer = report["notebooks"]
    assert broken["name"] == "01_broken" and broken["status"] == "failed"
    error = broken["error"]
    assert error["ename"] == "ValueError" and error["evalue"] == "deliberately <broken>"
    assert error["cell"] == 5  # title, imports, parameters, x = 1, raise
    assert error["execution_count"] == 5  # imports, parameters, injected, x = 1, raise
    assert "raise ValueError" in error["cell_source"]
    assert broken["figures"] is None
    assert (out / "01_broken.ipynb").is_file()  # written although it failed
    # the next notebook still ran
    assert answer["status"] == "ok" and answer["figures"]["answer"] == 42

    page = (out / "index.html").read_text()
    assert "deliberately &lt;broken&gt;" in page and "cell 5 (In [5])" in page
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("01_broken"))
    assert "failed" in line and "cell 5" in line and "ValueError: deliberately <broken>" in line


@pytest.mark.notebooks
def test_fail_fast_skips_the_rest(source, tmp_path):
    run = course.run_course(
        source,
        tmp_path / "course",
        only="01,02",
        fail_fast=True,
        render_html=False,
        progress=False,
        echo=lambda *a: None,
    )
    assert [nb.status for nb in run.notebooks] == ["failed", "skipped"]
    assert not (tmp_path / "course" / "02_answer.ipynb").exists()


@pytest.mark.notebooks
def test_notebook_past_the_timeout_is_stopped(source, tmp_path):
    started = time.monotonic()
    run = course.run_course(
        source,
        tmp_path / "course",
        only="04",
        timeout=4,
        render_html=False,
        progress=False,
        echo=lambda *a: None,
    )
    elapsed = time.monotonic() - started
    assert elapsed < 60, f"the 120 s sleep was not stopped ({elapsed:.0f} s)"
    (result,) = run.notebooks
    assert result.status == "timeout" and not run.ok
    assert result.error["ename"] == "Timeout" and "time.sleep(120)" in result.error["cell_source"]
    assert result.error["cell"] == 4
    assert result.seconds < 60 and result.figures is None
    report = json.loads((tmp_path / "course" / "results.json").read_text())
    assert report["notebooks"][0]["status"] == "timeout"
    assert "timeout" in (tmp_path / "course" / "index.html").read_text()
    assert kernel_processes() == []  # the kernel was shut down, not left running


# ------------------------------------------------- the real course (as it appears)

REAL = course.discover_notebooks(course.find_repo_root(__file__) / "solutions")


@pytest.mark.skipif(not REAL, reason="no solutions/NN_name/NN_name.ipynb yet")
@pytest.mark.parametrize("path", REAL, ids=[p.stem for p in REAL])
def test_real_notebook_takes_the_course_parameters(path):
    """What ``course run`` relies on, checked without a kernel: the conventional parameters
    are declared, and the notebook saves its figures under its own stem."""
    params, warnings = course.notebook_parameters(
        path, dict.fromkeys(["device", "dataset", "seed", "fast", "results_dir"])
    )
    assert set(params) == {"device", "dataset", "seed", "fast", "results_dir"}, warnings
    code = [c.source for c in nbformat.read(str(path), as_version=4).cells if c.cell_type == "code"]
    call = re.compile(r"save_results\(\s*[\"']" + re.escape(path.stem) + r"[\"']")
    assert any(call.search(s) for s in code), f"no save_results({path.stem!r}, ...) call"
