"""Running the student notebooks on Google Colab.

Every notebook starts with a locked *Colab set-up* cell. On Colab it installs kdlib from the
class's repository (the student edition) and says which GPU it got; anywhere else (JupyterLab,
papermill, nbgrader, CI) it does nothing, because it only acts when the ``google.colab`` module,
which Colab's kernel imports at start, is loaded.

In this repository the cell names no repository (``COURSE_REPOSITORY = None``). The instructor
sets it once, when writing the student edition::

    kdlib release --student-edition ../kd-course-students --colab-repo my-org/kd-course-students

which puts an "Open in Colab" link above the cell of each student notebook and the repository
in the cell (``git+https://github.com/my-org/kd-course-students@main``; ``--colab-install``
gives any other pip requirement, e.g. a GitLab URL). The cell is locked (nbgrader read-only),
so autograding puts back the course's own version: a submission never installs anything.
"""

from __future__ import annotations

import copy
import re

__all__ = [
    "SETUP_CELL_ID",
    "add_setup_cell",
    "colab_url",
    "for_colab",
    "parse_colab_repo",
    "setup_cell_source",
]

#: the nbgrader id and the cell id of the set-up cell in every notebook
SETUP_CELL_ID = "colab-setup"
_REPOSITORY_LINE = re.compile(r"(?m)^COURSE_REPOSITORY = .*$")
_GITHUB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,38}/[A-Za-z0-9._-]{1,100}$")
_BRANCH = re.compile(r"^[A-Za-z0-9._/-]{1,200}$")


def setup_cell_source(repository: str | None = None) -> str:
    """The code of the set-up cell; ``repository`` is the pip requirement it installs on Colab."""
    return f"""# Colab set-up. On Google Colab this installs the course's library (kdlib) from the
# class's repository and reports the GPU; anywhere else it does nothing. Run it first.
COURSE_REPOSITORY = {repository!r}  # set by `kdlib release --student-edition --colab-repo`
import sys

if "google.colab" in sys.modules and COURSE_REPOSITORY:
    import subprocess

    pip = [sys.executable, "-m", "pip", "install", "--quiet", COURSE_REPOSITORY]
    subprocess.run(pip, check=True)
    import torch

    if torch.cuda.is_available():
        print("kdlib installed; GPU:", torch.cuda.get_device_name(0))
    else:
        print("kdlib installed; no GPU: Runtime > Change runtime type > a GPU, then run again")"""


def add_setup_cell(nb):
    """``nb`` with the (locked) set-up cell first; a notebook that has it is returned unchanged.

    For course authors: a new notebook in ``solutions/`` gets the cell with this."""
    import nbformat

    if any(cell.get("id") == SETUP_CELL_ID for cell in nb.cells):
        return nb
    nb = copy.deepcopy(nb)
    cell = nbformat.v4.new_code_cell(setup_cell_source())
    cell["id"] = SETUP_CELL_ID
    cell.metadata["nbgrader"] = {
        "grade": False,
        "grade_id": SETUP_CELL_ID,
        "locked": True,
        "schema_version": 3,
        "solution": False,
        "task": False,
    }
    nb.cells.insert(0, cell)
    return nb


def parse_colab_repo(colab_repo: str) -> tuple[str, str]:
    """``"ORG/REPO"`` or ``"ORG/REPO@BRANCH"`` -> ``(ORG/REPO, BRANCH)`` (default ``main``)."""
    name, _, branch = str(colab_repo).partition("@")
    branch = branch or "main"
    if not _GITHUB_NAME.match(name):
        raise ValueError(
            f"colab_repo: {colab_repo!r} is not a GitHub repository ORG/REPO[@BRANCH] "
            "(Colab opens notebooks from GitHub)"
        )
    if not _BRANCH.match(branch) or ".." in branch:
        raise ValueError(f"colab_repo: {branch!r} is not a branch name")
    return name, branch


def colab_url(repo: str, branch: str, path: str) -> str:
    """The address that opens ``path`` of the GitHub repository ``repo`` in Colab."""
    return f"https://colab.research.google.com/github/{repo}/blob/{branch}/{path}"


def for_colab(nb, path: str, colab_repo: str, install: str | None = None):
    """The student notebook ``nb`` (at ``path`` in the student repository) made ready for Colab:
    an "Open in Colab" link first, and the set-up cell installing ``install`` (default: the
    repository ``colab_repo`` from GitHub). The cell's nbgrader checksum is recomputed, so
    ``nbgrader validate`` still sees an untouched locked cell."""
    import nbformat
    from nbgrader.utils import compute_checksum

    repo, branch = parse_colab_repo(colab_repo)
    requirement = install or f"git+https://github.com/{repo}@{branch}"
    if not isinstance(requirement, str) or not requirement.strip() or "\n" in requirement:
        raise ValueError(f"install: {install!r} is not one pip requirement")
    nb = copy.deepcopy(nb)
    cells = [c for c in nb.cells if c.get("id") == SETUP_CELL_ID]
    if not cells:
        raise ValueError(f"{path}: no Colab set-up cell (id {SETUP_CELL_ID!r}); see add_setup_cell")
    cell = cells[0]
    cell.source = _REPOSITORY_LINE.sub(
        lambda _: f"COURSE_REPOSITORY = {requirement!r}  # the class's repository", cell.source
    )
    grader = cell.metadata.get("nbgrader", {})
    if "checksum" in grader:
        grader["checksum"] = compute_checksum(cell)
    badge = nbformat.v4.new_markdown_cell(
        f'<a href="{colab_url(repo, branch, path)}" target="_parent">'
        "Open in Colab</a> (a free GPU: run the first cell, then the notebook)"
    )
    badge["id"] = "colab-link"
    nb.cells.insert(0, badge)
    return nb
