"""A fork's CI and a contributor's checks: the GitHub workflows are valid, `.ci/run` lints with
the ruff that pre-commit runs, and pre-commit checks what the tests would otherwise catch late."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
yaml = pytest.importorskip("yaml", reason="needs PyYAML (installed with the course extra)")


def _check_jsonschema(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("needs check-jsonschema (in the dev extra): pip install -e '.[dev]'")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)


def test_workflows_are_valid_github_actions_workflows():
    assert {p.name for p in WORKFLOWS} == {"ci.yml", "gpu.yml", "site.yml"}
    for schema in ("vendor.github-workflows", "custom.github-workflows-require-timeout"):
        done = _check_jsonschema("--builtin-schema", schema, *map(str, WORKFLOWS))
        assert done.returncode == 0, done.stdout + done.stderr


def test_the_workflow_check_catches_a_broken_workflow(tmp_path):
    text = (ROOT / ".github/workflows/ci.yml").read_text()
    broken = tmp_path / "broken.yml"
    broken.write_text(text.replace("runs-on: ubuntu-24.04", "runs_on: ubuntu-24.04"))
    done = _check_jsonschema("--builtin-schema", "vendor.github-workflows", str(broken))
    assert done.returncode != 0


def _steps(workflow: Path) -> list[str]:
    data = yaml.safe_load(workflow.read_text())
    return [
        step.get("run", "") or step.get("uses", "")
        for job in data["jobs"].values()
        for step in job.get("steps", [])
    ]


def test_ci_runs_ci_run_gpu_is_manual_site_builds_and_publishes():
    ci = _steps(ROOT / ".github/workflows/ci.yml")
    assert any(s.strip() == "bash .ci/run" for s in ci)
    gpu = yaml.safe_load((ROOT / ".github/workflows/gpu.yml").read_text())
    triggers = gpu.get("on", gpu.get(True))  # YAML 1.1 reads a bare `on` as true
    assert set(triggers) == {"workflow_dispatch"}
    assert "gpu" in gpu["jobs"]["gpu"]["runs-on"]
    assert any("--device cuda" in s for s in _steps(ROOT / ".github/workflows/gpu.yml"))
    site = _steps(ROOT / ".github/workflows/site.yml")
    assert any("kdlib course site" in s for s in site)
    assert any(s.startswith("actions/deploy-pages") for s in site)


def test_ci_run_lints_with_the_pinned_ruff_before_the_tests():
    script = (ROOT / ".ci/run").read_text()
    lint = [script.index("ruff check ."), script.index("ruff format --check .")]
    assert max(lint) < script.rindex("python -m pytest")
    pinned = re.search(r'"ruff==([\d.]+)"', (ROOT / "pyproject.toml").read_text())
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    ruff = next(r for r in config["repos"] if "ruff-pre-commit" in r["repo"])
    assert pinned and ruff["rev"] == f"v{pinned.group(1)}"
    assert {h["id"] for h in ruff["hooks"]} == {"ruff", "ruff-format"}


def test_pre_commit_checks_outputs_and_the_release():
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    local = [h for r in config["repos"] if r["repo"] == "local" for h in r["hooks"]]
    release = next(h for h in local if h["id"] == "kdlib-release-check")
    assert release["entry"] == "kdlib release --check" and release["pass_filenames"] is False
    assert re.search(release["files"], "solutions/01_intuition/01_intuition.ipynb")
    assert re.search(release["files"], "notebooks/01_intuition/01_intuition.ipynb")
