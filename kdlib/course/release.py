"""``kdlib release``: regenerate the student notebooks (notebooks/) from the solutions.

    kdlib release                      every assignment in solutions/
    kdlib release 03_training_loop     one assignment
    kdlib release --execute            first run each solution in fast mode and store the
                                       output of the cells marked ``# NBVAL_CHECK_OUTPUT``
    kdlib release --check              change nothing; exit 1 if notebooks/ or solutions/
                                       differ from what this command would write
    kdlib release --student-edition DIR
                                       also write the students' repository to DIR (below)

What it does, per assignment:

1. *Cleans the solution* (``solutions/<a>/<a>.ipynb``): removes every output and execution
   count except the outputs (and a fixed execution count of 1) of cells whose first line is
   ``# NBVAL_CHECK_OUTPUT`` (nbval compares those), and drops run-time metadata (papermill's,
   execution timings), so that the
   committed notebooks do not change from one run to the next.
2. *Generates the release* with nbgrader's ``generate_assignment`` in a temporary course folder
   (the course's own gradebook is not touched): solution regions become
   ``raise NotImplementedError()``, hidden tests are removed, outputs are cleared, locked cells
   get their checksums. The result replaces ``notebooks/<a>/``.

``--student-edition DIR`` then writes, from the release, a repository for the students
(:func:`student_edition`): the student notebooks, the library, ``data/``, the environment files,
a README written for them and the tests that need no solution; never ``solutions/``, hidden
tests, the gradebook or the instructors' tools. ``DIR/.git`` is kept, everything else in DIR is
replaced, so the same folder can be committed and pushed after every release; running it again
writes the same tree.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import nbformat

CHECK_MARK = "# NBVAL_CHECK_OUTPUT"
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}

__all__ = [
    "assignments",
    "clean_solution",
    "generate_releases",
    "release",
    "check",
    "student_edition",
]


def _root(course_dir: str | Path | None) -> Path:
    if course_dir is not None:
        return Path(course_dir).resolve()
    from kdlib.course.run import find_repo_root

    return find_repo_root()


def assignments(course_dir: str | Path | None = None) -> list[str]:
    """Names of the assignments: the folders of ``solutions/`` that hold a notebook."""
    source = _root(course_dir) / "solutions"
    return sorted(p.name for p in source.iterdir() if p.is_dir() and any(p.glob("*.ipynb")))


def _checked(cell) -> bool:
    return cell.cell_type == "code" and cell.source.lstrip().startswith(CHECK_MARK)


def clean_solution(nb, keep_from=None):
    """Return a copy of ``nb`` with outputs only in ``# NBVAL_CHECK_OUTPUT`` cells.

    ``keep_from``: an executed copy of the notebook whose outputs for the checked cells are
    taken (matched by cell id, else by source); without it the stored outputs are kept.
    """
    nb = copy.deepcopy(nb)
    executed = {}
    if keep_from is not None:
        for cell in keep_from.cells:
            if _checked(cell):
                executed[cell.get("id")] = cell
                executed[cell.source] = cell
    for cell in nb.cells:
        for key in ("execution", "papermill", "collapsed", "scrolled", "ExecuteTime"):
            cell.metadata.pop(key, None)
        if cell.cell_type != "code":
            continue
        if not _checked(cell):
            cell.execution_count = None
            cell.outputs = []
            continue
        # nbval refuses a stored output whose cell has no execution count ("unrun reference
        # cell has outputs"): checked cells get a fixed one, so the file stays the same
        cell.execution_count = 1
        if executed:
            match = executed.get(cell.get("id")) or executed.get(cell.source)
            if match is None:
                raise ValueError(f"no executed output for checked cell:\n{cell.source[:200]}")
            cell.outputs = copy.deepcopy(match.outputs)
        for output in cell.outputs:
            if "execution_count" in output:
                output.execution_count = 1
    nb.metadata = nbformat.from_dict(
        {
            "kernelspec": KERNELSPEC,
            "language_info": {"name": "python"},
            **({"nbgrader": nb.metadata["nbgrader"]} if "nbgrader" in nb.metadata else {}),
        }
    )
    return nb


def _execute_fast(path: Path, workdir: Path):
    """Run a solution in fast mode with papermill; return the executed notebook."""
    import papermill

    out = workdir / f"executed-{path.name}"
    env_before = os.environ.get("KDLIB_FAST")
    os.environ["KDLIB_FAST"] = "1"
    os.environ.setdefault("MPLBACKEND", "agg")
    try:
        papermill.execute_notebook(
            str(path),
            str(out),
            kernel_name="python3",
            cwd=str(workdir),
            progress_bar=False,
            execution_timeout=600,
        )
    finally:
        if env_before is None:
            os.environ.pop("KDLIB_FAST", None)
        else:
            os.environ["KDLIB_FAST"] = env_before
    return nbformat.read(out, as_version=4)


def generate_releases(names: list[str], course_dir: str | Path | None = None) -> dict:
    """Run nbgrader's generate_assignment on ``solutions/<name>`` for each name, in a temporary
    course folder with a temporary gradebook (one for all, so nbgrader sets it up once).

    Returns ``{name: {relative file name: text}}`` of each generated release folder
    (notebooks in canonical form). Raises ``RuntimeError`` with nbgrader's log on failure.
    """
    from nbgrader.apps import NbGraderAPI
    from traitlets.config import Config

    from kdlib.course.coursedir import ensure_alembic_on_path, load_course_config

    ensure_alembic_on_path()  # nbgrader runs the `alembic` command of this environment
    root = _root(course_dir)
    releases = {}
    with tempfile.TemporaryDirectory(prefix="kdlib-release-") as tmp:
        # the course's own settings (course id, stubs), with the release and the gradebook
        # moved into the temporary folder
        config = load_course_config(root)
        overrides = Config()
        overrides.CourseDirectory.root = str(root)
        overrides.CourseDirectory.source_directory = "solutions"
        overrides.CourseDirectory.release_directory = str(Path(tmp) / "release")
        overrides.CourseDirectory.db_url = f"sqlite:///{tmp}/gradebook.db"
        overrides.NbGraderAPI.log_level = logging.WARNING
        config.merge(overrides)
        api = NbGraderAPI(config=config)
        for name in names:
            result = api.generate_assignment(name, force=True, create=True)
            if not result["success"]:
                raise RuntimeError(
                    f"nbgrader could not generate {name}:\n{result.get('error') or ''}\n"
                    f"{result.get('log') or ''}"
                )
            folder = Path(tmp) / "release" / name
            files = {}
            for path in sorted(folder.rglob("*")):
                if not path.is_file():
                    continue
                rel = path.relative_to(folder).as_posix()
                if path.suffix == ".ipynb":
                    nb = nbformat.read(path, as_version=4)
                    nb.metadata["kernelspec"] = KERNELSPEC
                    nb.metadata["language_info"] = {"name": "python"}
                    files[rel] = nbformat.writes(nb, version=4) + "\n"
                else:
                    files[rel] = path.read_text()
            releases[name] = files
    return releases


def release(
    names: list[str] | None = None,
    course_dir: str | Path | None = None,
    execute: bool = False,
    check_only: bool = False,
    echo=print,
) -> list[str]:
    """Clean the solutions and regenerate their releases; returns the paths that changed
    (with ``check_only``: that would change, writing nothing)."""
    root = _root(course_dir)
    known = assignments(root)
    names = names or known
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown assignment {', '.join(unknown)}; known: {', '.join(known)}")
    changed = []
    cleaned_changed = {}
    for name in names:
        before = len(changed)
        source_dir = root / "solutions" / name
        with tempfile.TemporaryDirectory(prefix="kdlib-exec-") as tmp:
            for path in sorted(source_dir.glob("*.ipynb")):
                nb = nbformat.read(path, as_version=4)
                executed = _execute_fast(path, Path(tmp)) if execute else None
                cleaned = clean_solution(nb, keep_from=executed)
                text = nbformat.writes(cleaned, version=4) + "\n"
                if path.read_text() != text:
                    changed.append(str(path.relative_to(root)))
                    if not check_only:
                        path.write_text(text)
        cleaned_changed[name] = len(changed) > before
    releases = generate_releases(names, root)
    for name in names:
        before = len(changed)
        files = releases[name]
        dest = root / "notebooks" / name
        current = (
            {
                p.relative_to(dest).as_posix(): p.read_text()
                for p in sorted(dest.rglob("*"))
                if p.is_file()
            }
            if dest.exists()
            else {}
        )
        if current != files:
            changed.append(str(dest.relative_to(root)))
            if not check_only:
                shutil.rmtree(dest, ignore_errors=True)
                for rel, text in files.items():
                    (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                    (dest / rel).write_text(text)
        state = "out of date" if check_only else "updated"
        state = "up to date" if len(changed) == before and not cleaned_changed[name] else state
        echo(f"{name}: {state}")
    stale = (
        [p.name for p in (root / "notebooks").iterdir() if p.is_dir() and p.name not in known]
        if (root / "notebooks").exists()
        else []
    )
    for name in stale:
        changed.append(f"notebooks/{name}")
        if not check_only:
            shutil.rmtree(root / "notebooks" / name)
    return changed


def check(course_dir: str | Path | None = None) -> list[str]:
    """What ``kdlib release`` would change now (empty when everything is up to date)."""
    return release(course_dir=course_dir, check_only=True, echo=lambda *a: None)


def add_arguments(parser: argparse.ArgumentParser, path=("release",)) -> None:
    parser.add_argument("assignments", nargs="*", help="assignments to release (default: all)")
    parser.add_argument(
        "--execute",
        action="store_true",
        help="run each solution in fast mode first and store the outputs of the "
        f"cells marked '{CHECK_MARK}'",
    )
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if anything would change"
    )
    parser.add_argument("--course-dir", default=None, help="course root (default: this repo)")
    parser.add_argument(
        "--student-edition",
        metavar="DIR",
        default=None,
        help="then write the students' repository (release notebooks, kdlib, data, tests that "
        "need no solution, a README for students; no solutions) to DIR, keeping DIR/.git",
    )
    parser.add_argument(
        "--colab-repo",
        metavar="ORG/REPO[@BRANCH]",
        default=None,
        help="with --student-edition: the GitHub repository the class clones; each notebook "
        "gets an 'Open in Colab' link, and on Colab its first cell installs kdlib from there",
    )
    parser.add_argument(
        "--colab-install",
        metavar="REQUIREMENT",
        default=None,
        help="with --colab-repo: what the Colab cell pip-installs instead of "
        "git+https://github.com/ORG/REPO@BRANCH (another host, a wheel URL)",
    )


def main(args: argparse.Namespace) -> int:
    if (args.colab_repo or args.colab_install) and not args.student_edition:
        print("kdlib release: --colab-repo needs --student-edition DIR", file=sys.stderr)
        return 2
    try:
        changed = release(
            args.assignments or None,
            course_dir=args.course_dir,
            execute=args.execute,
            check_only=args.check,
        )
    except (ValueError, RuntimeError) as err:
        print(f"kdlib release: {err}", file=sys.stderr)
        return 2
    if args.check:
        for path in changed:
            print(f"out of date: {path}")
        return 1 if changed else 0
    for path in changed:
        print(f"updated {path}")
    if args.student_edition:
        try:
            files = student_edition(
                args.student_edition,
                course_dir=args.course_dir,
                colab_repo=args.colab_repo,
                colab_install=args.colab_install,
            )
        except (ValueError, RuntimeError) as err:
            print(f"kdlib release: {err}", file=sys.stderr)
            return 2
        print(f"student edition: {len(files)} files in {args.student_edition}")
    return 0


# ---------------------------------------------------------------------------------------------
# The student edition: the repository the class clones


# the only files of kdlib/course students get (the notebooks save their figures through
# results.py; cli.py is the `kdlib` command, whose instructor subcommands are then absent): the
# rest runs solutions/, grades or releases
STUDENT_COURSE_FILES = ("__init__.py", "cli.py", "results.py")
# a test file ships only if it needs none of these (solutions, the grader, the course run, the
# instructors' repository files) and does not use the `course` fixture (the solutions, run)
_INSTRUCTOR_TEST = re.compile(
    r"solutions|exercise_answers|kdlib\.course|benchmarks|nbgrader|notebooks|README|"
    r"CONTRIBUTING|pyproject|environment\.yml|\.ci\b|def test_\w+\([^)]*\bcourse\b"
)
_SKIP_PARTS = {"__pycache__", ".ipynb_checkpoints", ".pytest_cache", ".ruff_cache"}
LEAK_MARKERS = ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS")


def _files(folder: Path):
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if (
            path.is_file()
            and not (_SKIP_PARTS & set(rel.parts))
            and path.suffix != ".pyc"
            and not any(p.endswith(".egg-info") for p in rel.parts)
        ):
            yield path


def student_tests(root: Path) -> list[str]:
    """The test files of ``tests/`` that run without solutions/ or the instructors' tools."""
    tests = root / "tests"
    if not tests.is_dir():
        return []
    keep = [
        p.name
        for p in sorted(tests.glob("test_*.py"))
        if not _INSTRUCTOR_TEST.search(p.read_text())
    ]
    return (["conftest.py"] if (tests / "conftest.py").exists() else []) + keep


