"""``kdlib grade``: a folder of student submissions to grades, feedback and a gradebook.

    kdlib grade [ASSIGNMENT ...] --submissions DIR [--db URL] [--out DIR] [--jobs N]
                [--course-dir DIR] [--timeout SECONDS] [--csv FILE] [--no-feedback]
                [--memory-limit SIZE] [--file-limit SIZE] [--shard K/N] [--skip-canary]
                [--run-all-cells]

The work is done by nbgrader (0.9), through its Python API, with the course's
``nbgrader_config.py``; this module runs the steps an instructor otherwise does by hand, each
in a module of its own:

1. **Find** the submissions in ``--submissions`` (either layout below;
   :mod:`kdlib.course.submissions`); with ``--shard K/N`` keep the students of shard K.
2. **Prepare** each assignment from the course's *source* folder (``solutions/``):
   ``generate_assignment`` into a temporary folder and gradebook (the committed release,
   ``notebooks/``, is never touched), the checksums of its locked cells and the sources of its
   released cells.
3. **The canary** (:mod:`kdlib.course.canary`): the solution and the untouched release of each
   assignment graded first, in the same settings; grading stops there if either differs from
   what it should score (``--skip-canary`` to go on without it).
4. **Register** each assignment in the course's gradebook (one shard at a time), **import**
   each submission into ``<out>/submitted/<student>/<assignment>/<notebook>.ipynb`` after
   checking it, and **autograde** it (:mod:`kdlib.course.autograde`: its own process, kernel
   and sandbox, memory and file limits; locked cells overwritten from the gradebook, hidden
   tests restored, the cells no grade depends on left out, every other cell run with a per-cell
   timeout), then **generate feedback** HTML into ``<out>/feedback/<student>/<assignment>/``.
5. **Export** (:mod:`kdlib.course.export`) ``<out>/grades.csv`` (one row per student and
   assignment: student, assignment, score, max_score, then the points of every graded cell)
   and ``<out>/issues.csv`` (everything reported). A shard also stores its issues and feedback
   pages in the gradebook, for ``kdlib gradebook export``.

Submission layouts (both may be mixed in one folder):

- nbgrader's: ``DIR/<student>/<assignment>/<notebook>.ipynb`` (what ``nbgrader collect`` and
  ``zip_collect`` produce; ``timestamp.txt`` and other files travel with the notebook);
- flat, per assignment: ``DIR/<assignment>/<student>.ipynb``; and, when exactly one ASSIGNMENT
  is named, ``DIR/<student>.ipynb``.

A folder named like an assignment of the course is read as the flat layout; any other folder
is a student's. When an assignment has one notebook, a submitted notebook with another name is
renamed to it.

Re-running is safe: nbgrader updates the gradebook in place (one submission per student and
assignment), manual grades entered in the formgrader are kept, and the CSV files come out the
same. Exit status: 0 every submission found was graded; 1 something was reported as bad input
or could not be graded (the rest was graded; see issues.csv); 2 usage error (no course, unknown
ASSIGNMENT named, no submissions folder); 3 the canary failed (nothing was graded).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path

from kdlib.course.autograde import (
    autograde_all,
    failure_reason,
    guarded,
    prepare_submission,
    save_log,
    template_gradebook,
)
from kdlib.course.canary import CanaryFailed, run_canary
from kdlib.course.coursedir import (
    CONFIG_FILE,
    DEFAULT_OUT,
    GradingError,
    GradingRun,
    config_value,
    ensure_alembic_on_path,
    find_course_dir,
    load_course_config,
    source_assignments,
)
from kdlib.course.export import LMS_FORMATS, Report, write_reports, write_rubrics
from kdlib.course.gradebook import (
    GradebookError,
    check_database,
    parse_shard,
    registration_lock,
    resolve_db_url,
    shard_of,
    store_shard,
)
from kdlib.course.submissions import (
    Issue,
    Submission,
    locked_checksums,
    read_notebook,
    scan_submissions,
)

DEFAULT_MEMORY_LIMIT = 4 << 30  # bytes of data per submission (RLIMIT_DATA)
DEFAULT_FILE_LIMIT = 1 << 30  # bytes per file written, and of the sandbox's /tmp
_REGEX_SPECIAL = set("()[]{}?*+|^$\\")  # nbgrader puts folder names into regexes unescaped


def grade(
    submissions: str | Path,
    assignments: list[str] | None = None,
    *,
    course_dir: str | Path | None = None,
    out: str | Path | None = None,
    db_url: str | None = None,
    timeout: int | None = None,
    csv_path: str | Path | None = None,
    feedback: bool = True,
    jobs: int = 1,
    memory_limit: int | None = DEFAULT_MEMORY_LIMIT,
    file_limit: int | None = DEFAULT_FILE_LIMIT,
    canary: bool = True,
    shard: tuple[int, int] | None = None,
    run_all_cells: bool = False,
    export: str | None = None,
    echo=print,
) -> Report:
    """Grade a folder of submissions; see the module docstring. Raises GradingError on usage
    errors; every problem with a submission is an Issue in the returned Report."""
    if not isinstance(jobs, int) or jobs < 1:
        raise GradingError(f"--jobs must be a positive integer, got {jobs!r}")
    if export is not None:
        if export not in LMS_FORMATS:
            raise GradingError(f"--export must be one of {', '.join(LMS_FORMATS)}, got {export!r}")
        if shard is not None:
            raise GradingError(
                "--export with --shard: a shard sees only its own students; when every shard "
                f"is done, `kdlib gradebook export --db URL --format {export}` writes the file"
            )
    run = _check_arguments(
        submissions, assignments, course_dir, out, db_url, timeout, csv_path, feedback, echo
    )
    run.jobs = jobs
    run.memory_limit, run.file_limit = memory_limit or None, file_limit or None
    run.skip_unneeded = not run_all_cells
    run.export = export
    if shard is not None:
        if resolve_db_url(run.db_url, run.out).startswith("sqlite"):
            raise GradingError(
                "--shard: the shards need one gradebook they all reach: --db "
                "postgresql://USER@HOST/DB"
            )
        run.shard = shard
    ensure_alembic_on_path()
    _announce_sandbox(run)
    subs, selected = _find_submissions(run)
    if run.shard is not None:
        k, n = run.shard
        subs = [s for s in subs if shard_of(s.student, n) == k]
        run.issues = [i for i in run.issues if shard_of(i.student, n) == k]
        run.echo(
            f"shard {k}/{n}: {len(subs)} submission(s), {len({s.student for s in subs})} student(s)"
        )
    with tempfile.TemporaryDirectory(prefix="kdlib-grade-") as work:
        release_dir = os.path.join(work, "release")
        api = _nbgrader_api(run, release_dir)
        course_id = api.coursedir.course_id
        prepared = {}  # assignment -> (template gradebook, checksums)
        for name in selected:
            n_subs = sum(s.assignment == name for s in subs)
            try:
                template = template_gradebook(run, api, name, Path(work))
                checksums = _assignment_checksums(run, name, release_dir, template, course_id)
            except Exception as exc:  # noqa: BLE001 - reported, the other assignments go on
                run.issues.append(
                    Issue(
                        name,
                        "",
                        "assignment-failed",
                        f"{run.source_dir / name}: {exc}; its {n_subs} "
                        "submission(s) were not graded",
                    )
                )
                continue
            prepared[name] = (template, checksums)
        if canary and prepared:  # before anything reaches the course's gradebook
            run.canary = run_canary(run, api, prepared, Path(release_dir), Path(work))
        elif prepared:
            run.canary = "skipped (--skip-canary)"
            run.echo("canary: SKIPPED (--skip-canary): the grading environment is not checked")
        with registration_lock(run.db_url):  # shards register one at a time
            registered = [
                name
                for name in prepared
                if _register_assignment(run, api, name, sum(s.assignment == name for s in subs))
            ]
        for name in registered:  # the model answers and rubrics, for the graders only
            write_rubrics(run.source_dir / name, run.out / "rubrics" / name)
        todo = []
        for name in registered:
            template, checksums = prepared[name]
            mine = [s for s in subs if s.assignment == name]
            for sub in mine:
                job = guarded(
                    run,
                    sub,
                    prepare_submission,
                    run,
                    sub,
                    checksums,
                    template,
                    Path(work) / f"job{len(todo):05d}",
                )
                if job is not None:
                    todo.append(job)
        autograde_all(run, api, todo)
    if run.shard is not None:
        _store_shard(run)
    return write_reports(run, api.coursedir.course_id, selected)


def _store_shard(run: GradingRun) -> None:
    """A shard's issues and feedback pages into the shared gradebook (for ``kdlib gradebook
    export``)."""
    k, n = run.shard
    issues = sorted({i for i in run.issues if shard_of(i.student, n) == k})
    pages = {}
    for assignment, student in run.graded:
        for page in sorted((run.out / "feedback" / student / assignment).glob("*.html")):
            pages[(assignment, student, page.stem)] = page.read_text("utf-8")
    store_shard(run.db_url, f"{k}/{n}", issues, pages)


def _announce_sandbox(run: GradingRun) -> None:
    """Say, on every run, whether the students' kernels run in bubblewrap."""
    from kdlib.course.sandbox import bwrap_status

    path, reason = bwrap_status()
    run.sandbox = "" if path else reason
    if path:
        run.echo(
            f"sandbox: each kernel runs in bubblewrap ({path}): its own scratch folder, "
            "no network, nothing else of the course in sight"
        )
    else:
        run.echo(
            f"kdlib grade: warning: NO SANDBOX: {reason}; the students' code runs with "
            "this account's rights (see the README, 'Running students' code safely')"
        )


