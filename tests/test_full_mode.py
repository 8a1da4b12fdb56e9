"""Full-mode records cannot go stale: every notebook has one, made from the cells it has now.

``kdlib course run --full --record`` stores each notebook's full-mode results in
``data/full_mode/`` stamped with the digest of the notebook's cells (``kdlib.course.records``).
The first test fails as soon as a solution notebook is edited without its record being made
again; the others run the command on a tiny notebook in a temporary course.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from kdlib.course import records
from kdlib.course.cli import main as kdlib_main
from kdlib.course.results import load_full_mode

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = sorted((ROOT / "solutions").glob("[0-9][0-9]_*/[0-9][0-9]_*.ipynb"))


def test_every_notebook_has_a_record_of_its_current_cells():
    stale = records.stale_records(SOLUTIONS, ROOT / "data" / "full_mode")
    assert not stale, (
        "full-mode records missing or older than their notebook (run "
        "`kdlib course run --full --record --only NN` and commit data/full_mode/): "
        + "; ".join(f"{name}: {why}" for name, why in stale.items())
    )


def test_records_say_where_they_came_from():
    for path in SOLUTIONS:
        record = load_full_mode(path.stem, ROOT / "data" / "full_mode")
        if record is None:
            continue  # reported by the test above
        assert record["notebook"] == path.stem
        assert record["command"].startswith("kdlib course run --full --record")
        assert len(record["kdlib_digest"]) == 64 and record["machine"] and record["date"]
        assert all(claim["holds"] for claim in record.get("claims", [])), (
            f"{path.stem}: a claim does not hold in full mode: the text must not state it"
        )


def _tiny_course(root: Path) -> Path:
    """``root/solutions/01_tiny/01_tiny.ipynb``: a parameters cell and save_results."""
    params = nbformat.v4.new_code_cell(
        'import os\nseed = 0\nfast = True\nresults_dir = None\ndevice = "auto"\n'
        'dataset = "digits"\nepochs = None\nn_seeds = None'
    )
    params.metadata["tags"] = ["parameters"]
    cells = [
        nbformat.v4.new_markdown_cell("# tiny"),
        params,
        nbformat.v4.new_code_cell(
            "import kdlib.course.results as r\n"
            "r.save_results('01_tiny', {'answer': 42, 'fast': fast}, results_dir)"
        ),
    ]
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    path = root / "solutions" / "01_tiny" / "01_tiny.ipynb"
    path.parent.mkdir(parents=True)
    nbformat.write(nb, str(path))
    return path


@pytest.mark.notebooks
def test_record_command_stores_stamped_records(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("KDLIB_FULL_MODE", raising=False)
    notebook = _tiny_course(tmp_path)
    folder = tmp_path / "data" / "full_mode"
    assert records.stale_records([notebook]) == {"01_tiny": f"no full-mode record in {folder}"}
    argv = ["course", "run", "--full", "--record", "--source", str(tmp_path / "solutions")]
    status = kdlib_main([*argv, "--out", str(tmp_path / "out"), "--no-html", "--no-progress"])
    assert status == 0, capsys.readouterr()
    record = json.loads((folder / "01_tiny.json").read_text())
    assert record["figures"] == {"answer": 42, "fast": False}  # it ran in full mode
    assert record["notebook_digest"] == records.notebook_digest(notebook)
    assert record["kdlib_digest"] == records.library_digest()
    assert record["command"] == "kdlib course run --full --record"
    assert record["seconds"] > 0
    assert records.stale_records([notebook]) == {}

    # outputs and metadata do not make a record stale; an edited cell does
    nb = nbformat.read(str(notebook), as_version=4)
    nb.cells[2].outputs = [nbformat.v4.new_output("stream", text="42\n")]
    nb.cells[2].metadata["collapsed"] = True
    nbformat.write(nb, str(notebook))
    assert records.stale_records([notebook]) == {}
    nb.cells[2].source = nb.cells[2].source.replace("42", "43")
    nbformat.write(nb, str(notebook))
    assert records.stale_records([notebook]) == {
        "01_tiny": "the notebook changed since its record was made"
    }


@pytest.mark.parametrize(
    "flags, message",
    [
        ([], "add --full"),
        (["--full", "--seed", "1"], "without --seed"),
        (["--full", "--n-seeds", "2"], "without --n-seeds"),
        (["--full", "-p", "scale=2"], "without -p scale"),
    ],
)
def test_record_refuses_other_settings(tmp_path, capsys, flags, message):
    notebook = _tiny_course(tmp_path)
    argv = ["course", "run", "--record", *flags, "--source", str(notebook.parent.parent)]
    assert kdlib_main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "--record" in err and message in err
    assert not (tmp_path / "data").exists() and not (tmp_path / "out").exists()


def test_store_refuses_the_results_of_another_notebook(tmp_path):
    notebook = _tiny_course(tmp_path)
    results = tmp_path / "other.json"
    results.write_text(json.dumps({"notebook": "02_other", "figures": {}, "claims": []}))
    with pytest.raises(ValueError, match="results_file is the results of '02_other'"):
        records.store_full_mode(results, notebook, "kdlib course run --full --record")
