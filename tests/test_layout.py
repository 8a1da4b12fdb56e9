"""The two halves of kdlib: the library (needs PyTorch only) and the course machinery
(``kdlib.course``, the ``course`` extra).

- every library module imports in a fresh interpreter without loading any course package, and
  none of them imports ``kdlib.course``;
- a virtual environment that has only what ``pip install .`` asks for (no extra) installs kdlib,
  runs a distillation on the embedded digits, and ``kdlib course run`` there says which extra to
  install instead of failing with a traceback.
"""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import os
import re
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import pytest

from kdlib.course.cli import COURSE_PACKAGES

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = sorted(
    p.stem for p in (ROOT / "kdlib").glob("*.py") if p.stem not in ("__init__", "__main__")
)
# what the machinery needs and the library must never load
COURSE_MODULES = ("nbgrader", "papermill", "nbconvert", "nbclient", "jupyter_client", "nbformat")


def test_the_library_and_the_machinery_are_separate_folders():
    machinery = sorted(p.stem for p in (ROOT / "kdlib" / "course").glob("*.py"))
    assert {"run", "report", "results", "grade", "release", "cli"} <= set(machinery)
    assert not {"course", "grading", "release", "report", "cli"} & set(LIBRARY), LIBRARY
    assert {"losses", "distill", "data", "models", "features"} <= set(LIBRARY)


