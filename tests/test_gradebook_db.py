"""``kdlib grade --db``: a bad URL is one line and exit status 2; a class graded into a real
PostgreSQL server gives the same CSV as SQLite, a rerun updates it in place, and a parallel run
agrees.

The PostgreSQL tests start their own server from Debian's ``postgresql`` package (``.ci/run``
installs it) on a free port of 127.0.0.1, in a temporary folder, and stop it afterwards; where
the package or the psycopg driver is missing they are skipped, saying which.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("nbgrader")

from test_grading import (  # noqa: E402
    A1,
    A2,
    FIXTURES,
    REPO,
    TIMEOUT,
    kdlib_grade,
    read_csv,
    release_course,
    set_cell,
)

# --------------------------------------------------------------------------- bad --db


@pytest.fixture(scope="module")
def bare_course(tmp_path_factory) -> Path:
    """The fixture assignments' sources and the course config (enough for argument checks)."""
    root = tmp_path_factory.mktemp("dbcourse")
    shutil.copytree(FIXTURES, root / "solutions")
    shutil.copy(REPO / "nbgrader_config.py", root / "nbgrader_config.py")
    (root / "subs").mkdir()
    return root


def _grade_with_db(course: Path, db: str):
    return kdlib_grade(
        A1,
        "--submissions",
        course / "subs",
        "--out",
        course / "out",
        "--db",
        db,
        cwd=course,
        in_process=True,
    )


@pytest.mark.parametrize(
    "db, names",
    [
        ("not a url at all", "not a database URL"),
        ("postgresql://grader@127.0.0.1:1/kd_course", "127.0.0.1:1"),
        ("postgresql://grader@no-such-host.invalid/kd_course", "no-such-host.invalid"),
    ],
    ids=["malformed", "refused", "unknown-host"],
)
def test_a_bad_database_url_is_one_line_and_exit_2(bare_course, db, names):
    pytest.importorskip("psycopg")
    run = _grade_with_db(bare_course, db)
    assert run.returncode == 2, run.stdout + run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kdlib grade: "), run.stderr
    assert names in lines[0] and "Traceback" not in run.stderr