def _check_arguments(
    submissions, assignments, course_dir, out, db_url, timeout, csv_path, feedback, echo
) -> GradingRun:
    """Find the course and its assignments, check the folders, and create the output folder
    (and the SQLite gradebook's folder). Raises GradingError for every usage error."""
    course = Path(course_dir).resolve() if course_dir else find_course_dir()
    if not course.is_dir():
        raise GradingError(f"course folder {course} does not exist")
    cfg = load_course_config(course)
    source_dir = course / config_value(cfg, "CourseDirectory", "source_directory", "source")
    known = source_assignments(source_dir)
    if not known:
        raise GradingError(f"no assignments in {source_dir} (expected <assignment>/*.ipynb)")
    named = list(dict.fromkeys(assignments or []))
    unknown = [a for a in named if a not in known]
    if unknown:
        raise GradingError(
            f"unknown assignment {', '.join(unknown)}: the course has "
            f"{', '.join(known)} (in {source_dir})"
        )
    sub_root = Path(submissions).resolve()
    if not sub_root.is_dir():
        raise GradingError(f"submissions folder {submissions} does not exist")

    out = Path(out).resolve() if out else course / DEFAULT_OUT
    submitted = out / "submitted"
    in_place = sub_root == submitted.resolve()
    if not in_place and (
        submitted.resolve().is_relative_to(sub_root) or sub_root.is_relative_to(submitted.resolve())
    ):
        raise GradingError(
            f"--out {out} and --submissions {sub_root} overlap: keep the "
            "students' originals outside the grading folder"
        )
    bad_chars = sorted(_REGEX_SPECIAL & set(str(out)))
    if bad_chars:
        raise GradingError(
            f"--out {out}: nbgrader cannot use a path containing {' '.join(bad_chars)}"
        )
    csv_path = Path(csv_path).resolve() if csv_path else out / "grades.csv"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GradingError(f"--out {out}: cannot create it: {exc.strerror or exc}") from None
    try:
        db_url = resolve_db_url(db_url, out)
        check_database(db_url)
    except GradebookError as exc:
        raise GradingError(str(exc)) from None
    return GradingRun(
        course,
        cfg,
        source_dir,
        known,
        named,
        sub_root,
        out,
        submitted,
        in_place,
        db_url,
        csv_path,
        out / "issues.csv",
        timeout,
        feedback,
        echo,
    )


