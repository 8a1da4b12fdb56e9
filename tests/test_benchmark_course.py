"""benchmarks/course.py runs on one tiny notebook and reports every figure (no speed checked)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.notebooks
def test_course_benchmark_reports_every_figure(tmp_path):
    folder = tmp_path / "solutions" / "01_tiny"
    folder.mkdir(parents=True)
    params = nbformat.v4.new_code_cell("seed = 0\nfast = True\nresults_dir = None")
    params.metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(cells=[params, nbformat.v4.new_code_cell("x = sum(range(10))")])
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, str(folder / "01_tiny.ipynb"))
    readme = tmp_path / "README.md"
    readme.write_text("# Benchmarks\n\nkept\n")
    out = tmp_path / "course.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.course",
            "--source",
            str(tmp_path / "solutions"),
            "--readme",
            str(readme),
            "--out",
            str(out),
        ],
        cwd=ROOT,
        env={**os.environ, "KDLIB_PROGRESS": "0"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    results = json.loads(out.read_text())
    figures = results["notebooks"]["01_tiny"]
    for policy in ("kdlib", "torch"):
        for load in ("quiet", "busy"):
            setting = figures[f"{policy}_{load}"]
            assert setting["status"] == "ok"
            assert setting["seconds"] > 0 and math.isfinite(setting["load_average"])
        assert figures[f"{policy}_busy_over_quiet"] > 0
    page = readme.read_text()
    assert page.startswith("# Benchmarks\n\nkept\n")  # the rest of the README is kept
    assert "<!-- course-benchmark -->" in page and "| 01_tiny |" in page
    # a second run replaces the block instead of adding one
    from benchmarks.course import write_readme

    write_readme(readme, "new table")
    assert readme.read_text().count("<!-- course-benchmark -->") == 1
    assert "new table" in readme.read_text() and "| 01_tiny |" not in readme.read_text()
