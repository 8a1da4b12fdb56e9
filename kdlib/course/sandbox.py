"""Running a student's notebook where it can do no harm, and tests it cannot switch off.

Used by :mod:`kdlib.course.grade` for every submission:

- :func:`bwrap_status` says whether bubblewrap (``bwrap``, Debian package ``bubblewrap``) can
  build a sandbox here. When it can, :class:`SandboxedKernelManager` starts each Jupyter kernel
  inside one: new PID, network, IPC and UTS namespaces, no capabilities, an empty root in which
  only the Python installation, the site-packages folders and the ``kdlib`` package are mounted
  read-only, the submission's scratch folder read-write (its working folder), a private ``/tmp``,
  a cleared environment and ``PYTHONSAFEPATH=1`` (the working folder is not on ``sys.path``, so
  a ``kdlib/`` shipped with a notebook cannot shadow the real one). The grader talks to the
  kernel over ZeroMQ's ``ipc`` transport (Unix sockets in a folder bound into the sandbox), so
  the kernel needs no network. When the kernel's sandbox ends, the kernel and every process it
  started end with it (the PID namespace's first process exits).
- :class:`GuardedExecute` is nbgrader's ``Execute`` preprocessor plus the guard of
  :mod:`kdlib.course.guard`, whose source it runs in the kernel before the first cell: before
  every locked cell the guard puts back what the student's cells changed among the functions
  of ``builtins``, ``torch``, ``numpy``, ``kdlib`` and the IPython shell, and rebinds the names
  a locked cell bound (``from kdlib.losses import kd_loss``); after a locked cell holding hidden
  tests it removes that cell's source from the kernel's history. What it had to put back is
  reported (``tests-tampered``). It leaves out the cells no grade depends on
  (:mod:`kdlib.course.needed`), and sandboxes the kernel when :attr:`GuardedExecute.sandboxed`.
  The kernel imports the grader's own kdlib (:func:`kdlib_path_entry`); ``/tmp`` and
  ``/dev/shm`` are capped to the file limit.
- :func:`scan_cells` reads the student's cells (without running them) and names those that
  patch builtins, torch, numpy, kdlib or IPython, reach into the interpreter, start processes or
  touch files outside their folder (``manual-review``); cells identical to a cell of the
  release are the course's own code and are not scanned.
- :class:`FeedbackSafety` is a feedback preprocessor: hidden tests replaced by a notice (and
  their text removed from every output), markdown cleaned of scripts, frames, event handlers and
  ``javascript:`` links.

What this cannot guarantee is stated in the README: code running in the same Python process as
the tests can always, with enough effort, reach the objects the guard holds; the guard and the
scan make the known tricks fail or visible, a person decides on what is flagged.
"""

from __future__ import annotations

import ast
import functools
import html
import os
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

from kdlib.course.guard import setup_code as guard_setup_code
from kdlib.course.limits import limited_command
from kdlib.course.needed import parse_cell

HIDDEN_BEGIN, HIDDEN_END = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
HIDDEN_NOTICE = "# (hidden tests: not shown in the feedback; their result counts in the points)"
OFF_SWITCH = "KDLIB_GRADE_SANDBOX"  # =off: grade without bubblewrap (and say so)

# environment variables the kernel keeps (everything else is cleared: no tokens, no paths)
KEPT_ENV = (
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "KDLIB_THREADS",
    "KDLIB_CPUS",
    "KDLIB_FAST",
    "KDLIB_DATA",
    "NBGRADER_EXECUTION",
    "MPLBACKEND",
)


# --------------------------------------------------------------------------- bubblewrap