def _find_submissions(run: GradingRun) -> tuple[list[Submission], list[str]]:
    """The submissions to grade, sorted, and the assignments to grade; what cannot be graded
    goes to ``run.issues``."""
    subs, run.issues = scan_submissions(run.sub_root, run.known, run.named)
    selected = run.named or sorted({s.assignment for s in subs})
    skipped = [s for s in subs if s.assignment not in selected]
    if skipped:
        run.echo(
            f"skipping {len(skipped)} submission(s) of assignments not named on the command line"
        )
    subs = sorted(
        (s for s in subs if s.assignment in selected), key=lambda s: (s.assignment, s.student)
    )
    if not subs and not run.issues:
        run.issues.append(Issue("", "", "no-notebook", f"{run.sub_root}: no submissions found"))
    return subs, selected


def _nbgrader_api(run: GradingRun, release_dir: str):
    """nbgrader's API on the course's config, with this run's folders, gradebook and timeout;
    the release goes to ``release_dir``, never to the committed ``notebooks/``."""
    from traitlets.config import Config

    overrides = Config()
    overrides.CourseDirectory.root = str(run.course)
    overrides.CourseDirectory.release_directory = release_dir
    overrides.CourseDirectory.submitted_directory = str(run.submitted)
    overrides.CourseDirectory.autograded_directory = str(run.out / "autograded")
    overrides.CourseDirectory.feedback_directory = str(run.out / "feedback")
    overrides.CourseDirectory.db_url = run.db_url
    if run.timeout is not None:
        overrides.Execute.timeout = int(run.timeout)
    from nbconvert.preprocessors import ClearMetadataPreprocessor, CSSHTMLHeaderPreprocessor
    from nbgrader.preprocessors import (
        AssignLatePenalties,
        CheckCellMetadata,
        GetGrades,
        IgnorePattern,
        LimitOutput,
        SaveAutoGrades,
    )

    from kdlib.course.sandbox import FeedbackSafety, GuardedExecute

    overrides.Autograde.autograde_preprocessors = [
        GuardedExecute,
        IgnorePattern,
        ClearMetadataPreprocessor,
        LimitOutput,
        SaveAutoGrades,
        AssignLatePenalties,
        CheckCellMetadata,
    ]
    overrides.GenerateFeedback.preprocessors = [
        GetGrades,
        CSSHTMLHeaderPreprocessor,
        FeedbackSafety,
    ]
    run.cfg.merge(overrides)
    run.cfg.NbGraderAPI.log_level = logging.INFO

    from nbgrader.apps import NbGraderAPI

    return NbGraderAPI(config=run.cfg)