@pytest.mark.parametrize("module", LIBRARY)
def test_no_library_module_imports_the_course_machinery(module):
    tree = ast.parse((ROOT / "kdlib" / f"{module}.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
            imported |= {f"{node.module}.{alias.name}" for alias in node.names}
    bad = sorted(
        n
        for n in imported
        if n.startswith("kdlib.course") or n == "kdlib.course" or n.split(".")[0] in COURSE_MODULES
    )
    assert not bad, f"kdlib.{module} imports {bad}"


def test_importing_every_library_module_loads_no_course_package():
    code = textwrap.dedent(
        f"""
        import importlib, sys
        for name in {LIBRARY!r}:
            importlib.import_module("kdlib." + name)
        loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set({COURSE_MODULES!r}))
        course = sorted(m for m in sys.modules if m.startswith("kdlib.course"))
        print(loaded, course)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[] []", out.stdout + out.stderr


def test_the_course_extra_holds_the_machinery_and_the_base_install_does_not():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = {_name(r) for r in project["dependencies"]}
    course = {_name(r) for r in project["optional-dependencies"]["course"]}
    assert base == {"torch", "torchvision", "numpy", "matplotlib", "scikit-learn", "tqdm"}
    assert {"nbgrader", "papermill", "nbconvert", "jupyterlab"} <= course
    assert not base & course


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower()


def _closure(requirements: list[str]) -> set[str]:
    """The installed distributions that ``requirements`` need, transitively (with the extras
    each requirement asks of its dependency, and no others)."""
    from packaging.requirements import Requirement

    seen: set[tuple[str, str]] = set()
    todo = [(r, "") for r in requirements]  # (requirement, the extra it came from)
    while todo:
        text, extra = todo.pop()
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        name = req.name.lower().replace("_", "-")
        for wanted in ("", *sorted(req.extras)):
            if (name, wanted) not in seen:
                seen.add((name, wanted))
                todo += [(r, wanted) for r in metadata.distribution(name).requires or []]
    return {name for name, _ in seen}


def _link_distributions(names: set[str], target: Path) -> None:
    """Symlink the files of the installed distributions ``names`` into ``target`` (a folder
    that a .pth file then puts on the new environment's path): that environment sees those
    distributions and nothing else of this one."""
    target.mkdir()
    for name in sorted(names):
        dist = metadata.distribution(name)
        base = Path(dist.locate_file(""))
        for top in {Path(str(f)).parts[0] for f in dist.files or []}:
            src = base / top
            if top in ("..", "__pycache__") or not src.exists() or (target / top).exists():
                continue
            (target / top).symlink_to(src)


@pytest.mark.slow
def test_a_base_install_runs_the_library_and_names_the_extra_for_the_course(tmp_path):
    pytest.importorskip("packaging")
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    needed = _closure(project["dependencies"] + ["setuptools>=64"])
    assert not needed & {n.replace("_", "-") for n in COURSE_PACKAGES}, needed
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    # the venv's own setuptools (ensurepip's) would shadow the linked one
    subprocess.run(
        [python, "-m", "pip", "uninstall", "-y", "-q", "setuptools"],
        capture_output=True,
        check=False,
    )
    _link_distributions(needed, tmp_path / "deps")
    (site / "zz_kdlib_test_deps.pth").write_text(str(tmp_path / "deps") + "\n")

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PIP_NO_INDEX"] = "1"  # nothing may come from outside: the library's needs are here
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    # a copy of the package without build outputs, so the install is of what git tracks
    install = subprocess.run(
        [python, "-m", "pip", "install", "--no-build-isolation", "-q", str(ROOT)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert install.returncode == 0, install.stdout + install.stderr

    run = subprocess.run(
        [
            python,
            "-c",
            textwrap.dedent("""
        import sys, torch
        torch.set_num_threads(1)
        import kdlib
        assert "site-packages" in kdlib.__file__, kdlib.__file__
        from kdlib import data, models
        from kdlib.distill import Distiller, train_supervised
        from kdlib.runtime import seed_everything
        seed_everything(0)
        digits = data.load_digits()
        teacher = models.SmallCNN(width=8)
        train_supervised(teacher, digits.train.loader(64, shuffle=True), epochs=2, lr=3e-3,
                         progress=False)
        student = models.MLP(64, (16,), 10)
        history = Distiller(student, teacher, lr=3e-3, progress=False).fit(
            digits.train.loader(64, shuffle=True), epochs=2, val_loader=digits.val)
        assert history[-1]["val_accuracy"] > 0.3, history[-1]
        missing = [m for m in ("nbgrader", "papermill", "nbconvert", "jupyter_client")
                   if m in sys.modules]
        assert not missing, missing
        print("distilled", round(history[-1]["val_accuracy"], 3))
        """),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert run.returncode == 0 and "distilled" in run.stdout, run.stdout + run.stderr

    kdlib_cmd = env_dir / "bin" / "kdlib"
    course = subprocess.run(
        [kdlib_cmd, "course", "run"], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert course.returncode == 2
    assert "kdlib[course]" in course.stderr and "Traceback" not in course.stderr, course.stderr
    device = subprocess.run(
        [kdlib_cmd, "device"], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert device.returncode == 0 and "kdlib uses cpu" in device.stdout, device.stderr


# ------------------------------------------------------------------ how the modules import


def _kdlib_modules() -> dict[str, Path]:
    """Every module of the kdlib package, by dotted name (``kdlib.course.run``, ...)."""
    out = {}
    for path in sorted((ROOT / "kdlib").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(modules: dict[str, Path]):
    """``(edges, private)``: ``edges[a]``, the kdlib modules ``a`` imports (at any depth of its
    code: a lazy import inside a function is an import too); ``private``, every
    ``(importer, "module.name")`` for a ``_name`` taken from another module."""
    edges: dict[str, set[str]] = {name: set() for name in modules}
    private = []
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges[name] |= {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package
                    base = ".".join(
                        package.split(".")[: len(package.split(".")) - node.level + 1]
                        + ([base] if base else [])
                    )
                if base not in modules:
                    continue
                for alias in node.names:
                    if f"{base}.{alias.name}" in modules:  # a submodule
                        edges[name].add(f"{base}.{alias.name}")
                        continue
                    edges[name].add(base)
                    is_dunder = alias.name.startswith("__") and alias.name.endswith("__")
                    if alias.name.startswith("_") and not is_dunder and base != name:
                        private.append((name, f"{base}.{alias.name}"))
    for name in edges:  # a module's own package is not a dependency of it
        edges[name] = {m for m in edges[name] if m != name and not name.startswith(m + ".")}
    return edges, private


def _circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_module_of_kdlib_imports_another_in_a_circle():
    edges, _ = _imports(_kdlib_modules())
    assert {"kdlib.runtime", "kdlib.distill", "kdlib.metrics"} <= set(edges)
    assert "kdlib.runtime" in edges["kdlib.distill"]  # the graph does see imports
    circles = _circles(edges)
    assert not circles, f"modules importing each other (directly or through others): {circles}"


def test_no_module_of_kdlib_imports_a_private_name_of_another():
    _, private = _imports(_kdlib_modules())
    assert not private, (
        f"private names imported across modules (make them public or move them): {private}"
    )


def test_the_import_checks_can_fail():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _circles(edges) == [["a", "b", "c"]]
    modules = {"kdlib.x": ROOT / "kdlib" / "losses.py", "kdlib.y": ROOT / "kdlib" / "metrics.py"}
    assert _circles({"kdlib.x": {"kdlib.y"}, "kdlib.y": set()}) == []
    assert _imports(modules)[1] == []