@functools.lru_cache(maxsize=1)
def bwrap_status() -> tuple[str | None, str]:
    """``(path of bwrap, "")`` when a bubblewrap sandbox works here, else ``(None, reason)``."""
    if os.environ.get(OFF_SWITCH, "").strip().lower() in ("0", "off", "no", "false"):
        return None, f"turned off ({OFF_SWITCH}={os.environ[OFF_SWITCH]})"
    if not sys.platform.startswith("linux"):
        return None, f"bubblewrap is Linux-only (this is {sys.platform})"
    path = shutil.which("bwrap")
    if path is None:
        return None, (
            "bubblewrap (bwrap) is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
        )
    probe = [path, *_namespace_args(), *_system_binds(), "--", "/bin/true"]
    try:
        done = subprocess.run(probe, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"bwrap cannot run here ({exc})"
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        return None, f"bwrap cannot create a sandbox here ({reason[:200]})"
    return path, ""


@functools.lru_cache(maxsize=1)
def _bwrap_sizes_tmpfs() -> bool:
    """Whether this bubblewrap has ``--size`` (0.8 and later) to cap a tmpfs."""
    path = shutil.which("bwrap")
    try:
        done = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=30)
    except (OSError, TypeError, subprocess.TimeoutExpired):
        return False
    return "--size" in done.stdout + done.stderr


def _namespace_args() -> list[str]:
    return [
        "--unshare-user-try",
        "--unshare-pid",
        "--unshare-net",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--die-with-parent",
        "--cap-drop",
        "ALL",
    ]


def _system_binds(tmp_size: int | None = None) -> list[str]:
    """The operating system, read-only: /usr, the /bin /lib... links or folders, a few files of
    /etc (no secrets), a fresh /proc, /dev and /tmp."""
    args = ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    for name in (
        "passwd",
        "group",
        "nsswitch.conf",
        "localtime",
        "ld.so.cache",
        "ld.so.conf",
        "ld.so.conf.d",
        "alternatives",
        "mime.types",
        "hosts",
        "timezone",
    ):
        args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    size = ["--size", str(int(tmp_size))] if tmp_size and _bwrap_sizes_tmpfs() else []
    args += [
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        *size,
        "--tmpfs",
        "/tmp",
        *size,
        "--tmpfs",
        "/dev/shm",
    ]
    return args


def _python_paths(hidden: list[Path]) -> list[str]:
    """Folders the kernel's Python needs, read-only: its installation (``sys.prefix`` and the
    base installation), the site-packages folders, and the ``kdlib`` package with its ``data/``
    (bound on their own: in an editable install they sit in a clone of the course). A folder
    that holds one of ``hidden`` (the course, the grading folder, the temporary folder) is left
    out."""
    import importlib.util
    import site
    import tempfile

    hidden = [*hidden, Path(tempfile.gettempdir())]
    wanted = [
        Path(sys.prefix),
        Path(sys.base_prefix),
        Path(sys.exec_prefix),
        Path(sys.base_exec_prefix),
    ]
    wanted += [Path(p) for p in site.getsitepackages()]
    if site.ENABLE_USER_SITE and site.getusersitepackages():
        wanted.append(Path(site.getusersitepackages()))
    spec = importlib.util.find_spec("kdlib")
    kdlib_dirs = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    for folder in kdlib_dirs:
        wanted += [folder, folder.parent / "data"]  # kdlib.data's default root
    keep: list[Path] = []
    for folder in wanted:
        try:
            folder = folder.resolve()
        except OSError:
            continue
        if not folder.is_dir() or folder == Path("/"):
            continue
        if any(h.resolve() == folder or h.resolve().is_relative_to(folder) for h in hidden):
            continue  # binding it would show the course or the other submissions
        if any(folder.is_relative_to(k) for k in keep):
            continue
        keep = [k for k in keep if not k.is_relative_to(folder)] + [folder]
    return [str(k) for k in keep]


def kdlib_path_entry() -> str:
    """The folder to put first on the kernel's ``PYTHONPATH`` so that it imports the grader's
    own ``kdlib`` (and not another checkout an editable install or a ``.pth`` file points
    to); "" when kdlib sits in a site-packages folder the kernel searches anyway."""
    import importlib.util
    import site

    spec = importlib.util.find_spec("kdlib")
    if spec is None or not spec.submodule_search_locations:
        return ""
    parent = Path(list(spec.submodule_search_locations)[0]).resolve().parent
    site_dirs = {Path(p).resolve() for p in site.getsitepackages()}
    return "" if parent in site_dirs else str(parent)


