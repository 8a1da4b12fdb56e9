"""The Colab set-up cell: in every notebook, inert everywhere but on Colab, where it installs
the class's kdlib; `kdlib release --student-edition --colab-repo` names the class's repository."""

from __future__ import annotations

import functools
import http.server
import subprocess
import sys
import threading
from pathlib import Path

import nbformat
import pytest

from kdlib.course.colab import (
    SETUP_CELL_ID,
    add_setup_cell,
    colab_url,
    for_colab,
    parse_colab_repo,
    setup_cell_source,
)

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "solutions").glob("[0-9][0-9]_*/*.ipynb")) + sorted(
    (ROOT / "notebooks").glob("[0-9][0-9]_*/*.ipynb")
)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[f"{p.parts[-3]}/{p.stem}" for p in NOTEBOOKS])
def test_every_notebook_starts_with_the_locked_setup_cell(path):
    nb = nbformat.read(path, as_version=4)
    first = nb.cells[0]
    assert first.get("id") == SETUP_CELL_ID and first.cell_type == "code"
    assert first.metadata["nbgrader"]["locked"] and not first.metadata["nbgrader"]["grade"]
    # the course's own copy installs nothing anywhere: no repository is named
    assert "COURSE_REPOSITORY = None" in first.source


def test_add_setup_cell_is_idempotent():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Title")])
    once = add_setup_cell(nb)
    assert [c.get("id") for c in once.cells][0] == SETUP_CELL_ID and len(once.cells) == 2
    assert add_setup_cell(once) is once and len(nb.cells) == 1  # the input is not changed


def test_parse_colab_repo_accepts_github_names_and_refuses_the_rest():
    assert parse_colab_repo("my-org/kd-course") == ("my-org/kd-course", "main")
    assert parse_colab_repo("my-org/kd-course@fall-2026") == ("my-org/kd-course", "fall-2026")
    for bad in ("kd-course", "https://github.com/a/b", "a/b/c", "a/b@", "a/b@x..y", ""):
        if bad == "a/b@":  # an empty branch means the default one
            assert parse_colab_repo(bad) == ("a/b", "main")
            continue
        with pytest.raises(ValueError, match="colab_repo"):
            parse_colab_repo(bad)


def _release_notebook():
    return nbformat.read(ROOT / "notebooks/02_formal_loss/02_formal_loss.ipynb", as_version=4)


def test_for_colab_links_the_notebook_and_names_the_repository():
    from nbgrader.utils import compute_checksum

    path = "notebooks/02_formal_loss/02_formal_loss.ipynb"
    nb = for_colab(_release_notebook(), path, "my-org/kd-students@fall")
    link, cell = nb.cells[0], nb.cells[1]
    assert colab_url("my-org/kd-students", "fall", path) in link.source
    assert link.source.count("https://colab.research.google.com/github/my-org/kd-students/") == 1
    assert "COURSE_REPOSITORY = 'git+https://github.com/my-org/kd-students@fall'" in cell.source
    # nbgrader validate compares the locked cell with its checksum: it must still match
    assert cell.metadata["nbgrader"]["checksum"] == compute_checksum(cell)
    # everything else is the release, unchanged
    assert [c.source for c in nb.cells[2:]] == [c.source for c in _release_notebook().cells[1:]]
    with pytest.raises(ValueError, match="install"):
        for_colab(_release_notebook(), path, "my-org/kd-students", install="a\nb")
    bare = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")])
    with pytest.raises(ValueError, match="set-up cell"):
        for_colab(bare, "x.ipynb", "my-org/kd-students")


def test_release_command_refuses_colab_without_a_student_edition():
    from kdlib.course.cli import main

    assert main(["release", "--check", "--colab-install", "x", "--course-dir", str(ROOT)]) == 2
    assert main(["release", "--colab-repo", "my-org/kd", "--course-dir", str(ROOT)]) == 2


def test_on_a_simulated_colab_the_cell_installs_the_class_kdlib(tmp_path, python_without_kdlib):
    """A kernel where `google.colab` is loaded (as on Colab) runs the student edition's set-up
    cell: it installs kdlib from the class's repository (a wheel served over HTTP from a local
    folder) and reports the GPU; the same cell without Colab, or the course's own copy, does
    nothing."""
    from kdlib.course.release import student_edition

    edition = tmp_path / "edition"
    wheels = tmp_path / "served"
    student_edition(edition, course_dir=ROOT)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(edition)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    wheel = next(wheels.glob("kdlib-*.whl"))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(wheels))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/{wheel.name}"
    try:
        student_edition(edition, course_dir=ROOT, colab_repo="my-org/kd", colab_install=url)
        nb = nbformat.read(edition / "notebooks/01_intuition/01_intuition.ipynb", as_version=4)
        cell = next(c for c in nb.cells if c.get("id") == SETUP_CELL_ID).source
        assert url in cell
        fake = tmp_path / "fake-colab"
        (fake / "google" / "colab").mkdir(parents=True)
        (fake / "google" / "__init__.py").write_text("")
        (fake / "google" / "colab" / "__init__.py").write_text("")
        python, env = python_without_kdlib
        # offline and without dependencies: only the class's kdlib is installed
        env.update(PIP_NO_INDEX="1", PIP_NO_DEPS="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
        where = "import kdlib; print('kdlib at', kdlib.__file__)"

        def kernel(code: str, colab: bool) -> subprocess.CompletedProcess:
            prelude = f"import sys; sys.path.insert(0, {str(fake)!r}); import google.colab\n"
            return subprocess.run(
                [python, "-c", (prelude if colab else "") + code],
                env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path,
            )  # fmt: skip

        # not on Colab: nothing is installed
        assert kernel(cell, colab=False).returncode == 0
        assert kernel(where, colab=False).returncode != 0
        # on Colab, the course's own copy (no repository named) installs nothing either
        assert kernel(setup_cell_source(None), colab=True).returncode == 0
        assert kernel(where, colab=False).returncode != 0
        # on Colab, the student edition's cell installs the class's kdlib
        done = kernel(cell, colab=True)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "kdlib installed" in done.stdout and "GPU" in done.stdout
        installed = kernel(where + "; import kdlib.course.cli", colab=False)
        assert installed.returncode == 0, installed.stderr[-2000:]
        assert str(tmp_path / "venv") in installed.stdout
        # the class's kdlib is the student edition's: no grader in it
        assert kernel("import kdlib.course.grade", colab=False).returncode != 0
    finally:
        server.shutdown()
