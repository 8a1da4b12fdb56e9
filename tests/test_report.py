"""The course report reads offline: local MathJax, no CDN, alt text on every image."""

import base64
import re

import nbformat
import pytest

from kdlib.course.report import figure_titles, render_notebook_html

pytest.importorskip("jupyter_server_mathjax", reason="installed with the course extra")

# a 1x1 PNG
PIXEL = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
        "0000000d4944415478da63f8cfc0f01f0005000201a3e2b1f20000000049454e44ae426082"
    )
).decode()


def _executed_notebook(path):
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_markdown_cell("The loss $$\\mathcal{L} = \\tau^2 KL$$, $x$."))
    code = nbformat.v4.new_code_cell('ax.set_title(f"Born-again on {name}")\nplt.show()')
    code.outputs = [
        nbformat.v4.new_output("display_data", data={"image/png": PIXEL, "text/plain": "<Figure>"})
    ]
    nb.cells.append(code)
    nbformat.write(nb, str(path))
    return path


def test_rendered_notebook_uses_local_mathjax_and_no_cdn(tmp_path):
    page = render_notebook_html(_executed_notebook(tmp_path / "07_x.ipynb"))
    text = page.read_text(encoding="utf-8")
    remote = re.findall(r'<(?:script|link)[^>]+(?:src|href)="((?:https?:)?//[^"]+)"', text)
    assert remote == [], f"the page loads from the network: {remote}"
    assert "cdnjs" not in text and "cdn.jsdelivr" not in text
    scripts = re.findall(r'<script[^>]+src="([^"]+)"', text)
    mathjax = [s for s in scripts if "MathJax.js" in s]
    assert mathjax, "MathJax is loaded"
    local = tmp_path / mathjax[0].split("?")[0]
    assert local.is_file(), f"{local} must exist next to the page"
    config = mathjax[0].split("config=")[1].split(",")[0]
    assert (tmp_path / "mathjax" / "config" / f"{config}.js").is_file(), "the MathJax config"
    assert (tmp_path / "mathjax" / "jax" / "input" / "TeX").is_dir()
    assert (tmp_path / "mathjax" / "fonts").is_dir()


def test_images_get_alt_text_from_figure_titles(tmp_path):
    text = render_notebook_html(_executed_notebook(tmp_path / "nb.ipynb")).read_text()
    alts = re.findall(r'<img[^>]*alt="([^"]*)"', text)
    assert alts == ["Figure: Born-again on …"]


def test_figure_titles_reads_calls_and_keywords():
    source = (
        'fig.suptitle("Requires a strong teacher")\n'
        'ax.set_title(f"{n} seeds, width {w}")\n'
        'show_matrices(panels, title="Relations")\n'
    )
    assert figure_titles(source) == ["Requires a strong teacher", "… seeds, width …", "Relations"]


def _run_with_claims(tmp_path):
    from kdlib.course import run as course
    from kdlib.course.results import Claims, load_claims, save_results
    from kdlib.stats import paired_difference

    claims = Claims("03_x")
    claims.record(
        "kd_gain",
        "KD beats labels only",
        paired_difference([0.95, 0.96, 0.97], [0.90, 0.92, 0.91], ("KD", "labels only")),
        "greater",
    )
    claims.record(
        "no_gain",
        "the two <agree>",
        paired_difference([0.95, 0.96, 0.97], [0.90, 0.92, 0.91], ("A", "B")),
        "no-difference",
    )
    path = save_results("03_x", {"acc": 0.9, "long_list": list(range(50))}, tmp_path, claims)
    stored = load_claims(path)
    assert [c["id"] for c in stored] == ["kd_gain", "no_gain"]
    assert [c["holds"] for c in stored] == [True, False]
    nb_path = _executed_notebook(tmp_path / "03_x.ipynb")
    nb = nbformat.read(str(nb_path), as_version=4)
    key = nbformat.v4.new_code_cell('ax.set_title("The key one")')
    key.metadata["tags"] = ["key-figure"]
    other = base64.b64encode(base64.b64decode(PIXEL) + b"\0").decode()  # another image
    key.outputs = [nbformat.v4.new_output("display_data", data={"image/png": other})]
    nb.cells.append(key)
    nbformat.write(nb, str(nb_path))
    result = course.NotebookResult(
        name="03_x",
        source="x",
        status="ok",
        seconds=2.0,
        figures={"acc": 0.9},
        claims=stored,
        output="03_x.ipynb",
    )
    return course.CourseRun(out=str(tmp_path), options={}, notebooks=[result])


def test_index_opens_with_the_scoreboard_and_collapses_the_figures(tmp_path):
    from kdlib.course.report import render_index

    page = render_index(_run_with_claims(tmp_path))
    board = page.index('id="scoreboard"')
    assert board < page.index("<details>")
    assert "1 of 2 claims hold" in page
    assert "KD beats labels only by 5.0 points" in page and "the two &lt;agree&gt;" in page
    assert page.count('class="holds"') == 1 and page.count('class="fails"') == 1
    # the key figure is shown open, before the collapsed details; the other image inside them
    key = page.index('class="key" alt="Figure: The key one"')
    details = page.index("<details>")
    assert key < details < page.index("acc=0.9") < page.index("</details>")
    assert page.index('alt="Figure: Born-again on …"') > details


def test_claims_are_refused_by_name():
    from kdlib.course.results import Claims
    from kdlib.stats import paired_difference

    claims = Claims("nb")
    c = paired_difference([1, 2, 3], [0, 1, 1])
    with pytest.raises(ValueError, match="expected must be"):
        claims.record("x", "t", c, "bigger")
    with pytest.raises(ValueError, match="id must be"):
        claims.record("not an id", "t", c, "greater")
    claims.record("x", "t", c, "greater")
    with pytest.raises(ValueError, match="recorded twice"):
        claims.record("x", "t", c, "greater")