def _register_assignment(run: GradingRun, api, name: str, n_subs: int) -> bool:
    """Record assignment ``name`` in the course's gradebook from the source folder (locked
    cells, hidden tests). False when nbgrader failed (reported, and its ``n_subs`` submissions
    are not graded)."""
    run.echo(f"{name}: registering the assignment from {run.source_dir / name}")
    result = api.generate_assignment(name, force=True, create=True)
    save_log(run.logs_dir / name / "_generate_assignment.log", result)
    if not result["success"]:
        run.issues.append(
            Issue(
                name,
                "",
                "assignment-failed",
                f"{run.source_dir / name}: nbgrader generate_assignment failed "
                f"({failure_reason(result)}); its {n_subs} submission(s) "
                "were not graded",
            )
        )
    return bool(result["success"])


def _assignment_checksums(run: GradingRun, name: str, release_dir: str, template: Path, course_id):
    """``(release_sums, source_sums, released)`` of assignment ``name``: per notebook, the
    checksums of its locked cells in the release and in the gradebook (its ``template``), and
    the sources of the release's code cells (never flagged: the course's own code)."""
    from nbgrader.api import Gradebook

    release_sums, source_sums, released = {}, {}, {}
    with Gradebook("sqlite:///" + str(template), course_id) as gb:
        for nb_name in run.known[name]:
            rel = read_notebook(Path(release_dir) / name / f"{nb_name}.ipynb")
            release_sums[nb_name] = locked_checksums(rel)
            released[nb_name] = {c.source.strip() for c in rel.cells if c.cell_type == "code"}
            nb_row = gb.find_notebook(nb_name, name)
            source_sums[nb_name] = {c.name: c.checksum for c in nb_row.source_cells if c.locked}
    return release_sums, source_sums, released