def sandbox_command(
    kernel_cmd: list[str],
    workdir: Path,
    ipc_dir: Path,
    hidden: list[Path],
    env: dict[str, str],
    tmp_size: int | None = None,
) -> list[str]:
    """``kernel_cmd`` wrapped in bubblewrap: ``workdir`` (read-write, the working folder) and
    ``ipc_dir`` (the kernel's sockets and connection file) are the only writable folders;
    ``/tmp`` and ``/dev/shm`` hold at most ``tmp_size`` bytes each (they live in memory)."""
    path, reason = bwrap_status()
    if path is None:
        raise RuntimeError(reason)
    args = [path, *_namespace_args(), *_system_binds(tmp_size)]
    for folder in _python_paths(hidden):
        args += ["--ro-bind", folder, folder]
    args += [
        "--bind",
        str(workdir),
        str(workdir),
        "--bind",
        str(ipc_dir),
        str(ipc_dir),
        "--chdir",
        str(workdir),
        "--clearenv",
        "--setenv",
        "PATH",
        os.pathsep.join([str(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin", "/bin"]),
        "--setenv",
        "HOME",
        "/tmp",
        "--setenv",
        "PYTHONSAFEPATH",
        "1",
        "--setenv",
        "PYTHONDONTWRITEBYTECODE",
        "1",
    ]
    entry = kdlib_path_entry()
    if entry:  # the grader's kdlib first (bound read-only by _python_paths)
        args += ["--setenv", "PYTHONPATH", entry]
    for name in KEPT_ENV:
        if name in env:
            args += ["--setenv", name, env[name]]
    # SIGINT ignored for bubblewrap's own processes (an interrupt is sent to the kernel's
    # process group: it must stop the cell, not end the sandbox); the kernel sets its handler
    ignore_int = [
        sys.executable,
        "-S",
        "-E",
        "-c",
        "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
        "os.execv(sys.argv[1], sys.argv[1:])",
    ]
    return [*ignore_int, *args, "--", *kernel_cmd]


try:
    from jupyter_client.manager import AsyncKernelManager
except ImportError:  # pragma: no cover - the course extra is not installed
    AsyncKernelManager = object


class SandboxedKernelManager(AsyncKernelManager):
    """A kernel manager that starts the kernel in bubblewrap (see the module docstring).

    Class attributes set by the grader's child process before autograding: ``hidden`` (folders
    that must stay out of sight) and ``ipc_dir`` (a fresh private folder for the sockets)."""

    hidden: list[Path] = []
    ipc_dir: Path | None = None
    tmp_size: int | None = None  # bytes of /tmp and /dev/shm in the sandbox
    limits: tuple = (None, None)  # the kernel's memory and file-size limits (kdlib.course.limits)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        assert self.ipc_dir is not None, "SandboxedKernelManager.ipc_dir is not set"
        self.transport = "ipc"
        self.ip = str(self.ipc_dir / "kernel")
        self.connection_file = str(self.ipc_dir / "kernel.json")

    async def _async_pre_start_kernel(self, **kw):
        cwd = Path(kw.get("cwd") or os.getcwd()).resolve()
        kernel_cmd, kw = await super()._async_pre_start_kernel(**kw)
        kernel_cmd = limited_command(kernel_cmd, *self.limits)
        env = kw.get("env") or os.environ
        log = open(self.ipc_dir / "kernel.log", "ab")  # noqa: SIM115 - the kernel's lifetime
        kw.update(stdout=log, stderr=log)
        return (sandbox_command(kernel_cmd, cwd, self.ipc_dir, self.hidden, env, self.tmp_size), kw)


# --------------------------------------------------------------------------- the guard


def modules_mentioned(sources: list[str]) -> list[str]:
    """The guarded libraries a notebook's cells mention (imported before its first cell)."""
    text = "\n".join(sources)
    found = []
    if re.search(r"\btorch\b", text):
        found += ["torch", "torch.nn", "torch.nn.functional"]
    if re.search(r"\b(numpy|np)\b", text):
        found.append("numpy")
    if re.search(r"\bkdlib\b", text):
        found.append("kdlib")
        found += sorted({f"kdlib.{m}" for m in re.findall(r"\bkdlib\.(\w+)", text)})
    return found


def _nbgrader_meta(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {}) or {}


def is_locked(cell) -> bool:
    meta = _nbgrader_meta(cell)
    return bool(meta.get("locked") or (meta.get("grade") and not meta.get("solution")))


try:
    from nbgrader.preprocessors import Execute as _Execute
except ImportError:  # pragma: no cover - the course extra is not installed
    _Execute = object


class GuardedExecute(_Execute):
    """nbgrader's ``Execute`` with the guard described in the module docstring, the kernel in
    bubblewrap when :attr:`sandboxed` is set, and an IOPub wait after an interrupt as long as the
    per-cell timeout (a cell that stops within the timeout is not taken for a dead kernel)."""

    sandboxed = False  # set by the grader's child process
    tampering: list[str] = []  # what the guard put back, "cell: what" (read by the grader)
    released: set[str] = set()  # sources of the release's code cells (set by the child)
    skip_unneeded = True  # leave out the cells no answer or test depends on (kdlib.course.needed)
    skipped: list[int] = []  # how many cells each notebook left out (read by the grader)

    def __init__(self, *args, **kwargs):
        if self.sandboxed:
            kwargs["kernel_manager_class"] = SandboxedKernelManager
        super().__init__(*args, **kwargs)
        self._guard = "_kdlib_guard_" + secrets.token_hex(8)
        if self.timeout and self.iopub_timeout < self.timeout:
            self.iopub_timeout = int(self.timeout)

    def preprocess(self, nb, resources=None, *args, **kwargs):
        from kdlib.course.needed import cells_to_skip

        self._skip = cells_to_skip(nb.cells, self.released) if self.skip_unneeded else set()
        GuardedExecute.skipped.append(len(self._skip))
        return super().preprocess(nb, resources, *args, **kwargs)

    async def _guard_call(self, expression: str):
        """Evaluate ``expression`` in the kernel through ``user_expressions``; its value, or
        None when it failed."""
        import ast as _ast

        msg_id = self.kc.execute(
            "", silent=True, store_history=False, user_expressions={"r": expression}
        )
        reply = await self.async_wait_for_reply(msg_id)
        if reply is None:
            return None
        result = reply["content"].get("user_expressions", {}).get("r", {})
        if result.get("status") != "ok":
            return None
        try:
            return _ast.literal_eval(result["data"]["text/plain"])
        except (ValueError, SyntaxError, KeyError):
            return None

    async def async_start_new_kernel_client(self):
        kc = await super().async_start_new_kernel_client()
        sources = [c.source for c in self.nb.cells if c.cell_type == "code"]
        setup = guard_setup_code(self._guard, modules_mentioned(sources))
        msg_id = kc.execute(setup, silent=True, store_history=False)
        reply = await self.async_wait_for_reply(msg_id)
        if reply is None or reply["content"].get("status") != "ok":
            GuardedExecute.tampering.append("setup: the guard could not be installed")
        return kc

    async def async_execute_cell(self, cell, cell_index, execution_count=None, store_history=True):
        if cell_index in getattr(self, "_skip", ()):
            from nbformat.v4 import new_output

            from kdlib.course.needed import SKIPPED_NOTE

            cell.outputs = [new_output("stream", name="stdout", text=SKIPPED_NOTE)]
            cell.execution_count = None
            return cell
        locked = cell.cell_type == "code" and is_locked(cell) and cell.source.strip()
        name = _nbgrader_meta(cell).get("grade_id") or f"cell {cell_index + 1}"
        if locked:
            done = await self._guard_call(f"{self._guard}.restore()")
            if done is None:
                GuardedExecute.tampering.append(f"{name}: the guard was removed or broken")
            elif done:
                GuardedExecute.tampering.append(
                    f"{name}: put back {', '.join(done[:12])}" + (" ..." if len(done) > 12 else "")
                )
        cell = await super().async_execute_cell(cell, cell_index, execution_count, store_history)
        if locked:
            hidden = HIDDEN_BEGIN if HIDDEN_BEGIN in cell.source else ""
            await self._guard_call(f"{self._guard}.record({hidden!r})")
        return cell

    # nbclient binds its synchronous entry points to its own coroutines: bind them to ours
    if _Execute is not object:
        from nbclient.util import run_sync

        start_new_kernel_client = run_sync(async_start_new_kernel_client)
        execute_cell = run_sync(async_execute_cell)


# --------------------------------------------------------------------------- static scan

_PATCHED_ROOTS = {
    "builtins",
    "__builtins__",
    "torch",
    "np",
    "numpy",
    "IPython",
    "sys",
    "math",
    "kdlib",
    "F",
    "nn",
    "get_ipython",
    "operator",
    "functools",
    "types",
}
_REACH = {  # pattern -> why
    r"\binput_transformers\w*|\bast_transformers\b|\binput_transformer_manager\b": (
        "installs IPython input/AST transformers"
    ),
    r"\bset_custom_exc\b|\bCustomTB\b|\bshowtraceback\b": "replaces IPython's exception handling",
    r"\bevents\.register\b|\bregister_magic\w*\b": "hooks into IPython's events or magics",
    r"\bsys\.(settrace|setprofile|modules|_getframe|meta_path|path_hooks)\b": (
        "reaches into the interpreter (sys)"
    ),
    r"\b(gc\.get_objects|gc\.get_referrers|ctypes|__code__|__globals__|f_locals|f_globals)\b": (
        "reaches into the interpreter (frames, code objects, memory)"
    ),
    r"\b_ih\b|\b_i\d+\b|\bIn\s*\[|\blinecache\b|\bhistory_manager\b": (
        "reads the kernel's input history"
    ),
    r"\bsubprocess\b|\bos\.(system|popen|fork|exec\w*|spawn\w*|kill|setsid|killpg)\b|"
    r"^\s*[!%]": "starts processes or shell commands",
    r"\bsocket\b|\burllib\b|\brequests\b|\bhttp\.client\b": "uses the network",
    r"\bos\.environ\b|\bgetenv\b|/proc/": "reads the environment or /proc",
    r"\b(os\.(remove|unlink|rmdir|rename|replace|chdir|chmod)|shutil\.\w+)\b|\.unlink\(|"
    r"\bsqlite3\b": "deletes, moves or opens files or databases",
    r"\bspiral_test\b": "draws the capstone's hidden test split (kdlib.tasks.spiral_test)",
}
# Patterns that flag only one answer cell (by grade_id): elsewhere the same code is fair use.
_REACH_IN_ANSWER = {
    "design_answer": {  # notebook 12: the setting is chosen on the validation split alone
        r"\bload_dataset\b|\.test\b|\bspiral_test\b": (
            "looks at a test split while choosing the setting (only validation data may choose it)"
        ),
    },
}


def _literal_paths(tree) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            v = node.value
            if re.match(r"^(/|~|\.\./|\.\.$)", v) or "/../" in v or "gradebook" in v:
                found.append(v[:60])
    return found


def _patch_targets(tree) -> list[str]:
    """Attributes of guarded roots assigned to (``torch.allclose = ...``, ``setattr(np, ...)``)."""
    found = []

    def root(node):
        while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
            node = node.value if not isinstance(node, ast.Call) else node.func
        return node.id if isinstance(node, ast.Name) else None

    for node in ast.walk(tree):
        targets = []
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
        for t in targets:
            if isinstance(t, (ast.Attribute, ast.Subscript)) and root(t) in _PATCHED_ROOTS:
                found.append(ast.unparse(t)[:60])
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("setattr", "delattr")
            and node.args
            and root(node.args[0]) in _PATCHED_ROOTS | {None}
        ):
            found.append(ast.unparse(node)[:60])
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            if any(n in ("builtins", "ctypes", "gc") for n in names):
                found.append(f"import {', '.join(a.name for a in node.names)}")
    return found


_SCOPES = (
    ast.FunctionDef,
    ast.AsyncFunctionDef,
    ast.ClassDef,
    ast.Lambda,
    ast.ListComp,
    ast.SetComp,
    ast.DictComp,
    ast.GeneratorExp,
)


def _bound_names(tree, imports: bool = True, assignments: bool = True) -> set[str]:
    """Names a cell binds in the notebook's namespace: its top-level imports (when
    ``imports``), functions, classes and assignments (when ``assignments``), and the names it
    declares ``global``; not the local names of the functions and classes it defines (a
    method's ``__init__``)."""
    names = set()

    def visit(node):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)) and imports:
            names.update((a.asname or a.name).split(".")[0] for a in node.names if a.name != "*")
        elif (
            isinstance(node, ast.Name)
            and isinstance(node.ctx, (ast.Store, ast.Del))
            and assignments
        ):
            names.add(node.id)
        if not isinstance(node, _SCOPES):
            for child in ast.iter_child_nodes(node):
                visit(child)

    visit(tree)
    if assignments:
        for node in ast.walk(tree):  # `global x` inside a function rebinds the notebook's x
            if isinstance(node, ast.Global):
                names.update(node.names)
    return names


