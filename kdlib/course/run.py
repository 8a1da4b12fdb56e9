"""``kdlib course run``: execute the whole course headless and report what it found.

The solution notebooks ``solutions/NN_name/NN_name.ipynb`` are executed in order with
papermill, on the ``python3`` kernel a student uses, with the run's parameters injected after
each notebook's ``parameters`` cell. Everything lands in the output folder (``build/course``)::

    build/course/
        index.html            one page: claims scoreboard, key figures, links to every notebook
        results.json          per notebook: status, parameters, seconds, figures, claims, error
        NN_name.ipynb         the executed notebook (also written when it fails)
        NN_name.html          the same, rendered by nbconvert
        results/NN_name.json  what the notebook's save_results() wrote (its headline figures)
        work/NN_name/         the notebook's working directory

Fast mode is the default (every notebook in well under a minute on a laptop CPU, offline on
the embedded digits dataset); ``--full`` gives the numbers the text discusses. ``--jobs N``
runs N notebooks at once (default: one per core), each kernel with its share of the cores
(``KDLIB_CPUS``, ``OMP_NUM_THREADS``; see :mod:`kdlib.runtime`); the report is the same as a
serial run's. Kernels talk to the runner over local IPC sockets where the platform has them
(no network port, no unencrypted-TCP warning) and show no progress bars
(``KDLIB_PROGRESS=0``). A failing notebook
is reported with its cell and error and the run goes on (unless ``--fail-fast``); a notebook
that runs past ``--timeout`` seconds is stopped (its kernel is shut down) and reported. The
exit status is 0 when every notebook succeeded, 1 otherwise, 2 when there was nothing to run.

The same run from Python: :func:`run_course` returns a :class:`CourseRun`.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import os
import platform
import re
import sys
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from kdlib.course.report import format_figures, render_notebook_html, write_report
from kdlib.course.results import load_claims, load_results

__all__ = [
    "CourseRun",
    "NotebookResult",
    "add_arguments",
    "default_jobs",
    "discover_notebooks",
    "find_repo_root",
    "main",
    "notebook_parameters",
    "run_course",
    "run_notebook",
    "select_notebooks",
    "write_report",
]

KERNEL_NAME = "python3"  # the kernel a student uses (see nbgrader_config.py)
DEFAULT_TIMEOUT = {"fast": 600, "full": 7200}  # seconds per notebook
START_TIMEOUT = 120  # seconds for the kernel to come up
# Headless like "agg" (no window ever opens, whatever MPLBACKEND the shell has), but figures
# are kept as PNG outputs of the executed notebooks, so the HTML and index.html show them.
MPL_BACKEND = "module://matplotlib_inline.backend_inline"
_NOTEBOOK_RE = re.compile(r"^(\d+)_[\w.-]*$")


# --------------------------------------------------------------------------- data


@dataclass
class NotebookResult:
    """What happened to one notebook.

    ``status`` is ``"ok"``, ``"failed"``, ``"timeout"``, ``"skipped"`` (after a failure with
    ``--fail-fast``) or ``"interrupted"`` (Ctrl-C). ``error`` (for failed and timed-out
    notebooks) holds ``cell`` (the failing cell's 1-based position among all cells of the
    source notebook), ``execution_count`` (its ``In [N]`` in the executed notebook),
    ``cell_source`` (its first lines), ``ename`` and ``evalue``.
    """

    name: str
    source: str
    status: str = "pending"
    seconds: float | None = None
    parameters: dict = field(default_factory=dict)
    figures: dict | None = None
    claims: list = field(default_factory=list)  # what its save_results(..., claims=) recorded
    error: dict | None = None
    warnings: list = field(default_factory=list)
    output: str | None = None  # executed .ipynb, relative to the output folder
    html: str | None = None  # its HTML rendering, relative to the output folder

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class CourseRun:
    """A whole run: its options, one :class:`NotebookResult` per selected notebook."""

    out: str
    options: dict
    notebooks: list = field(default_factory=list)
    started: str = ""
    finished: str | None = None
    environment: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.notebooks) and all(nb.ok for nb in self.notebooks)

    def counts(self) -> dict:
        counts: dict = {}
        for nb in self.notebooks:
            counts[nb.status] = counts.get(nb.status, 0) + 1
        return counts

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "counts": self.counts(),
            "started": self.started,
            "finished": self.finished,
            "options": self.options,
            "environment": self.environment,
            "notebooks": [asdict(nb) for nb in self.notebooks],
        }


# ---------------------------------------------------------------- finding notebooks


def find_repo_root(start: str | Path | None = None) -> Path:
    """The course repository: the first folder at or above ``start`` (default: the current
    directory) holding ``nbgrader_config.py``; else the folder above the kdlib package when it
    holds one (an editable install); else ``start`` itself."""
    start = Path(start or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / "nbgrader_config.py").is_file():
            return folder
    package_parent = Path(__file__).resolve().parent.parent
    if (package_parent / "nbgrader_config.py").is_file():
        return package_parent
    return start


def discover_notebooks(source: str | Path) -> list[Path]:
    """``source/NN_name/NN_name.ipynb`` (any ``NN_*.ipynb`` in an ``NN_*`` folder), sorted by
    the number ``NN`` and then by name. Checkpoints are ignored."""
    source = Path(source)
    found = []
    for folder in source.iterdir() if source.is_dir() else ():
        if not folder.is_dir() or not _NOTEBOOK_RE.match(folder.name):
            continue
        for path in folder.glob("*.ipynb"):
            if _NOTEBOOK_RE.match(path.stem):
                found.append(path)
    return sorted(found, key=lambda p: (_number(p), p.stem))


def _number(path: Path) -> int:
    return int(_NOTEBOOK_RE.match(path.stem).group(1))


def select_notebooks(notebooks: list[Path], only: str | None) -> list[Path]:
    """Keep the notebooks that ``only`` names: comma-separated numbers (``03,04``; ``3`` works
    too), ranges (``02-05``) or name prefixes (``03_train``). Raises ``ValueError`` for an item
    that matches no notebook."""
    if not only:
        return list(notebooks)
    keep: set[Path] = set()
    for item in (part.strip() for part in only.split(",")):
        if not item:
            continue
        if re.fullmatch(r"\d+", item):
            hits = [p for p in notebooks if _number(p) == int(item)]
        elif re.fullmatch(r"\d+-\d+", item):
            low, high = (int(x) for x in item.split("-"))
            hits = [p for p in notebooks if low <= _number(p) <= high]
        else:
            hits = [p for p in notebooks if p.stem.startswith(item)]
        if not hits:
            names = ", ".join(p.stem for p in notebooks) or "none"
            raise ValueError(f"--only {item!r} matches no notebook (found: {names})")
        keep.update(hits)
    return [p for p in notebooks if p in keep]


# ------------------------------------------------------------------ running one


def notebook_parameters(path: str | Path, wanted: dict, explicit: set[str] = frozenset()):
    """Split ``wanted`` into the parameters the notebook declares and warnings for the rest.

    Returns ``(parameters, warnings)``. Only names in the notebook's ``parameters`` cell are
    passed (papermill would otherwise inject names the notebook never reads); a name in
    ``explicit`` (a flag the user gave) that the notebook lacks gets a warning, as does a
    notebook without a ``parameters`` cell or without ``results_dir``.
    """
    import papermill

    declared = papermill.inspect_notebook(str(path))
    warnings = []
    if not declared:
        warnings.append("no cell tagged 'parameters': ran with the notebook's own values")
    elif "results_dir" in wanted and "results_dir" not in declared:
        warnings.append("the parameters cell has no results_dir: no figures collected")
    parameters = {}
    for name, value in wanted.items():
        if name in declared:
            parameters[name] = value
        elif name in explicit and declared:
            warnings.append(f"the notebook takes no parameter {name!r}: ignored")
    return parameters, warnings


def default_jobs(n_notebooks: int | None = None) -> int:
    """What the machine allows: one notebook per core of this process's CPU affinity, at most
    one per 1.5 GB of available memory (when the platform says) and at most ``n_notebooks``."""
    from kdlib.runtime import available_cpus

    jobs = available_cpus()
    with contextlib.suppress(AttributeError, ValueError, OSError):
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        jobs = min(jobs, max(1, int(free // 1.5e9)))
    if n_notebooks:
        jobs = min(jobs, n_notebooks)
    return max(1, jobs)


def kernel_environment(fast: bool, jobs: int = 1, threads: int | str = "auto") -> dict:
    """The variables set for each notebook's kernel (``None``: removed from it).

    ``threads``: ``"auto"`` gives each of the ``jobs`` kernels its share of the cores
    (``KDLIB_CPUS`` and ``OMP_NUM_THREADS``; kdlib's policy then uses one thread for the small
    models, see :mod:`kdlib.runtime`); a number sets ``KDLIB_THREADS`` to it in every kernel;
    ``"torch"`` leaves PyTorch's own default (one thread per core in every kernel).
    """
    from kdlib.runtime import available_cpus

    env = {
        "MPLBACKEND": MPL_BACKEND,
        "KDLIB_FAST": "1" if fast else "0",
        "KDLIB_PROGRESS": "0",
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",  # no debugger warning on frozen modules
    }
    if threads == "auto":
        share = str(max(1, available_cpus() // max(1, jobs)))
        env.update(KDLIB_CPUS=share, OMP_NUM_THREADS=share, MKL_NUM_THREADS=share)
    elif threads == "torch":
        env.update(KDLIB_THREADS="0", KDLIB_CPUS=None, OMP_NUM_THREADS=None, MKL_NUM_THREADS=None)
    else:
        try:
            n = int(threads)
        except (TypeError, ValueError):
            n = 0
        if n < 1 or str(n) != str(threads).strip():
            raise ValueError(f"threads must be 'auto', 'torch' or a number >= 1, got {threads!r}")
        env.update(KDLIB_THREADS=str(n), OMP_NUM_THREADS=str(n), MKL_NUM_THREADS=str(n))
    return env


def _kernel_manager_class(env: dict, cwd: str):
    """A jupyter_client kernel manager for one notebook: the kernel starts in ``cwd`` with
    ``env`` applied to this process's environment (nothing process-wide changes, so several
    notebooks can start at once from threads), over IPC sockets on POSIX."""
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import CaselessStrEnum, default

    ipc = os.name == "posix"

    class CourseKernelManager(AsyncKernelManager):
        transport = CaselessStrEnum(["tcp", "ipc"], default_value="ipc" if ipc else "tcp")

        @default("ip")
        def _default_ip(self) -> str:
            if self.transport != "ipc":
                return super()._ip_default()
            from jupyter_core.paths import jupyter_runtime_dir

            folder = Path(jupyter_runtime_dir())
            folder.mkdir(parents=True, exist_ok=True)
            return str(folder / f"kdlib-{uuid.uuid4().hex[:12]}-ipc")  # sockets: <ip>-<port>

        async def start_kernel(self, **kw):
            environ = dict(kw.pop("env", None) or os.environ)
            for name, value in env.items():
                if value is None:
                    environ.pop(name, None)
                else:
                    environ[name] = value
            kw.update(env=environ, cwd=cwd)
            return await super().start_kernel(**kw)

    return CourseKernelManager


def _first_lines(source: str, n: int = 3) -> str:
    lines = source.strip().splitlines()
    return "\n".join(lines[:n]) + ("\n..." if len(lines) > n else "")


def _locate_cell(source: Path, cell_id=None, cell_source=None, near=None, count=None) -> dict:
    """Where a cell of the executed notebook is in the *source* notebook.

    Returns ``cell`` (its 1-based position among all cells of the source notebook, ``None``
    for papermill's injected parameters cell), ``execution_count`` (the ``In [N]`` of the
    executed notebook) and ``cell_source`` (its first lines). The cell is found by id, else by
    its source (the match nearest to ``near``, papermill's 0-based index, on ties).
    """
    where = {"cell": None, "execution_count": count, "cell_source": None}
    if cell_source is not None:
        where["cell_source"] = _first_lines(cell_source)
    try:
        import nbformat

        cells = nbformat.read(str(source), as_version=4).cells
    except Exception:  # noqa: BLE001 (unreadable source: report what we have)
        return where
    hits = [i for i, c in enumerate(cells) if cell_id and c.get("id") == cell_id]
    if not hits and cell_source is not None:
        hits = [i for i, c in enumerate(cells) if c.get("source") == cell_source]
    if hits:
        where["cell"] = 1 + min(hits, key=lambda i: abs(i - (near if near is not None else i)))
    return where


def _where(source: Path, cell) -> dict:
    if cell is None:
        return {"cell": None, "execution_count": None, "cell_source": None}
    return _locate_cell(
        source, cell.get("id"), cell.get("source"), None, cell.get("execution_count")
    )


def run_notebook(
    path: str | Path,
    out: str | Path,
    parameters: dict,
    *,
    timeout: float | None = None,
    fast: bool = True,
    render_html: bool = True,
    env: dict | None = None,
) -> NotebookResult:
    """Execute one notebook with papermill into ``out`` and return what happened.

    The kernel runs in ``out/work/<stem>`` with :func:`kernel_environment` (``env``: that of a
    serial run in ``fast`` mode when ``None``); safe to call from several threads at once.

    ``timeout`` (seconds, ``None`` or 0 for none) bounds the whole notebook: each cell may
    run only for what is left of it, so a cell that hangs is stopped when the notebook's time
    is up and its kernel is shut down. The figures are read from
    ``parameters["results_dir"]/<stem>.json`` when the notebook takes ``results_dir``.
    """
    import papermill
    from nbclient.exceptions import CellTimeoutError

    path, out = Path(path).resolve(), Path(out).resolve()
    name = path.stem
    result = NotebookResult(name=name, source=str(path))
    wanted = dict(parameters)
    explicit = set(wanted.pop("_explicit", ()))
    try:
        result.parameters, result.warnings = notebook_parameters(path, wanted, explicit)
    except Exception as exc:  # noqa: BLE001 (not a notebook: report it, run the others)
        result.status, result.seconds = "failed", 0.0
        result.error = {
            "cell": None,
            "execution_count": None,
            "cell_source": None,
            "ename": type(exc).__name__,
            "evalue": str(exc)[:500],
        }
        return result

    output = out / f"{name}.ipynb"
    workdir = out / "work" / name
    workdir.mkdir(parents=True, exist_ok=True)
    results_file = None
    if "results_dir" in result.parameters:
        results_file = Path(result.parameters["results_dir"]) / f"{name}.json"
        results_file.parent.mkdir(parents=True, exist_ok=True)
        results_file.unlink(missing_ok=True)  # never report a previous run's figures
    output.unlink(missing_ok=True)

    deadline = time.monotonic() + timeout if timeout else None
    current = {"cell": None}

    def cell_timeout(cell):
        """Per-cell limit for nbclient: what is left of the notebook's time."""
        current["cell"] = cell
        return None if deadline is None else max(1.0, deadline - time.monotonic())

    start = time.monotonic()
    try:
        papermill.execute_notebook(
            str(path),
            str(output),
            parameters=result.parameters,
            kernel_name=KERNEL_NAME,
            progress_bar=False,
            log_output=False,
            start_timeout=START_TIMEOUT,
            timeout_func=cell_timeout,
            shutdown_kernel="immediate",
            kernel_manager_class=_kernel_manager_class(
                kernel_environment(fast) if env is None else env, str(workdir)
            ),
        )
        result.status = "ok"
    except papermill.PapermillExecutionError as exc:
        result.status = "failed"
        result.error = {
            **_locate_cell(path, None, exc.source, exc.cell_index, exc.exec_count),
            "ename": exc.ename,
            "evalue": exc.evalue,
        }
    except CellTimeoutError:
        result.status = "timeout"
        result.error = {
            **_where(path, current["cell"]),
            "ename": "Timeout",
            "evalue": f"stopped after {timeout:g} s (--timeout); the kernel was shut down",
        }
    except Exception as exc:  # noqa: BLE001 (dead kernel, missing kernel, unreadable file...)
        result.status = "failed"
        result.error = {
            **_where(path, current["cell"]),
            "ename": type(exc).__name__,
            "evalue": str(exc).strip().splitlines()[0] if str(exc).strip() else "",
        }
    except KeyboardInterrupt:
        result.status = "interrupted"
        result.seconds = round(time.monotonic() - start, 2)
        raise
    finally:
        result.seconds = round(time.monotonic() - start, 2)
        if output.exists():
            result.output = output.name

    if results_file is not None and results_file.exists():
        try:
            result.figures = load_results(results_file)
            result.claims = load_claims(results_file)
        except (ValueError, KeyError, TypeError) as exc:
            result.warnings.append(f"unreadable {results_file.name}: {exc}")
    elif results_file is not None and result.ok:
        result.warnings.append(
            f"wrote no figures (expected save_results({name!r}, ..., results_dir))"
        )

    if render_html and result.output:
        try:
            result.html = _render_html(output).name
        except Exception as exc:  # noqa: BLE001 (a rendering problem must not fail the run)
            result.warnings.append(f"could not render HTML: {type(exc).__name__}: {exc}")
    return result


def _render_html(notebook: Path) -> Path:
    return render_notebook_html(notebook)  # offline MathJax, alt text


# ------------------------------------------------------------------ the whole run


def summary_line(result: NotebookResult) -> str:
    """The console line for one notebook: name, status, time, figures or error."""
    seconds = "" if result.seconds is None else f"{result.seconds:7.1f}s"
    line = f"{result.name:<28} {result.status:<8} {seconds:>8}"
    if result.error:
        err = result.error
        where = f"cell {err['cell']}" if err.get("cell") is not None else "cell ?"
        if err.get("execution_count"):
            where += f" (In [{err['execution_count']}])"
        line += f"  {where}: {err['ename']}: {err['evalue']}"
    elif result.figures:
        if result.claims:
            held = sum(bool(c.get("holds")) for c in result.claims)
            line += f"  claims {held}/{len(result.claims)} hold;"
        line += "  " + format_figures(result.figures)
    for warning in result.warnings:
        line += f"\n{'':<28} warning: {warning}"
    return line


def _environment_info() -> dict:
    from importlib import metadata

    info = {"python": platform.python_version(), "platform": platform.platform()}
    for package in ("kdlib", "torch", "papermill", "nbclient", "ipykernel"):
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[package] = None
    return info


def run_course(
    source: str | Path,
    out: str | Path,
    *,
    only: str | None = None,
    fast: bool = True,
    device: str = "auto",
    dataset: str = "digits",
    seed: int = 0,
    epochs: int | None = None,
    n_seeds: int | None = None,
    extra: dict | None = None,
    explicit: set[str] = frozenset(),
    timeout: float | None = None,
    fail_fast: bool = False,
    render_html: bool = True,
    progress: bool = True,
    echo=print,
    jobs: int | None = None,
    threads: int | str = "auto",
) -> CourseRun:
    """Execute the selected notebooks of ``source`` and write the report to ``out``.

    Parameters given to every notebook that declares them: ``device``, ``dataset``, ``seed``,
    ``fast``, ``results_dir`` (``<out>/results``), ``epochs`` and ``n_seeds`` when not
    ``None``, and ``extra``. ``explicit`` names the ones the user chose (a notebook that lacks
    one gets a warning). ``timeout`` is per notebook (default 600 s fast, 7200 s full; 0 for
    none). ``results.json`` and ``index.html`` are rewritten after every notebook, so an
    interrupted run still leaves a report. Raises ``ValueError`` when nothing is selected.

    ``jobs`` notebooks run at once (default :func:`default_jobs`; 1 with ``fail_fast``, so that
    nothing starts after a failure), each kernel with the threads :func:`kernel_environment`
    gives for ``threads``. The report lists the notebooks in order whatever order they finish
    in, so it is the same as a serial run's (but for the seconds).
    """
    from tqdm.auto import tqdm

    source, out = Path(source).resolve(), Path(out).resolve()
    notebooks = select_notebooks(discover_notebooks(source), only)
    if not notebooks:
        raise ValueError(f"no notebooks NN_name/NN_name.ipynb under {source}")
    if timeout is None:
        timeout = DEFAULT_TIMEOUT["fast" if fast else "full"]
    if jobs is None:
        jobs = 1 if fail_fast else default_jobs(len(notebooks))
    if int(jobs) < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")
    jobs = min(int(jobs), len(notebooks))
    env = kernel_environment(fast, jobs, threads)
    out.mkdir(parents=True, exist_ok=True)
    results_dir = out / "results"

    wanted = {"device": device, "dataset": dataset, "seed": seed, "fast": fast}
    wanted["results_dir"] = str(results_dir)
    if epochs is not None:
        wanted["epochs"] = epochs
    if n_seeds is not None:
        wanted["n_seeds"] = n_seeds
    wanted.update(extra or {})

    run = CourseRun(
        out=str(out),
        options={
            "source": str(source),
            "only": only,
            "mode": "fast" if fast else "full",
            "timeout_s": timeout or None,
            "fail_fast": fail_fast,
            "kernel": KERNEL_NAME,
            "parameters": {k: v for k, v in wanted.items() if k != "results_dir"},
        },
        notebooks=[NotebookResult(name=p.stem, source=str(p)) for p in notebooks],
        started=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        environment={**_environment_info(), "jobs": jobs, "threads": threads},
    )
    write_report(run)

    bar = tqdm(total=len(notebooks), desc="course", unit="nb", disable=not progress)
    options = {"timeout": timeout, "fast": fast, "render_html": render_html, "env": env}

    def finished(index: int, result: NotebookResult) -> bool:
        run.notebooks[index] = result
        (bar.write if progress else echo)(summary_line(result))
        bar.update(1)
        write_report(run)
        return not result.ok

    failed = False
    try:
        if jobs == 1:
            for index, path in enumerate(notebooks):
                if failed and fail_fast:
                    run.notebooks[index].status = "skipped"
                    continue
                bar.set_postfix_str(path.stem)
                run.notebooks[index].status = "running"
                try:
                    result = run_notebook(path, out, {**wanted, "_explicit": explicit}, **options)
                except KeyboardInterrupt:
                    run.notebooks[index].status = "interrupted"
                    raise
                failed = finished(index, result) or failed
        else:
            failed = _run_parallel(
                run, notebooks, out, wanted, explicit, options, jobs, fail_fast, bar, finished
            )
    finally:
        bar.close()
        run.finished = datetime.now(timezone.utc).isoformat(timespec="seconds")
        write_report(run)
    return run


def _run_parallel(
    run, notebooks, out, wanted, explicit, options, jobs, fail_fast, bar, finished
) -> bool:
    """Run the notebooks ``jobs`` at a time in threads (each drives its own kernel process);
    returns whether one failed. With ``fail_fast`` the ones not yet started are skipped."""
    failed = False
    pending = list(enumerate(notebooks))
    running: dict = {}
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="kdlib-course") as pool:
        try:
            while pending or running:
                while pending and len(running) < jobs and not (failed and fail_fast):
                    index, path = pending.pop(0)
                    run.notebooks[index].status = "running"
                    future = pool.submit(
                        run_notebook, path, out, {**wanted, "_explicit": explicit}, **options
                    )
                    running[future] = index
                if failed and fail_fast:
                    for index, _ in pending:
                        run.notebooks[index].status = "skipped"
                    pending = []
                if not running:
                    break
                bar.set_postfix_str(", ".join(run.notebooks[i].name for i in running.values()))
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for future in sorted(done, key=running.get):
                    failed = finished(running.pop(future), future.result()) or failed
        except KeyboardInterrupt:
            for index in running.values():
                run.notebooks[index].status = "interrupted"
            for future in running:
                future.cancel()
            raise
    return failed