def _student_readme(root: Path, names: list[str]) -> str:
    template = (Path(__file__).parent / "student_readme.md").read_text()
    # the table of notebooks, as the instructors' README has it (links into notebooks/)
    table = []
    readme = root / "README.md"
    if readme.exists():
        lines = readme.read_text().splitlines()
        start = next((i for i, line in enumerate(lines) if line.startswith("| # | Notebook")), None)
        if start is not None:
            for line in lines[start:]:
                if not line.startswith("|"):
                    break
                number = line.split("|")[1].strip()
                if (
                    line is lines[start]
                    or set(number) <= set("-: ")
                    or any(n.startswith(number) for n in names)
                ):
                    table.append(line)
    if not table:
        table = ["| Notebook |", "|---|"] + [f"| [{n}](notebooks/{n}/{n}.ipynb) |" for n in names]
    first = names[0] if names else "01_intuition"
    return template.replace("{table}", "\n".join(table)).replace("{first}", first)


_STUDENT_CONFIG = '''"""nbgrader settings for students (the course's Assignment List in JupyterLab).

The exchange is the folder through which assignments are released and submitted: the one your
instructor gives you (set KDLIB_EXCHANGE to it), else nbgrader's default, /srv/nbgrader/exchange.
"""

import os

c = get_config()  # noqa: F821  (nbgrader injects get_config)

c.CourseDirectory.course_id = "{course_id}"
c.Exchange.root = os.environ.get("KDLIB_EXCHANGE", "/srv/nbgrader/exchange")
'''