def scan_cells(nb, released=()) -> list[str]:
    """Reasons to look at a submission by hand, one per student cell that does something a
    notebook answer has no need to (see ``_REACH``), or that rebinds a name a locked cell bound
    to a function, class or module (a checking function of the tests). A cell whose source is
    that of a code cell of the release (``released``: the sources, stripped) is the course's
    own code and is not scanned."""
    released = {text.strip() for text in released}
    locked_names: set[str] = set()
    reasons = []
    for index, cell in enumerate(nb.cells, start=1):
        if cell.get("cell_type") != "code":
            continue
        source = cell.get("source", "")
        tree = parse_cell(source)
        name = _nbgrader_meta(cell).get("grade_id") or f"cell {index}"
        if is_locked(cell):
            if tree is not None:  # what the guard rebinds: functions, classes, modules
                locked_names |= _bound_names(tree, assignments=False)
            continue
        if source.strip() in released:
            continue  # the course's own code, as released
        reach = {**_REACH, **_REACH_IN_ANSWER.get(name, {})}
        why = [w for pattern, w in reach.items() if re.search(pattern, source, re.M)]
        if tree is not None:
            patched = _patch_targets(tree)
            if patched:
                why.append(f"patches {', '.join(dict.fromkeys(patched))}")
            paths = _literal_paths(tree)
            if paths:
                why.append(f"names paths outside its folder ({', '.join(paths[:3])})")
            rebound = sorted(_bound_names(tree, imports=False) & locked_names)
            if rebound:
                why.append(f"rebinds {', '.join(rebound)} (bound by a locked cell)")
        elif re.search(r"\b(torch|np|numpy|builtins)\.\w+\s*=[^=]", source):
            why.append("patches a library (cell does not parse)")
        if why:
            reasons.append(f"{name}: {'; '.join(dict.fromkeys(why))}")
    return reasons


