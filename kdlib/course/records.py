"""Full-mode records: what each notebook's full mode measured, kept in the repository.

A notebook's fast mode is what a student runs; its full mode (more epochs, more seeds) gives
steadier figures, which the text may show beside the student's own. Those figures are *records*
in ``data/full_mode/<notebook>.json``: the notebook's results file (figures and claims) plus
where it came from::

    {"notebook", "figures", "claims",
     "date", "machine", "command", "seconds",
     "notebook_digest",   # sha256 of the notebook's cells (type and source) that ran
     "kdlib_digest"}      # sha256 of the library's modules (kdlib/*.py) that ran

``kdlib course run --full --record`` runs the notebooks in full mode and rewrites their
records; :func:`stale_records` names every notebook whose record is missing or was made from
other cells than the notebook has now (``tests/test_full_mode.py`` fails on any), so a record
cannot silently describe an older notebook. The library digest is kept for the reader (which
kdlib made the figures); a library change does not by itself make a record stale.

Notebooks read records with :func:`kdlib.course.results.load_full_mode`.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

import nbformat

from kdlib.course.results import FULL_MODE_DIR

__all__ = [
    "notebook_digest",
    "library_digest",
    "records_folder",
    "store_full_mode",
    "stale_records",
]

LIBRARY = Path(__file__).resolve().parents[1]  # the kdlib package


def notebook_digest(path: str | Path) -> str:
    """sha256 of what a run of the notebook at ``path`` depends on: each cell's type and source.

    Outputs, execution counts, cell ids and metadata do not count, so saving the notebook in
    JupyterLab or stripping it does not change the digest; editing any cell does.
    """
    nb = nbformat.read(str(path), as_version=4)
    cells = [[cell.cell_type, cell.source] for cell in nb.cells]
    return hashlib.sha256(json.dumps(cells, ensure_ascii=False).encode()).hexdigest()


def library_digest(package: str | Path = LIBRARY) -> str:
    """sha256 of the library's modules (``kdlib/*.py``, names and contents, in name order)."""
    digest = hashlib.sha256()
    for module in sorted(Path(package).glob("*.py")):
        digest.update(module.name.encode() + b"\0" + module.read_bytes() + b"\0")
    return digest.hexdigest()


def records_folder(source: str | Path | None = None) -> Path:
    """Where the records of the notebooks in ``source`` live.

    ``$KDLIB_FULL_MODE`` when set; else ``data/full_mode`` beside ``source`` (the
    ``solutions/`` folder of a course repository); else the course repository's own.
    """
    if os.environ.get("KDLIB_FULL_MODE"):
        return Path(os.environ["KDLIB_FULL_MODE"])
    if source is not None:
        return Path(source).resolve().parent / "data" / "full_mode"
    return FULL_MODE_DIR


def _machine() -> str:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
        f"{platform.system()} {platform.release()}, torch {torch.__version__}, {device}"
    )


def store_full_mode(
    results_file: str | Path,
    notebook: str | Path,
    command: str,
    folder: str | Path | None = None,
    seconds: float | None = None,
) -> Path:
    """Store the full-mode ``results_file`` of ``notebook`` as its record; return its path.

    ``results_file``: what ``save_results`` wrote in a ``--full`` run
    (``<out>/results/<stem>.json``); ``notebook``: the ``.ipynb`` that ran (its digest is
    stamped); ``command``: the command line; ``seconds``: how long the notebook ran.
    ``folder`` defaults to :func:`records_folder` of the notebook's source folder.
    """
    notebook = Path(notebook)
    payload = json.loads(Path(results_file).read_text())
    if payload.get("notebook") != notebook.stem:
        raise ValueError(
            f"results_file is the results of {payload.get('notebook')!r}, "
            f"not of the notebook {notebook.stem!r}"
        )
    payload.update(
        date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        machine=_machine(),
        command=command,
        seconds=None if seconds is None else round(float(seconds), 1),
        notebook_digest=notebook_digest(notebook),
        kdlib_digest=library_digest(),
    )
    folder = Path(folder) if folder is not None else records_folder(notebook.parent.parent)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{notebook.stem}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


def stale_records(notebooks, folder: str | Path | None = None) -> dict[str, str]:
    """``{stem: why}`` for each notebook (paths) whose record is missing or out of date.

    A record is out of date when its ``notebook_digest`` differs from the notebook's cells now
    (or it has none: made before records were stamped).
    """
    stale = {}
    for path in map(Path, notebooks):
        where = Path(folder) if folder is not None else records_folder(path.parent.parent)
        record = where / f"{path.stem}.json"
        if not record.is_file():
            stale[path.stem] = f"no full-mode record in {where}"
            continue
        stamped = json.loads(record.read_text()).get("notebook_digest")
        if stamped is None:
            stale[path.stem] = "its record is not stamped with the notebook's digest"
        elif stamped != notebook_digest(path):
            stale[path.stem] = "the notebook changed since its record was made"
    return stale