_STUDENT_GITIGNORE = """__pycache__/
*.egg-info/
.venv/
build/
.ipynb_checkpoints/
.pytest_cache/
# datasets are downloaded by you, never committed
data/*
!data/README.md
!data/full_mode/
"""


def student_edition_files(
    course_dir: str | Path | None = None,
    colab_repo: str | None = None,
    colab_install: str | None = None,
) -> dict[str, bytes]:
    """``{relative path: content}`` of the student repository (from the committed release).

    ``colab_repo`` (``ORG/REPO[@BRANCH]``, the GitHub repository the class clones): each
    notebook gets an "Open in Colab" link and its Colab set-up cell installs kdlib from there
    (or from the pip requirement ``colab_install``); see :mod:`kdlib.course.colab`.
    """
    root = _root(course_dir)
    if colab_install is not None and colab_repo is None:
        raise ValueError("colab_install: needs colab_repo (the repository the links open)")
    names = (
        sorted(
            p.name for p in (root / "notebooks").iterdir() if p.is_dir() and any(p.glob("*.ipynb"))
        )
        if (root / "notebooks").is_dir()
        else []
    )
    out: dict[str, bytes] = {}
    for name in names:
        for path in _files(root / "notebooks" / name):
            rel = path.relative_to(root).as_posix()
            out[rel] = path.read_bytes()
            if colab_repo is not None and path.suffix == ".ipynb":
                from kdlib.course.colab import for_colab

                nb = for_colab(
                    nbformat.reads(out[rel].decode(), as_version=4), rel, colab_repo, colab_install
                )
                out[rel] = (nbformat.writes(nb, version=4) + "\n").encode()
    for path in _files(root / "kdlib"):
        rel = path.relative_to(root)
        if rel.parts[1:2] == ("course",) and rel.as_posix() not in {
            f"kdlib/course/{name}" for name in STUDENT_COURSE_FILES
        }:
            continue
        out[rel.as_posix()] = path.read_bytes()
    data = root / "data"
    for path in [
        data / "README.md",
        *(_files(data / "full_mode") if (data / "full_mode").is_dir() else []),
    ]:
        if path.is_file():
            out[path.relative_to(root).as_posix()] = path.read_bytes()
    for name in student_tests(root):
        out[f"tests/{name}"] = (root / "tests" / name).read_bytes()
    for name in ("conftest.py", "environment.yml", "LICENSE"):
        if (root / name).is_file():
            out[name] = (root / name).read_bytes()
    pyproject = root / "pyproject.toml"
    if pyproject.is_file():
        text = pyproject.read_text().replace(
            'testpaths = ["tests", "solutions"]', 'testpaths = ["tests"]'
        )
        text = text.replace("--nbval-lax ", "").replace(', "solutions"', "")
        # comments about the instructors' folders go (the student edition has none of them)
        text = "".join(
            line
            for line in text.splitlines(keepends=True)
            if not (line.lstrip().startswith("#") and ("solutions" in line or "NBVAL" in line))
        )
        out["pyproject.toml"] = text.encode()
    from kdlib.course.coursedir import load_course_config

    course_id = load_course_config(root).CourseDirectory.get("course_id", "kd-course")
    out["nbgrader_config.py"] = _STUDENT_CONFIG.replace("{course_id}", str(course_id)).encode()
    out["README.md"] = _student_readme(root, names).encode()
    out[".gitignore"] = _STUDENT_GITIGNORE.encode()
    for rel, content in out.items():
        if rel.endswith((".py", ".ipynb", ".md", ".toml", ".yml")):
            text = content.decode("utf-8", errors="replace")
            leaked = [m for m in LEAK_MARKERS if m in text]
            if leaked:
                raise RuntimeError(f"student edition: {rel} contains {leaked}; not written")
    return out


def student_edition(
    dest: str | Path,
    course_dir: str | Path | None = None,
    colab_repo: str | None = None,
    colab_install: str | None = None,
) -> list[str]:
    """Write the student repository to ``dest`` (keeping ``dest/.git``); returns its files.

    Everything else in ``dest`` is replaced, so the result depends only on the course: running
    it again gives the same tree. ``colab_repo``, ``colab_install``: see
    :func:`student_edition_files`.
    """
    dest = Path(dest).resolve()
    root = _root(course_dir)
    if dest == root or root in dest.parents:
        raise ValueError(f"DIR must be outside the course repository, got {dest}")
    files = student_edition_files(root, colab_repo=colab_repo, colab_install=colab_install)
    dest.mkdir(parents=True, exist_ok=True)
    for entry in dest.iterdir():
        if entry.name == ".git":
            continue
        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    for rel, content in sorted(files.items()):
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_bytes(content)
    return sorted(files)
