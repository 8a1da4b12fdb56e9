"""Finding and checking the submissions of a class (``kdlib grade``'s first step).

:func:`scan_submissions` reads a submissions folder in either layout (nbgrader's
``<student>/<assignment>/<notebook>.ipynb`` or the flat ``<assignment>/<student>.ipynb``) and
reports everything it cannot grade; :func:`import_submission` checks a submission's notebooks
and copies them to nbgrader's ``submitted/`` folder; :func:`check_locked_cells` compares the
locked cells with the release's. Every problem is an :class:`Issue`.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from kdlib.course.coursedir import hidden_name

# issue kinds that mean a submission (or part of it) was not graded: exit status 1
BAD_INPUT = {
    "invalid-notebook",
    "unknown-assignment",
    "no-notebook",
    "unexpected-notebook",
    "duplicate-submission",
    "not-graded",
    "autograde-failed",
    "assignment-failed",
    "bad-student-id",
    "grading-error",
    "resource-limit",
}


_GLOB_SPECIAL = set("*?[]")  # nbgrader finds submissions with glob: ids cannot contain these


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # a newline in an id breaks paths, logs and CSVs


_NOISE = {".ipynb_checkpoints", ".DS_Store", "__MACOSX", "Thumbs.db"}  # not worth a row


@dataclass(frozen=True, order=True)
class Issue:
    """Something an instructor should know about one submission."""

    assignment: str
    student: str
    kind: str  # see BAD_INPUT; also locked-cell-modified, locked-cell-missing, cell-timeout...
    detail: str

    @property
    def bad(self) -> bool:
        return self.kind in BAD_INPUT


@dataclass
class Submission:
    """One student's work for one assignment, as found in the submissions folder."""

    student: str
    assignment: str
    origin: Path  # the file or folder it came from (for messages)
    files: list[Path] = field(default_factory=list)  # the notebooks found
    folder: Path | None = None  # nbgrader layout: the folder whose other files travel along


def scan_submissions(
    root: Path, known: dict[str, list[str]], named: list[str]
) -> tuple[list[Submission], list[Issue]]:
    """Read the submissions folder (both layouts). Returns the submissions and the problems;
    every file or folder that is not graded is reported (``not-graded`` when it is or holds a
    notebook, ``ignored-file`` otherwise)."""
    subs: list[Submission] = []
    issues: list[Issue] = []

    def notebooks_in(folder: Path) -> list[Path]:
        return sorted(p for p in folder.glob("*.ipynb") if p.is_file() and not hidden_name(p))

    def ignored(entry: Path, student: str = "", assignment: str = "", why: str = "") -> None:
        if entry.name in _NOISE:
            return
        holds_notebook = entry.suffix == ".ipynb" or (
            entry.is_dir() and any(p.suffix == ".ipynb" for p in entry.rglob("*"))
        )
        kind = "not-graded" if holds_notebook else "ignored-file"
        issues.append(Issue(assignment, student, kind, f"{entry}: not graded ({why})"))

    for entry in sorted(root.iterdir()):
        if hidden_name(entry):
            ignored(entry, why="a hidden name (starts with . or __)")
            continue
        if entry.is_file():
            if entry.suffix != ".ipynb":
                ignored(entry, why="not a notebook")
                continue
            if len(named) == 1:
                subs.append(Submission(entry.stem, named[0], entry, [entry]))
            else:
                issues.append(
                    Issue(
                        "",
                        entry.stem,
                        "unknown-assignment",
                        f"{entry}: a notebook directly in the submissions folder "
                        "needs exactly one ASSIGNMENT on the command line",
                    )
                )
        elif entry.is_dir() and entry.name in known:  # flat: DIR/<assignment>/<student>.ipynb
            for item in sorted(entry.iterdir()):
                if hidden_name(item):
                    ignored(item, assignment=entry.name, why="a hidden name")
                elif item.is_file() and item.suffix == ".ipynb":
                    subs.append(Submission(item.stem, entry.name, item, [item]))
                elif item.is_dir():  # DIR/<assignment>/<student>/<notebook>.ipynb
                    subs.append(Submission(item.name, entry.name, item, notebooks_in(item), item))
                else:
                    ignored(item, assignment=entry.name, why="not a notebook")
        elif entry.is_dir():  # nbgrader: DIR/<student>/<assignment>/<notebook>.ipynb
            folders = [d for d in sorted(entry.iterdir()) if d.is_dir() and not hidden_name(d)]
            loose = notebooks_in(entry)
            if not folders and loose:
                issues.append(
                    Issue(
                        entry.name,
                        "",
                        "unknown-assignment",
                        f"{entry}: not an assignment of the course "
                        f"(known: {', '.join(known) or 'none'})",
                    )
                )
                continue
            if not folders:
                issues.append(
                    Issue(
                        "",
                        entry.name,
                        "no-notebook",
                        f"{entry}: student folder with no notebook (expected "
                        f"{entry.name}/<assignment>/<notebook>.ipynb)",
                    )
                )
                continue
            for item in sorted(entry.iterdir()):
                if item.is_dir() and not hidden_name(item):
                    continue
                ignored(
                    item,
                    student=entry.name,
                    why="beside the assignment folders of a student (expected "
                    f"{entry.name}/<assignment>/<notebook>.ipynb)",
                )
            for folder in folders:
                if folder.name not in known:
                    issues.append(
                        Issue(
                            folder.name,
                            entry.name,
                            "unknown-assignment",
                            f"{folder}: not an assignment of the course "
                            f"(known: {', '.join(known) or 'none'})",
                        )
                    )
                    continue
                subs.append(
                    Submission(entry.name, folder.name, folder, notebooks_in(folder), folder)
                )

    # one submission per (assignment, student); report the later ones
    seen: dict[tuple[str, str], Submission] = {}
    unique = []
    for sub in subs:
        if _GLOB_SPECIAL & set(sub.student) or _CONTROL.search(sub.student):
            issues.append(
                Issue(
                    sub.assignment,
                    ascii(sub.student)[1:-1],
                    "bad-student-id",
                    f"{ascii(str(sub.origin))[1:-1]}: a student id cannot contain "
                    "* ? [ ] or control characters (a newline, a tab): rename it",
                )
            )
            continue
        key = (sub.assignment, sub.student)
        if key in seen:
            issues.append(
                Issue(
                    sub.assignment,
                    sub.student,
                    "duplicate-submission",
                    f"{sub.origin}: a second submission of {sub.student} for "
                    f"{sub.assignment} (graded: {seen[key].origin})",
                )
            )
            continue
        seen[key] = sub
        unique.append(sub)
    return unique, issues