# --------------------------------------------------------------------------- feedback

_SAFE_TAGS = {
    "a",
    "abbr",
    "b",
    "blockquote",
    "br",
    "code",
    "del",
    "details",
    "div",
    "em",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "hr",
    "i",
    "img",
    "kbd",
    "li",
    "ol",
    "p",
    "pre",
    "s",
    "span",
    "strong",
    "sub",
    "summary",
    "sup",
    "table",
    "tbody",
    "td",
    "th",
    "thead",
    "tr",
    "u",
    "ul",
}
_SAFE_ATTRS = {
    "a": ["href", "title"],
    "img": ["src", "alt", "title", "width", "height"],
    "td": ["align"],
    "th": ["align"],
    "span": ["class"],
    "div": ["class"],
}
_BAD_SCHEME = re.compile(
    r"(?i)(j\W*a\W*v\W*a\W*s\W*c\W*r\W*i\W*p\W*t|v\W*b\W*s\W*c\W*r\W*i\W*p\W*t"
    r"|d\W*a\W*t\W*a)\s*:"
)


def clean_markdown(source: str) -> str:
    """Markdown with its raw HTML reduced to harmless tags (no script, iframe, style, event
    handler) and no ``javascript:``/``vbscript:``/``data:`` link left."""
    import bleach

    text = html.unescape(source) if "&" in source else source
    text = _BAD_SCHEME.sub("blocked:", text)
    text = bleach.clean(
        text,
        tags=_SAFE_TAGS,
        attributes=_SAFE_ATTRS,
        protocols=["http", "https", "mailto"],
        strip=True,
        strip_comments=True,
    )
    return _BAD_SCHEME.sub("blocked:", text)