def test_an_unwritable_sqlite_gradebook_is_one_line_naming_the_path(bare_course, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    target = blocker / "gradebook.db"  # a folder cannot be made inside a file, even by root
    run = _grade_with_db(bare_course, f"sqlite:///{target}")
    assert run.returncode == 2, run.stdout + run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and str(blocker) in lines[0], run.stderr


# --------------------------------------------------------------------------- a real server


def _postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server of our own: yields a function that creates a database and returns
    its URL."""
    pytest.importorskip("psycopg", reason="the psycopg driver (course extra) is not installed")
    bindir = _postgres_bin()
    if bindir is None or not (bindir / "pg_ctl").exists():
        pytest.skip(
            "PostgreSQL's server programs are not installed (Debian package "
            "'postgresql'; .ci/run installs it)"
        )
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="kdlib-pg-"))
    if os.geteuid() == 0:  # the server refuses to run as root: run it as 'postgres'
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL")
        try:
            shutil.chown(folder, "postgres", "postgres")
        except (LookupError, PermissionError):
            pytest.skip("running as root and there is no 'postgres' user to start the server")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = folder / "data", _free_port()
    init = subprocess.run(
        [*as_user, bindir / "initdb", "-D", data, "-U", "grader", "--auth=trust", "-E", "UTF8"],
        capture_output=True,
        text=True,
    )
    assert init.returncode == 0, init.stderr
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    start = subprocess.run(
        [
            *as_user,
            bindir / "pg_ctl",
            "-D",
            data,
            "-o",
            options,
            "-l",
            folder / "log",
            "-w",
            "-t",
            "60",
            "start",
        ],
        capture_output=True,
        text=True,
    )
    assert start.returncode == 0, start.stdout + start.stderr + (folder / "log").read_text()

    import psycopg

    def database(name: str) -> str:
        with psycopg.connect(
            host="127.0.0.1", port=port, user="grader", dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://grader@127.0.0.1:{port}/{name}"

    try:
        yield database
    finally:
        subprocess.run(
            [*as_user, bindir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"],
            capture_output=True,
        )
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def small_class(tmp_path_factory) -> tuple[Path, Path]:
    """The fixture course released, and three students: full marks, nothing, partly right."""
    import nbformat

    course = tmp_path_factory.mktemp("pgcourse")
    shutil.copytree(FIXTURES, course / "solutions")
    shutil.copy(REPO / "nbgrader_config.py", course / "nbgrader_config.py")
    release_course(course)
    subs = tmp_path_factory.mktemp("pgsubs")

    def put(student, name, folder, edit=None):
        nb = nbformat.read(course / folder / name / f"{name}.ipynb", as_version=4)
        if edit:
            edit(nb)
        (subs / student / name).mkdir(parents=True)
        nbformat.write(nb, subs / student / name / f"{name}.ipynb")

    for name in (A1, A2):
        put("ada", name, "solutions")
        put("bob", name, "notebooks")
    put(
        "cyd",
        A1,
        "notebooks",
        lambda nb: set_cell(nb, "add_answer", "def add(a, b):\n    return a + b"),
    )
    put(
        "cyd",
        A2,
        "notebooks",
        lambda nb: set_cell(nb, "mean_answer", "def mean(xs):\n    return sum(xs) / len(xs)"),
    )
    return course, subs


def _grade(course: Path, subs: Path, out: Path, *extra) -> tuple[bytes, list[dict]]:
    run = kdlib_grade(
        A1,
        A2,
        "--submissions",
        subs,
        "--out",
        out,
        "--timeout",
        TIMEOUT,
        *extra,
        cwd=course,
        in_process=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return (out / "grades.csv").read_bytes(), read_csv(out / "grades.csv")


@pytest.mark.slow
@pytest.mark.notebooks  # starts Jupyter kernels
def test_postgresql_gradebook_matches_sqlite_reruns_in_place_and_in_parallel(
    small_class, postgres, tmp_path
):
    from nbgrader.api import Gradebook

    from kdlib.course.gradebook import resolve_db_url

    course, subs = small_class
    sqlite_csv, rows = _grade(course, subs, tmp_path / "sqlite")
    scores = {(r["student"], r["assignment"]): float(r["score"]) for r in rows}
    assert scores == {
        ("ada", A1): 5,
        ("ada", A2): 3,
        ("bob", A1): 0,
        ("bob", A2): 0,
        ("cyd", A1): 2,
        ("cyd", A2): 2,
    }

    url = postgres("kd_course")
    t0 = time.perf_counter()
    pg_csv, _ = _grade(course, subs, tmp_path / "pg", "--db", url)
    assert pg_csv == sqlite_csv
    assert not (tmp_path / "pg" / "gradebook.db").exists(), "the grades went to PostgreSQL"

    rerun_csv, _ = _grade(course, subs, tmp_path / "pg", "--db", url)
    assert rerun_csv == sqlite_csv
    with Gradebook(resolve_db_url(url, tmp_path), "kd-course") as gb:
        assert sorted(s.id for s in gb.students) == ["ada", "bob", "cyd"]
        for name in (A1, A2):
            assert len(gb.assignment_submissions(name)) == 3, "a rerun updates, never adds"
    serial_seconds = time.perf_counter() - t0

    url = postgres("kd_course_parallel")
    parallel_csv, _ = _grade(course, subs, tmp_path / "pg-parallel", "--db", url, "--jobs", "2")
    assert parallel_csv == sqlite_csv
    print(f"two serial PostgreSQL runs took {serial_seconds:.1f} s")


@pytest.mark.slow
@pytest.mark.notebooks  # starts Jupyter kernels
def test_three_shards_into_one_postgresql_gradebook_give_the_same_grades_csv(
    small_class, postgres, tmp_path
):
    """``kdlib grade --shard K/3`` in three processes at once (each with its own --out, as on
    three machines), then ``kdlib gradebook export``: grades.csv byte-identical to one process;
    every feedback page there; rerunning a shard changes nothing."""
    import sys

    from kdlib.course.gradebook import shard_of

    course, subs = small_class
    timeout = str(10 * TIMEOUT)  # three graders at once on a shared machine: no cell cut short
    single_csv, _ = _grade(course, subs, tmp_path / "single", "--skip-canary", "--timeout", timeout)
    url = postgres("kd_course_shards")
    env = dict(os.environ, PYTHONWARNINGS="ignore")

    def shard(k: int) -> subprocess.Popen:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kdlib",
                "grade",
                A1,
                A2,
                "--submissions",
                str(subs),
                "--out",
                str(tmp_path / f"machine{k}"),
                "--db",
                url,
                "--timeout",
                timeout,
                "--shard",
                f"{k}/3",
                "--skip-canary",
            ],
            cwd=course,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    shards = [shard(k) for k in range(3)]
    outputs = [p.communicate(timeout=900)[0] for p in shards]
    for k, (proc, output) in enumerate(zip(shards, outputs, strict=True)):
        assert proc.returncode == 0, output
        mine = sorted(s for s in ("ada", "bob", "cyd") if shard_of(s, 3) == k)
        assert f"shard {k}/3: {2 * len(mine)} submission(s)" in output, output

    def export(folder):
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "kdlib",
                "gradebook",
                "export",
                "--db",
                url,
                "--out",
                str(folder),
                "--course-dir",
                str(course),
            ],
            cwd=course,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        return (folder / "grades.csv").read_bytes()

    assert export(tmp_path / "export") == single_csv
    pages = sorted(
        p.relative_to(tmp_path / "export" / "feedback")
        for p in (tmp_path / "export" / "feedback").rglob("*.html")
    )
    assert len(pages) == 6, pages
    assert read_csv(tmp_path / "export" / "issues.csv") == []

    again = shard(shard_of("ada", 3))  # a failed shard is simply run again
    assert again.wait(timeout=900) == 0, again.communicate()[0]
    assert export(tmp_path / "export-again") == single_csv