def read_notebook(path: Path):
    """The notebook at ``path`` (nbformat 4), or raise ValueError with a readable reason."""
    import nbformat

    try:
        nb = nbformat.read(str(path), as_version=4)
    except Exception as exc:  # NotJSONError, UnicodeDecodeError, NBFormatError, KeyError...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"not a valid notebook ({reason[:200]})") from exc
    if not isinstance(nb.get("cells"), list):
        raise ValueError("not a valid notebook (no cells)")
    return nb


def _copy_extras(src: Path, dest: Path) -> None:
    """Copy the non-notebook files of an nbgrader-layout submission folder."""
    for item in sorted(src.rglob("*")):
        rel = item.relative_to(src)
        if (
            any(part.startswith(".") for part in rel.parts)
            or item.suffix == ".ipynb"
            or item.is_symlink()
        ):  # a link could fetch any file the grader can read
            continue
        target = dest / rel
        if item.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif item.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(item, target)


def import_submission(
    sub: Submission,
    expected: list[str],
    dest: Path,
    in_place: bool,
) -> tuple[dict[str, object], list[Issue]]:
    """Check the notebooks of ``sub`` and copy them to ``dest`` (the nbgrader submitted folder)
    under the names the assignment expects. Returns {notebook name: notebook} and issues."""
    issues = []
    chosen: dict[str, tuple[Path, object]] = {}
    if not sub.files:
        issues.append(
            Issue(
                sub.assignment,
                sub.student,
                "no-notebook",
                f"{sub.origin}: no notebook in the submission",
            )
        )
        return {}, issues
    for path in sub.files:
        if path.stem in expected:
            name = path.stem
        elif len(expected) == 1 and len(sub.files) == 1 and not in_place:
            name = expected[0]
        else:
            issues.append(
                Issue(
                    sub.assignment,
                    sub.student,
                    "unexpected-notebook",
                    f"{path}: not a notebook of {sub.assignment} "
                    f"(expected: {', '.join(e + '.ipynb' for e in expected)})",
                )
            )
            continue
        try:
            nb = read_notebook(path)
        except ValueError as exc:
            issues.append(Issue(sub.assignment, sub.student, "invalid-notebook", f"{path}: {exc}"))
            continue
        chosen[name] = (path, nb)

    if in_place:
        if issues:  # nbgrader would grade the bad file too: leave the whole submission out
            issues.append(
                Issue(
                    sub.assignment,
                    sub.student,
                    "not-graded",
                    f"{sub.origin}: not graded until the problems above are fixed",
                )
            )
            return {}, issues
        return {name: nb for name, (_, nb) in chosen.items()}, issues
    if not chosen:
        return {}, issues

    # replace the previous copy of this submission (the originals stay in DIR)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    if sub.folder is not None:
        _copy_extras(sub.folder, dest)
    for name, (path, _) in chosen.items():
        shutil.copyfile(path, dest / f"{name}.ipynb")
    return {name: nb for name, (_, nb) in chosen.items()}, issues


def locked_checksums(nb) -> dict[str, str]:
    """grade_id -> nbgrader checksum of the locked cells of a (release or source) notebook."""
    from nbgrader import utils

    sums = {}
    for cell in nb.cells:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if meta.get("grade_id") and utils.is_locked(cell):
            sums[meta["grade_id"]] = utils.compute_checksum(cell)
    return sums


def check_locked_cells(nb, release: dict[str, str], source: dict[str, str]) -> tuple[list, list]:
    """Locked cells of ``release`` that ``nb`` changed (neither the release's nor the source's
    version) or deleted. nbgrader restores changed ones from the gradebook before running."""
    from nbgrader import utils

    submitted = {}
    for cell in nb.cells:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if meta.get("grade_id"):
            try:
                submitted[meta["grade_id"]] = utils.compute_checksum(cell)
            except Exception:  # e.g. points removed from the metadata
                submitted[meta["grade_id"]] = "?"
    modified = [
        g for g in release if g in submitted and submitted[g] not in (release[g], source.get(g))
    ]
    missing = [g for g in release if g not in submitted]
    return modified, missing


def drop_duplicate_ids(nb) -> list[str]:
    """Keep the nbgrader metadata of the first cell of each grade_id and drop it from later
    copies (nbgrader would otherwise fail the whole notebook). Returns the duplicated ids."""
    seen, dups = set(), []
    for cell in nb.cells:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        gid = meta.get("grade_id") if isinstance(meta, dict) else None
        if not gid:
            continue
        if gid in seen:
            del cell.metadata["nbgrader"]
            dups.append(gid)
        seen.add(gid)
    return list(dict.fromkeys(dups))