def parse_size(text: str, flag: str) -> int | None:
    """``4G``, ``512M``, ``100K`` or a number of bytes; ``0`` or ``none``: no limit."""
    value = str(text).strip().upper()
    if value in ("0", "NONE", "OFF"):
        return None
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    scale = units.get(value[-1:], 1)
    number = value[:-1] if value[-1:] in units else value
    try:
        size = int(float(number) * scale)
    except ValueError:
        raise GradingError(
            f"{flag} {text!r}: expected a size such as 4G, 512M or 0 (no limit)"
        ) from None
    if size < 0:
        raise GradingError(f"{flag} {text!r}: a size cannot be negative")
    return size or None


def add_arguments(parser: argparse.ArgumentParser, path=("grade",)) -> None:
    """Flags of ``kdlib grade``."""
    parser.description = (
        "Import the students' notebooks found in --submissions (nbgrader's "
        "<student>/<assignment>/<notebook>.ipynb layout, or a flat <assignment>/<student>.ipynb "
        "folder), autograde them with nbgrader, write per-student feedback HTML, and export "
        "<out>/grades.csv and <out>/issues.csv. Bad files are reported by name and the rest of "
        "the class is graded. Exit status: 0 all graded, 1 something reported as bad input or "
        "not graded (see issues.csv), 2 usage error, 3 the canary failed (nothing graded)."
    )
    parser.add_argument(
        "assignments",
        nargs="*",
        metavar="ASSIGNMENT",
        help="assignments to grade (default: every assignment found in --submissions)",
    )
    parser.add_argument(
        "--submissions", required=True, metavar="DIR", help="folder of collected submissions"
    )
    parser.add_argument(
        "--db",
        default=None,
        metavar="URL",
        help="gradebook: any SQLAlchemy URL nbgrader accepts, e.g. "
        "postgresql://user@host/course (default: sqlite:///<out>/gradebook.db)",
    )
    parser.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="where submitted/, autograded/, feedback/, logs/, the gradebook "
        "and the CSV files go (default: grading/ in the course folder)",
    )
    parser.add_argument(
        "--course-dir",
        default=None,
        metavar="DIR",
        help="the course folder (default: the first folder at or above the "
        f"current one with {CONFIG_FILE})",
    )
    parser.add_argument(
        "--timeout",
        type=int,
        default=None,
        metavar="SECONDS",
        help="per-cell execution limit while autograding (default: "
        f"Execute.timeout in {CONFIG_FILE})",
    )
    parser.add_argument(
        "--csv",
        default=None,
        metavar="FILE",
        help="where to write the grades (default: <out>/grades.csv)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="autograde N submissions at once, each in its own process and "
        "kernel, the CPU threads shared among them (default: 1)",
    )
    parser.add_argument(
        "--no-feedback", action="store_true", help="skip generating the feedback HTML"
    )
    parser.add_argument(
        "--memory-limit",
        default="4G",
        metavar="SIZE",
        help="memory (data) each submission's kernel may allocate, e.g. 4G, 512M; past it the "
        "allocation fails, the submission is reported (resource-limit) and scored 0 pending a "
        "manual grade; 0: no limit (default: 4G)",
    )
    parser.add_argument(
        "--file-limit",
        default="1G",
        metavar="SIZE",
        help="largest file a submission may write, and the size of its /tmp (default: 1G; "
        "0: no limit)",
    )
    parser.add_argument(
        "--shard",
        default=None,
        metavar="K/N",
        help="grade only the students of shard K of N (0 <= K < N; each student on one shard, "
        "the same on every machine), into the --db PostgreSQL gradebook the shards share; "
        "then `kdlib gradebook export` writes grades.csv, issues.csv and the feedback",
    )
    parser.add_argument(
        "--run-all-cells",
        action="store_true",
        help="run every cell of each notebook, experiments included (default: leave out the "
        "course's cells that no answer or graded test depends on, e.g. the experiments after "
        "the last exercise)",
    )
    parser.add_argument(
        "--export",
        default=None,
        choices=LMS_FORMATS,
        help="also write <out>/grades-canvas.csv or grades-moodle.csv, the CSV that LMS's "
        "gradebook imports: one column per assignment, each student's total with the manual "
        "grades entered so far",
    )
    parser.add_argument(
        "--skip-canary",
        action="store_true",
        help="do not grade the solution and the untouched release of each assignment first "
        "(the canary: full marks and 0 expected, no flags, or nothing is graded)",
    )