def hide_hidden_tests(source: str) -> tuple[str, list[str]]:
    """``source`` with each hidden-test block replaced by :data:`HIDDEN_NOTICE`; also returns
    the hidden lines (stripped), to remove them from outputs."""
    out, hidden, inside = [], [], False
    for line in source.splitlines():
        if line.strip() == HIDDEN_BEGIN:
            inside = True
            out.append(line[: len(line) - len(line.lstrip())] + HIDDEN_NOTICE)
        elif line.strip() == HIDDEN_END and inside:
            inside = False
        elif inside:
            if line.strip():
                hidden.append(line.strip())
        else:
            out.append(line)
    return "\n".join(out), hidden


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _scrub(value, hidden: list[str]):
    if isinstance(value, str):
        if "\x1b" in value and any(line in _ANSI.sub("", value) for line in hidden):
            value = _ANSI.sub("", value)  # colours would split the quoted line
        for line in hidden:
            if line in value:
                value = value.replace(line, "[hidden test]")
        return value
    if isinstance(value, list):
        return [_scrub(v, hidden) for v in value]
    if isinstance(value, dict):
        return {k: _scrub(v, hidden) for k, v in value.items()}
    return value


try:
    from nbconvert.preprocessors import Preprocessor as _Preprocessor
    from traitlets import Bool
except ImportError:  # pragma: no cover
    _Preprocessor, Bool = object, lambda value: value


class FeedbackSafety(_Preprocessor):
    """Feedback preprocessor: hidden tests out (source and any output quoting them), markdown
    cleaned (see :func:`clean_markdown`)."""

    enabled = Bool(True)

    def preprocess(self, nb, resources):
        hidden = []
        for cell in nb.cells:
            if cell.cell_type == "code" and HIDDEN_BEGIN in cell.source:
                cell.source, lines = hide_hidden_tests(cell.source)
                hidden += lines
        hidden = sorted({h for h in hidden if len(h) >= 6}, key=len, reverse=True)
        for cell in nb.cells:
            if cell.cell_type == "markdown":
                cell.source = clean_markdown(cell.source)
            elif cell.cell_type == "code" and hidden:
                cell.source = _scrub(cell.source, hidden) if not is_locked(cell) else cell.source
                cell.outputs = [_as_node(_scrub(dict(o), hidden)) for o in cell.get("outputs", [])]
        return nb, resources


def _as_node(d):
    from nbformat import from_dict

    return from_dict(d)
