"""Which cells of a submission autograding has to run.

A course notebook teaches with experiments: training runs, sweeps, figures, the headline
numbers saved at the end. Autograding needs only the cells that the graded cells depend on:
the student's answers, the graded tests, and the course's own cells that define or change
something a later answer or test reads. :func:`cells_to_skip` finds the rest, so that grading
a notebook costs its exercises, not its experiments.

The rule, walking the code cells from the last to the first with the set of names still
wanted (starting empty):

- a graded or locked cell, an answer cell, and any cell that is not, verbatim, a code cell of
  the release (a cell the student added or changed) always runs;
- a cell of the release runs when it names (reads, binds or changes) a wanted name, or when it
  cannot be read (a syntax error, ``from x import *``, ``globals()``, ``exec``) and a later
  cell runs;
- every cell that runs adds the names it reads to the wanted set.

So every course cell after the last answer or test is skipped, and every earlier one that feeds
them runs. Skipped cells are left without output in the autograded notebook and the feedback,
with a one-line note. The canary (:mod:`kdlib.course.canary`) grades the solution this way
before the class: a dependency this rule missed costs marks there, and grading stops.
"""

from __future__ import annotations

import ast
import re

SKIPPED_NOTE = (
    "(not run while autograding: no answer or graded test depends on this cell; "
    "run the notebook yourself to see its output)\n"
)
_OPAQUE = re.compile(r"\b(globals|locals|vars|exec|eval|__import__|get_ipython)\s*\(")


def _meta(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {}) or {}


def _must_run(cell, released: set[str]) -> bool:
    meta = _meta(cell)
    if meta.get("grade") or meta.get("solution") or meta.get("locked") and meta.get("grade_id"):
        return True
    return cell.get("source", "").strip() not in released


def _names(tree) -> tuple[set[str], set[str]]:
    """(names the cell reads, every name it mentions): the roots of attribute and subscript
    chains count as read (``model.fc = ...`` changes ``model``)."""
    read, mentioned = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            mentioned.add(node.id)
            if isinstance(node.ctx, ast.Load):
                read.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            mentioned.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            mentioned.add(node.name)
        elif isinstance(node, ast.Global):
            mentioned.update(node.names)
    return read, mentioned


def parse_cell(source: str):
    """A code cell's syntax tree (its shell escapes ``!cmd`` and magics ``%x`` blanked), or
    ``None`` when it does not parse."""
    code = "\n".join("" if re.match(r"^\s*[!%]", line) else line for line in source.splitlines())
    try:
        return ast.parse(code)
    except SyntaxError:
        return None


def cells_to_skip(cells, released) -> set[int]:
    """Indices (into ``cells``) of the code cells autograding can leave out; ``released``: the
    sources of the release's code cells (stripped). See the module docstring for the rule."""
    released = {text.strip() for text in released}
    wanted: set[str] = set()
    skip = set()
    for index in range(len(cells) - 1, -1, -1):
        cell = cells[index]
        if cell.get("cell_type") != "code" or not cell.get("source", "").strip():
            continue
        tree = parse_cell(cell.get("source", ""))
        opaque = (
            tree is None
            or _OPAQUE.search(cell.get("source", ""))
            or any(
                isinstance(n, ast.ImportFrom) and any(a.name == "*" for a in n.names)
                for n in ast.walk(tree)
            )
        )
        if tree is not None:
            read, mentioned = _names(tree)
        else:
            read, mentioned = set(), set()
        if _must_run(cell, released) or (opaque and wanted) or mentioned & wanted:
            wanted |= read
        else:
            skip.add(index)
    return skip
