"""Autograding jobs: each submission in a process of its own, against a scratch course folder
and a gradebook holding only its assignment, its kernel sandboxed (:mod:`kdlib.course.sandbox`),
its memory and file sizes bounded; then its grades merged into the course's gradebook, what was
cut, tampered with or past a limit reported, and its feedback written.

The steps, for one run (:class:`kdlib.course.grade.GradingRun`):

1. :func:`template_gradebook`: a gradebook with one assignment, copied for each submission;
2. :func:`prepare_submission`: import it, report its edited or deleted locked cells, its
   duplicated cells, bad timestamp and suspicious cells (``manual-review``), lay out its folder;
3. :func:`autograde_all`: ``--jobs`` processes at a time (forked: nbgrader is imported once),
   its kernel under ``RLIMIT_DATA`` and ``RLIMIT_FSIZE`` (:mod:`kdlib.course.limits`), killed
   with its kernel past a deadline; as each ends, its grades are merged (only the grader writes the
   course's gradebook) and its feedback is generated.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kdlib.course.coursedir import GradingError, GradingRun, config_value
from kdlib.course.export import fmt_score
from kdlib.course.submissions import (
    Issue,
    Submission,
    check_locked_cells,
    drop_duplicate_ids,
    import_submission,
)

TIMEOUT_ENAME = "CellTimeoutError"  # the error nbgrader's Execute writes into a cut cell


@dataclass
class Job:
    """One submission, ready to autograde in its own process: a scratch course folder
    ``root`` holding only its notebooks (and the files travelling with them) under
    ``submitted/``, and a gradebook with only its assignment."""

    sub: Submission
    notebooks: dict  # notebook name -> notebook as submitted
    missing: dict  # notebook name -> grade_ids of the locked cells it deleted
    root: Path
    n_cells: int
    released: dict = field(default_factory=dict)  # notebook -> sources of its release's cells

    @property
    def db_url(self) -> str:
        return "sqlite:///" + str(self.root / "gradebook.db")

    @property
    def who(self) -> str:
        return f"{self.sub.assignment}/{self.sub.student}"


def guarded(run: GradingRun, sub: Submission, step: Callable, *args):
    """``step(*args)``; an unexpected error is reported against ``sub`` (kind grading-error)
    and the rest of the class goes on. Returns what the step returned, or None."""
    try:
        return step(*args)
    except Exception as exc:  # noqa: BLE001 - nothing one submission does may stop the class
        first = (str(exc).strip().splitlines() or [""])[0]
        reason = f"{type(exc).__name__}: {first}"
        run.issues.append(
            Issue(
                sub.assignment,
                sub.student,
                "grading-error",
                f"{sub.origin}: {step.__name__.strip('_')} failed ({reason[:300]})",
            )
        )
        run.echo(f"{sub.assignment}/{sub.student}: grading error ({reason[:120]})")
        return None


def template_gradebook(run: GradingRun, api, name: str, work: Path) -> Path:
    """A gradebook holding only assignment ``name`` (its cells, hidden tests): what each
    submission's process autogrades against, so that no process but this one writes to the
    real gradebook, and none sees the other students."""
    path = work / f"template-{name}.db"
    url = "sqlite:///" + str(path)
    saved = api.coursedir.db_url
    api.coursedir.db_url = url
    try:
        result = api.generate_assignment(name, force=True, create=True)
    finally:
        api.coursedir.db_url = saved
    if not result["success"]:
        raise GradingError(f"{name}: cannot build its gradebook ({failure_reason(result)})")
    return path


def prepare_submission(
    run: GradingRun, sub: Submission, checksums, template: Path, root: Path
) -> Job | None:
    """Import one submission, report its edited, deleted or duplicated locked cells, its bad
    timestamp and its suspicious cells, and lay out its scratch folder."""
    from kdlib.course.sandbox import scan_cells

    name = sub.assignment
    dest = run.submitted / sub.student / name
    notebooks, found = import_submission(sub, run.known[name], dest, run.in_place)
    run.issues.extend(found)
    if not notebooks:
        run.echo(f"{name}/{sub.student}: not graded (see the problems reported)")
        return None
    missing = _report_locked_cells(run, sub, notebooks, dest, checksums)
    scratch = root / "submitted" / sub.student / name
    shutil.copytree(
        dest,
        scratch,
        symlinks=True,
        ignore=lambda d, names: [
            n for n in names if n.startswith(".") or os.path.islink(os.path.join(d, n))
        ],
    )
    _check_timestamp(run, sub, scratch)
    n_cells = 0
    for nb_name, nb in sorted(notebooks.items()):
        import copy

        import nbformat

        nb = copy.deepcopy(nb)
        dups = drop_duplicate_ids(nb)
        if dups:
            run.issues.append(
                Issue(
                    name,
                    sub.student,
                    "duplicate-cell",
                    f"{dest / nb_name}.ipynb: cell(s) {', '.join(dups)} appear "
                    "more than once; the first copy is graded, the others run "
                    "as plain cells",
                )
            )
        nbformat.write(nb, str(scratch / f"{nb_name}.ipynb"))
        n_cells += len(nb.cells)
        reasons = scan_cells(nb, checksums[2][nb_name])
        if reasons:
            run.issues.append(
                Issue(
                    name,
                    sub.student,
                    "manual-review",
                    f"{dest / nb_name}.ipynb: " + " | ".join(reasons),
                )
            )
    shutil.copyfile(template, root / "gradebook.db")
    return Job(sub, notebooks, missing, root, n_cells, checksums[2])


def _check_timestamp(run: GradingRun, sub: Submission, scratch: Path) -> None:
    """A timestamp.txt nbgrader cannot read is reported and left out (graded as on time)."""
    from nbgrader.utils import parse_utc

    stamp = scratch / "timestamp.txt"
    if not stamp.is_file():
        return
    try:
        text = stamp.read_text(encoding="utf-8").strip()
        parse_utc(text)
    except Exception as exc:  # noqa: BLE001 - ValueError, OverflowError, UnicodeDecodeError...
        stamp.unlink()
        run.issues.append(
            Issue(
                sub.assignment,
                sub.student,
                "bad-timestamp",
                f"{sub.origin}: timestamp.txt is not a date nbgrader can read "
                f"({type(exc).__name__}); graded without it (no late penalty)",
            )
        )


def _report_locked_cells(
    run: GradingRun, sub: Submission, notebooks: dict, dest: Path, checksums
) -> None:
    """Report the locked cells a submission edited (restored by autograde) or deleted; returns
    the deleted ones per notebook."""
    release_sums, source_sums, _ = checksums
    deleted = {}
    for nb_name, nb in sorted(notebooks.items()):
        modified, missing = check_locked_cells(nb, release_sums[nb_name], source_sums[nb_name])
        if modified:
            run.issues.append(
                Issue(
                    sub.assignment,
                    sub.student,
                    "locked-cell-modified",
                    f"{dest / nb_name}.ipynb: locked cell(s) "
                    f"{', '.join(modified)} edited by the student; "
                    "restored from the gradebook before grading",
                )
            )
        if missing:
            run.issues.append(
                Issue(
                    sub.assignment,
                    sub.student,
                    "locked-cell-missing",
                    f"{dest / nb_name}.ipynb: locked cell(s) "
                    f"{', '.join(missing)} deleted by the student; "
                    "scored 0 and marked for a manual grade",
                )
            )
            deleted[nb_name] = missing
    return deleted


def autograde_all(run: GradingRun, api, jobs: list[Job]) -> None:
    """Autograde every job, ``run.jobs`` at a time, each in a process of its own (forked from
    this one, so nbgrader is imported once); as each ends, its grades go into the gradebook
    (only this process writes there) and its feedback is written."""
    import multiprocessing
    import time
    from multiprocessing.connection import wait

    if not jobs:
        return
    if "fork" not in multiprocessing.get_all_start_methods():  # Windows: one at a time, here
        for job in jobs:
            _child_autograde(run, job)
            guarded(run, job.sub, _finish_submission, run, api, job, 0)
        return
    ctx = multiprocessing.get_context("fork")
    threads = _threads_per_job(run.jobs)
    limit = config_value(run.cfg, "Execute", "timeout", 30) or 30
    queue, running = list(jobs), {}
    while queue or running:
        while queue and len(running) < run.jobs:
            job = queue.pop(0)
            proc = ctx.Process(target=_child_main, args=(run, job, threads), daemon=True)
            proc.start()
            deadline = time.monotonic() + 120 + (job.n_cells + 2) * (2 * limit + 10)
            running[proc.sentinel] = (proc, job, deadline)
        for sentinel in wait(list(running), timeout=1.0):
            proc, job, _ = running.pop(sentinel)
            proc.join()
            guarded(run, job.sub, _finish_submission, run, api, job, proc.exitcode)
        for sentinel, (proc, job, deadline) in list(running.items()):
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)  # the child and its kernel: one group
                proc.kill()
                proc.join()
                del running[sentinel]
                guarded(run, job.sub, _finish_submission, run, api, job, "killed")


def _threads_per_job(jobs: int) -> dict[str, str]:
    """Thread-count variables for each kernel: its share of the cores (``KDLIB_CPUS``, and
    OpenMP's and MKL's pools capped to it), as ``kdlib course run --jobs`` gives; kdlib's thread
    policy then runs the small models on one thread (:mod:`kdlib.runtime`). A value the
    instructor set in the environment is kept."""
    if jobs <= 1:
        return {}
    from kdlib.runtime import available_cpus

    share = str(max(1, available_cpus() // jobs))
    return {
        k: share
        for k in ("KDLIB_CPUS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
        if k not in os.environ
    }


def _child_main(run: GradingRun, job: Job, threads: dict[str, str]) -> None:
    """Entry point of a submission's process: its share of the threads, its own process
    group, the memory and file-size limits of its kernel, then autograding."""
    from kdlib.course.limits import set_resource_limits
    from kdlib.course.sandbox import SandboxedKernelManager, kdlib_path_entry

    os.environ.update(threads)
    os.environ["PYTHONSAFEPATH"] = "1"  # a kernel outside bubblewrap: cwd not on sys.path
    entry = kdlib_path_entry()  # the kernel imports the grader's own kdlib
    if entry:
        os.environ["PYTHONPATH"] = entry
    try:
        os.setpgrp()  # its kernel (and anything left outside a sandbox) is one group
    except OSError:
        pass
    if not run.sandbox:  # bubblewrap works: the limits go on the kernel alone (kdlib.course.limits)
        SandboxedKernelManager.limits = (run.memory_limit, run.file_limit)
    else:  # no sandbox: on this process, and so on the kernel it starts
        set_resource_limits(run.memory_limit, run.file_limit)
    _child_autograde(run, job)


def _child_autograde(run: GradingRun, job: Job) -> None:
    """nbgrader autograde of one submission against its scratch folder and gradebook; the
    result (success, log, what the guard put back) goes to ``root/result.json``."""
    import copy
    import json

    from traitlets.config import Config

    from kdlib.course.sandbox import GuardedExecute, SandboxedKernelManager

    result = {"success": False, "log": "", "error": ""}
    try:
        cfg = copy.deepcopy(run.cfg)
        overrides = Config()
        overrides.CourseDirectory.root = str(job.root)
        overrides.CourseDirectory.source_directory = str(run.source_dir)
        overrides.CourseDirectory.submitted_directory = str(job.root / "submitted")
        overrides.CourseDirectory.autograded_directory = str(job.root / "autograded")
        overrides.CourseDirectory.feedback_directory = str(job.root / "feedback")
        overrides.CourseDirectory.db_url = job.db_url
        cfg.merge(overrides)
        ipc = job.root / "ipc"
        ipc.mkdir(mode=0o700)
        GuardedExecute.sandboxed = not run.sandbox
        GuardedExecute.tampering = []
        GuardedExecute.skipped = []
        GuardedExecute.released = set().union(*job.released.values()) if job.released else set()
        GuardedExecute.skip_unneeded = run.skip_unneeded
        SandboxedKernelManager.ipc_dir = ipc
        SandboxedKernelManager.tmp_size = run.file_limit
        SandboxedKernelManager.hidden = [run.course, run.out, run.sub_root, job.root]
        from nbgrader.apps import NbGraderAPI

        api = NbGraderAPI(config=cfg)
        result = dict(api.autograde(job.sub.assignment, job.sub.student, force=True, create=True))
        result["tampering"] = list(GuardedExecute.tampering)
        result["skipped"] = list(GuardedExecute.skipped)
    except BaseException as exc:  # noqa: BLE001 - reported by the parent
        result["error"] = (result.get("error") or "") + f"\n{type(exc).__name__}: {exc}"
    finally:
        (job.root / "result.json").write_text(json.dumps(result, default=str), "utf-8")


def _finish_submission(run: GradingRun, api, job: Job, exitcode) -> None:
    """After a submission's process: its log, its grades into the gradebook (or 0 pending a
    manual grade when autograding failed), its autograded notebooks, the cells cut at the
    timeout, what the guard put back, and its feedback."""
    import json

    sub, name = job.sub, job.sub.assignment
    course_id = api.coursedir.course_id
    path = job.root / "result.json"
    result = (
        json.loads(path.read_text("utf-8"))
        if path.is_file()
        else {
            "success": False,
            "log": "",
            "error": f"the grading process ended without a result (exit status {exitcode})",
        }
    )
    log_path = run.logs_dir / name / f"{sub.student}.log"
    save_log(log_path, result)
    autograded = run.out / "autograded" / sub.student / name
    if autograded.exists():
        shutil.rmtree(autograded)
    if not result["success"]:
        zero_failed(run.db_url, course_id, name, sub.student)
        stale = run.out / "feedback" / sub.student / name
        if stale.exists():
            shutil.rmtree(stale)
        kernel_log = job.root / "ipc" / "kernel.log"
        text = (
            (result.get("log") or "")
            + (result.get("error") or "")
            + (kernel_log.read_text("utf-8", "replace")[-20000:] if kernel_log.is_file() else "")
        )
        if _LIMIT_HIT.search(text):
            run.issues.append(
                Issue(
                    name,
                    sub.student,
                    "resource-limit",
                    f"{run.submitted / sub.student / name}: the kernel died at "
                    f"the resource limits ({_limits(run)}); scored 0 pending "
                    f"a manual grade; log: {log_path}",
                )
            )
        else:
            run.issues.append(
                Issue(
                    name,
                    sub.student,
                    "autograde-failed",
                    f"{run.submitted / sub.student / name}: autograding failed "
                    f"({failure_reason(result)}); scored 0 pending a manual "
                    f"grade; log: {log_path}",
                )
            )
        run.echo(f"{job.who}: autograding FAILED")
        return
    merge_grades(run.db_url, job.db_url, course_id, name, sub.student, job.missing)
    autograded.mkdir(parents=True)
    produced = job.root / "autograded" / sub.student / name
    for item in [*produced.glob("*.ipynb"), produced / "timestamp.txt"]:
        if item.is_file() and not item.is_symlink():
            shutil.copyfile(item, autograded / item.name)
    run.graded.append((name, sub.student))
    _report_timeouts(run, sub, job.notebooks)
    hit = _report_resource_limits(run, sub, job.notebooks)
    if hit:
        zero_failed(run.db_url, course_id, name, sub.student)
    if result.get("tampering"):
        run.issues.append(
            Issue(
                name,
                sub.student,
                "tests-tampered",
                f"{autograded}: before its locked cells the grader had to put "
                f"back what earlier cells changed: "
                f"{'; '.join(result['tampering'])}",
            )
        )
    if run.feedback:
        fb = api.generate_feedback(name, sub.student, force=True)
        save_log(run.logs_dir / name / f"{sub.student}.feedback.log", fb)
        if not fb["success"]:
            run.issues.append(
                Issue(
                    name,
                    sub.student,
                    "feedback-failed",
                    f"feedback for {job.who} failed ({failure_reason(fb)})",
                )
            )
    from nbgrader.api import Gradebook

    with Gradebook(run.db_url, course_id) as gb:
        s = gb.find_submission(name, sub.student)
        run.echo(f"{job.who}: {fmt_score(s.score)}/{fmt_score(s.max_score)}")


def merge_grades(
    db_url: str, job_url: str, course_id: str, assignment: str, student: str, missing: dict
) -> None:
    """Copy one autograded submission from its own gradebook into the course's: automatic
    scores, comments, timestamp and late penalty (manual grades already there are kept). A
    locked cell the student deleted scores 0 and is marked for a manual grade, never keeps the
    score of an earlier run."""
    from nbgrader.api import Gradebook

    with Gradebook(job_url, course_id) as src, Gradebook(db_url, course_id) as dst:
        done = src.find_submission(assignment, student)
        dst.update_or_create_student(student)
        dst.update_or_create_submission(assignment, student, timestamp=done.timestamp)
        for snb in done.notebooks:
            dnb = dst.find_submission_notebook(snb.name, assignment, student)
            dnb.late_submission_penalty = snb.late_submission_penalty
            gone = set(missing.get(snb.name, ()))
            for grade in snb.grades:
                target = dst.find_grade(grade.name, snb.name, assignment, student)
                if grade.name in gone:
                    target.auto_score, target.needs_manual_grade = 0.0, True
                else:
                    target.auto_score = grade.auto_score
                    # a written answer a grader has scored stays graded; one not yet scored
                    # waits for a grader
                    target.needs_manual_grade = grade.needs_manual_grade and (
                        target.manual_score is None
                    )
            for comment in snb.comments:
                dst.find_comment(
                    comment.name, snb.name, assignment, student
                ).auto_comment = comment.auto_comment
        dst.db.commit()


def zero_failed(db_url: str, course_id: str, assignment: str, student: str) -> None:
    """A submission whose autograde failed keeps a row, scored 0 and marked for manual grading
    (not the scores of an earlier run)."""
    from nbgrader.api import Gradebook, MissingEntry

    with Gradebook(db_url, course_id) as gb:
        try:
            sub = gb.find_submission(assignment, student)
        except MissingEntry:
            gb.update_or_create_student(student)
            sub = gb.update_or_create_submission(assignment, student)
        for snb in sub.notebooks:
            for grade in snb.grades:
                grade.auto_score = 0.0
                grade.needs_manual_grade = True
        gb.db.commit()


def _report_timeouts(run: GradingRun, sub: Submission, notebooks: dict) -> None:
    """Report the cells of an autograded submission that were cut at the per-cell timeout."""
    import nbformat

    for nb_name in sorted(notebooks):
        path = run.out / "autograded" / sub.student / sub.assignment / f"{nb_name}.ipynb"
        if path.is_file():
            cut = timed_out_cells(nbformat.read(str(path), as_version=4))
            if cut:
                limit = config_value(run.cfg, "Execute", "timeout", 30)
                run.issues.append(
                    Issue(
                        sub.assignment,
                        sub.student,
                        "cell-timeout",
                        f"{path}: {', '.join(cut)} cut after the per-cell timeout ({limit} s)",
                    )
                )


def timed_out_cells(nb) -> list[str]:
    """grade_id (or ``cell N``) of each cell nbgrader cut at the per-cell timeout."""
    cut = []
    for index, cell in enumerate(nb.cells, start=1):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error" and output.get("ename") == TIMEOUT_ENAME:
                cut.append(
                    cell.get("metadata", {}).get("nbgrader", {}).get("grade_id") or f"cell {index}"
                )
                break
    return cut


# what an allocation past RLIMIT_DATA, a write past RLIMIT_FSIZE or a full /tmp raise
_LIMIT_HIT = re.compile(
    r"MemoryError|can't allocate memory|Cannot allocate memory|"
    r"Unable to allocate|std::bad_alloc|File too large|"
    r"No space left on device|OutOfMemoryError"
)


def _limits(run: GradingRun) -> str:
    return f"--memory-limit {fmt_bytes(run.memory_limit)}, --file-limit {fmt_bytes(run.file_limit)}"


def resource_limit_cells(nb) -> list[str]:
    """grade_id (or ``cell N``) of each cell that failed at a resource limit (memory, file
    size, a full /tmp)."""
    hit = []
    for index, cell in enumerate(nb.cells, start=1):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error" and _LIMIT_HIT.search(
                f"{output.get('ename', '')}: {output.get('evalue', '')}"
            ):
                hit.append(
                    cell.get("metadata", {}).get("nbgrader", {}).get("grade_id") or f"cell {index}"
                )
                break
    return hit


def _report_resource_limits(run: GradingRun, sub: Submission, notebooks: dict) -> bool:
    """Report the cells of an autograded submission that hit a resource limit; True if any
    (the submission is then scored 0 pending a manual grade)."""
    import nbformat

    found = False
    for nb_name in sorted(notebooks):
        path = run.out / "autograded" / sub.student / sub.assignment / f"{nb_name}.ipynb"
        if path.is_file():
            hit = resource_limit_cells(nbformat.read(str(path), as_version=4))
            if hit:
                found = True
                run.issues.append(
                    Issue(
                        sub.assignment,
                        sub.student,
                        "resource-limit",
                        f"{path}: {', '.join(hit)} failed at the resource "
                        f"limits ({_limits(run)}); scored 0 pending a manual "
                        "grade",
                    )
                )
    return found


def fmt_bytes(n: int | None) -> str:
    if not n:
        return "none"
    for unit, size in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def failure_reason(result: dict) -> str:
    """A one-line reason from an NbGraderAPI result that failed."""
    text = (result.get("log") or "") + "\n" + (result.get("error") or "")
    if "Timeout waiting for IOPub output" in text or "became unresponsive" in text:
        return (
            "the kernel did not stop when interrupted at the per-cell timeout "
            "(a loop that ignores interrupts?) and was killed"
        )
    if "DeadKernelError" in text or "Kernel died" in text:
        return "the kernel died (the code exited or crashed the Python process)"
    found = re.findall(r"^\s*(?:\w+\.)*(\w+(?:Error|Exception|Exit): .+)$", text, re.M)
    found = [f for f in found if not f.startswith("NbGraderException: Please see")]
    if found:
        return found[-1].strip()[:300]
    lines = [ln.strip() for ln in text.splitlines() if ln.startswith("[ERROR]")]
    return (lines or ["unknown error"])[0][:300]


def save_log(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = (result.get("log") or "") + ("\n" + result["error"] if result.get("error") else "")
    path.write_text(text, encoding="utf-8")