def main(args: argparse.Namespace) -> int:
    """Run ``kdlib grade``; returns the exit status."""
    try:
        from sqlalchemy.exc import SAWarning

        warnings.filterwarnings("ignore", category=SAWarning)  # nbgrader's session noise
    except ImportError:  # pragma: no cover
        pass
    try:
        report = grade(
            args.submissions,
            args.assignments,
            course_dir=args.course_dir,
            out=args.out,
            db_url=args.db,
            timeout=args.timeout,
            csv_path=args.csv,
            feedback=not args.no_feedback,
            jobs=args.jobs,
            memory_limit=parse_size(args.memory_limit, "--memory-limit"),
            file_limit=parse_size(args.file_limit, "--file-limit"),
            canary=not args.skip_canary,
            run_all_cells=args.run_all_cells,
            shard=parse_shard(args.shard) if args.shard else None,
            export=args.export,
        )
    except CanaryFailed as exc:
        print(f"kdlib grade: {exc}", file=sys.stderr)
        return 3
    except (GradingError, GradebookError) as exc:
        print(f"kdlib grade: {exc}", file=sys.stderr)
        return 2
    for issue in report.issues:
        level = "error" if issue.bad else "warning"
        print(f"kdlib grade: {level}: {issue.detail}", file=sys.stderr)
    if report.sandbox:
        print(
            f"kdlib grade: warning: the students' code ran WITHOUT a sandbox ({report.sandbox})",
            file=sys.stderr,
        )
    if report.canary.startswith("skipped"):
        print(
            "kdlib grade: warning: the canary was skipped (--skip-canary): the grading "
            "environment was not checked on the course's own notebooks",
            file=sys.stderr,
        )
    n_bad = sum(issue.bad for issue in report.issues)
    print(
        f"graded {len(report.graded)} submission(s) of {', '.join(report.assignments) or '-'}; "
        f"{n_bad} problem(s) reported"
    )
    print(f"grades:   {report.csv_path}")
    if report.lms_path is not None:
        print(f"{args.export}:   {report.lms_path}")
    print(f"issues:   {report.issues_path}")
    print(f"feedback: {report.out / 'feedback'}")
    print(f"gradebook: {report.db_url}")
    print(f"canary:   {report.canary or '-'}")
    return report.exit_code


if __name__ == "__main__":  # pragma: no cover
    from kdlib.course.cli import main as cli_main

    raise SystemExit(cli_main(["grade", *sys.argv[1:]]))
