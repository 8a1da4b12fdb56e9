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
