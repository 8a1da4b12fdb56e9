"""The set-up files agree with each other and with the README."""

import re
from pathlib import Path

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent
CONDA_NAMES = {"pytorch": "torch"}  # conda-forge name -> PyPI name


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower()


def _spec(requirement: str) -> str:
    """The version range, without extras (conda-forge packages have none)."""
    rest = requirement.strip()[len(_name(requirement)) :].replace(" ", "")
    return re.sub(r"^\[[^\]]*\]", "", rest)


def _pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for items in project["optional-dependencies"].values():
        reqs += [r for r in items if not r.startswith("kdlib")]
    return {_name(r): _spec(r) for r in reqs}


def _environment():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    packages = {}
    for dep in env["dependencies"]:
        if isinstance(dep, str) and _name(dep) not in ("python", "pip"):
            name = CONDA_NAMES.get(_name(dep), _name(dep))
            packages[name] = _spec(dep)
    return env, packages


def test_environment_and_pyproject_name_the_same_packages_and_ranges():
    env, packages = _environment()
    assert packages == _pyproject()
    assert "conda-forge" in env["channels"]
    assert any(str(d).startswith("python=3.11") for d in env["dependencies"])


def test_torch_range_is_declared_not_pinned():
    deps = _pyproject()
    assert deps["torch"] == ">=2.4" and deps["torchvision"] == ">=0.19"


def test_ci_runs_the_readme_commands():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    for command in ('python -m pip install -e ".[dev]"', "python -m pytest"):
        assert command in readme and command in ci