# --------------------------------------------------------------------------- CLI


def _parse_value(text: str):
    """A ``-p`` value: a Python literal when it is one (``3``, ``0.5``, ``True``, ``None``),
    else the string itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def add_arguments(parser: argparse.ArgumentParser, path=("course", "run")) -> None:
    """Flags of ``kdlib course run``."""
    parser.description = (
        "Execute the solution notebooks in order with papermill (kernel python3) and write "
        "the executed notebooks, results.json and index.html to --out. Fast mode is the "
        "default: with no flags the whole course runs offline on the embedded digits dataset "
        "in a few minutes on a CPU. Exit status: 0 all ran, 1 a notebook failed or timed "
        "out, 2 nothing to run."
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--fast",
        dest="fast",
        action="store_true",
        default=True,
        help="fast mode: fewer epochs and seeds (the default)",
    )
    mode.add_argument(
        "--full",
        dest="fast",
        action="store_false",
        help="full mode: the numbers the text discusses (much longer; a GPU helps)",
    )
    parser.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda", "mps"],
        default=None,
        help="device parameter for every notebook (default: auto)",
    )
    parser.add_argument(
        "--dataset",
        default=None,
        metavar="NAME",
        help="digits (embedded, offline; the default) | mnist | fashion_mnist | "
        "cifar10 | cifar100 (download these first: kdlib data download)",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed parameter (default: 0)")
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="epochs parameter (default: each notebook's own for the mode)",
    )
    parser.add_argument(
        "--n-seeds",
        type=int,
        default=None,
        dest="n_seeds",
        help="n_seeds parameter (default: each notebook's own for the mode)",
    )
    parser.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="any other parameter, for the notebooks that declare it "
        "(repeatable; VALUE is read as a Python literal, else a string)",
    )
    parser.add_argument(
        "--only",
        default=None,
        metavar="NN,NN",
        help="run only these notebooks: numbers (03,04), ranges (02-05) or name prefixes",
    )
    parser.add_argument(
        "--out",
        default="build/course",
        metavar="DIR",
        help="output folder (default: build/course, relative to the current directory)",
    )
    parser.add_argument(
        "--source",
        default=None,
        metavar="DIR",
        help="folder of NN_name/NN_name.ipynb notebooks (default: solutions/ "
        "of the course repository: the first folder at or above the "
        "current directory with nbgrader_config.py)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop a notebook that runs longer than this and report it "
        f"(default: {DEFAULT_TIMEOUT['fast']} fast, "
        f"{DEFAULT_TIMEOUT['full']} full; 0: no limit)",
    )
    parser.add_argument(
        "--jobs",
        "-j",
        type=int,
        default=None,
        metavar="N",
        help="run N notebooks at once, the cores shared between their kernels (default: one "
        "per core, as memory allows; 1 with --fail-fast)",
    )
    parser.add_argument(
        "--threads",
        default="auto",
        metavar="auto|N|torch",
        help="CPU threads of each kernel: auto (its share of the cores; kdlib uses one thread "
        "for the small digits models), N (KDLIB_THREADS=N everywhere) or torch (PyTorch's "
        "default: one per core in every kernel; for comparison)",
    )
    parser.add_argument(
        "--fail-fast",
        action="store_true",
        help="stop at the first notebook that fails (the rest are 'skipped')",
    )
    parser.add_argument(
        "--no-html",
        dest="html",
        action="store_false",
        help="do not render the executed notebooks to HTML",
    )
    parser.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="no progress bar (the per-notebook lines are still printed)",
    )
    parser.add_argument(
        "--record",
        action="store_true",
        help="with --full: store each notebook that ran as its full-mode record in "
        "data/full_mode/ beside the source folder ($KDLIB_FULL_MODE overrides), stamped with "
        "the digests of the notebook and of kdlib (the course's own settings only: no --seed, "
        "--dataset, --epochs, --n-seeds or -p)",
    )


def main(args: argparse.Namespace) -> int:
    """Run ``kdlib course run``; returns the exit status."""
    extra = {}
    for item in args.param:
        name, sep, value = item.partition("=")
        if not sep or not name.isidentifier():
            print(f"kdlib course run: -p expects NAME=VALUE, got {item!r}", file=sys.stderr)
            return 2
        extra[name] = _parse_value(value)
    explicit = {
        name
        for name in ("device", "dataset", "seed", "epochs", "n_seeds")
        if getattr(args, name) is not None
    } | set(extra)
    source = Path(args.source) if args.source else find_repo_root() / "solutions"
    timeout = args.timeout
    if args.record:
        refused = _record_refused(args, explicit, set(extra))
        if refused:
            print(f"kdlib course run: --record {refused}", file=sys.stderr)
            return 2
    try:
        run = run_course(
            source,
            args.out,
            only=args.only,
            fast=args.fast,
            device=args.device or "auto",
            dataset=args.dataset or "digits",
            seed=0 if args.seed is None else args.seed,
            epochs=args.epochs,
            n_seeds=args.n_seeds,
            extra=extra,
            explicit=explicit,
            timeout=timeout,
            fail_fast=args.fail_fast,
            render_html=args.html,
            progress=args.progress,
            jobs=args.jobs,
            threads=args.threads,
        )
    except ValueError as exc:
        print(f"kdlib course run: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "kdlib course run: interrupted; partial report in "
            f"{Path(args.out).resolve() / 'index.html'}",
            file=sys.stderr,
        )
        return 130
    counts = ", ".join(f"{n} {status}" for status, n in run.counts().items())
    print(f"{'ok' if run.ok else 'FAILED'}: {counts}. Report: {Path(run.out) / 'index.html'}")
    if args.record:
        _store_records(run, args)
    return 0 if run.ok else 1


def _record_refused(args: argparse.Namespace, explicit: set[str], params: set[str]) -> str | None:
    """Why ``--record`` cannot be used with these flags (``None`` when it can)."""
    if args.fast:
        return "stores full-mode records: add --full"
    changed = sorted(explicit - {"device"})
    if changed:
        flags = ", ".join(f"-p {n}" if n in params else "--" + n.replace("_", "-") for n in changed)
        return (
            f"stores the course's own full mode: run it without {flags} "
            "(a record made with other settings would be shown as the course's)"
        )
    return None


def _store_records(run: CourseRun, args: argparse.Namespace) -> None:
    """Store every notebook of ``run`` that ran as its full-mode record; say which did not."""
    from kdlib.course.records import store_full_mode

    command = "kdlib course run --full --record"
    if args.only:
        command += f" --only {args.only}"
    if args.device:
        command += f" --device {args.device}"
    for nb in run.notebooks:
        results_file = Path(run.out) / "results" / f"{nb.name}.json"
        if nb.ok and results_file.is_file():
            path = store_full_mode(results_file, nb.source, command, seconds=nb.seconds)
            print(f"recorded {nb.name}: {path}")
        else:
            print(f"NOT recorded {nb.name}: it {nb.status}", file=sys.stderr)
