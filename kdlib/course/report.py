"""The course report: ``results.json`` and a self-contained ``index.html`` for a course run.

:func:`write_report` is called by :func:`kdlib.course.run.run_course` after every notebook, so an
interrupted run still leaves a report. ``index.html`` opens with the scoreboard (one row per
claim the notebooks recorded with :class:`kdlib.course.results.Claims`: notebook, claim,
estimate with its 95% interval, holds or not), then the run's status table, then one section
per notebook with its key figure (the image of the cell tagged ``key-figure``, else its first
image); the headline figures, the parameters and the other images are in a collapsed
``<details>`` block per notebook. It links to each executed notebook rendered by nbconvert
(:func:`render_notebook_html`). Everything works offline: formulas are typeset by the MathJax
copy that the course extra installs (``jupyter-server-mathjax``), copied next to the pages and
referenced relatively; no page loads anything from a CDN. Every image has alt text made from
the figure titles in the code that drew it.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import threading
from pathlib import Path

__all__ = [
    "figure_titles",
    "format_figures",
    "render_index",
    "render_scoreboard",
    "render_notebook_html",
    "write_report",
]

#: the folder, next to the rendered pages, that holds the local copy of MathJax
MATHJAX_DIR = "mathjax"
_MATHJAX_CONFIG = "MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe"  # what the package ships
_TITLE_CALL = re.compile(
    r"(?:(?:suptitle|set_title|title)\(\s*|\btitle\s*=\s*)"  # a title call or keyword
    r"""(f?)("([^"\\]|\\.)*"|'([^'\\]|\\.)*')"""  # then a string literal, maybe an f-string
)


def figure_titles(source: str) -> list[str]:
    """The titles a cell's code gives its figures (``suptitle``, ``set_title``, ``title`` calls
    and ``title=`` arguments), in order; the ``{...}`` fields of an f-string become "…", since
    only the code is known here."""
    titles = []
    for match in _TITLE_CALL.finditer(source):
        text = match.group(2)[1:-1]
        if match.group(1):
            text = re.sub(r"\{[^{}]*\}", "…", text)
        text = text.replace("\\n", " ").strip()
        if text and text not in titles:
            titles.append(text)
    return titles


def _alt_text(source: str, cell_number: int) -> str:
    titles = figure_titles(source)
    if not titles:
        return f"Figure drawn by code cell {cell_number}"
    return "Figure: " + "; ".join(titles)


_MATHJAX_LOCK = threading.Lock()


def _local_mathjax(folder: Path) -> str | None:
    """Copy MathJax (from the ``jupyter-server-mathjax`` package) into ``folder/mathjax`` once;
    returns the relative URL to load it, or ``None`` when the package is not installed."""
    try:
        import jupyter_server_mathjax
    except ImportError:
        return None
    source = Path(jupyter_server_mathjax.__file__).parent / "static"
    target = folder / MATHJAX_DIR
    with _MATHJAX_LOCK:  # notebooks rendered by parallel workers (course run --jobs) share it
        if not (target / "MathJax.js").is_file():
            shutil.copytree(source, target, dirs_exist_ok=True)
    return f"{MATHJAX_DIR}/{_MATHJAX_CONFIG}"


def render_notebook_html(notebook: Path) -> Path:
    """Render an executed notebook to ``<notebook>.html`` next to it, for reading offline.

    MathJax is served from ``mathjax/`` in the same folder (see :func:`_local_mathjax`);
    scripts that would load from a CDN (require.js for widgets, mermaid for diagrams, neither
    used by the course) are dropped; every
    image gets alt text from the figure titles of the cell that drew it (:func:`figure_titles`).
    """
    import nbformat
    from bs4 import BeautifulSoup
    from nbconvert import HTMLExporter

    notebook = Path(notebook)
    nb = nbformat.read(str(notebook), as_version=4)
    alt = {}
    for number, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            for mime in ("image/png", "image/jpeg"):
                data = output.get("data", {}).get(mime)
                if data:
                    alt["".join(data).replace("\n", "")] = _alt_text(cell.source, number)
    exporter = HTMLExporter()
    mathjax_url = _local_mathjax(notebook.parent)
    if mathjax_url:
        exporter.mathjax_url = mathjax_url
    body, _ = exporter.from_notebook_node(nb)
    soup = BeautifulSoup(body, features="html.parser")
    for script in soup.find_all("script"):  # require.js (widgets), mermaid (diagrams): CDN
        remote = script.get("src", "").startswith(("http://", "https://", "//"))
        if remote or "cdnjs.cloudflare.com" in (script.string or ""):
            script.decompose()
    for img in soup.find_all("img"):
        src = img.get("src", "")
        if src.startswith("data:") and "," in src:
            text = alt.get(src.split(",", 1)[1].replace("\n", ""))
            if text:
                img["alt"] = text
    target = notebook.with_suffix(".html")
    target.write_text(str(soup), encoding="utf-8")
    return target


def _format_value(value) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        inner = ", ".join(_format_value(v) for v in value[:4])
        return f"[{inner}{', ...' if len(value) > 4 else ''}]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_format_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def format_figures(figures: dict | None) -> str:
    """``name=value`` pairs, floats to 4 significant digits."""
    if not figures:
        return ""
    return "  ".join(f"{k}={_format_value(v)}" for k, v in figures.items())


def write_report(run) -> None:
    """Write ``results.json`` and ``index.html`` into the output folder of ``run`` (a
    :class:`kdlib.course.run.CourseRun`)."""
    out = Path(run.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(run.to_dict(), indent=2) + "\n")
    (out / "index.html").write_text(render_index(run), encoding="utf-8")


KEY_FIGURE_TAG = "key-figure"


def _images(notebook: Path, limit: int = 40) -> list[tuple[str, str, str, bool]]:
    """``(mime, base64 data, alt text, key)`` of the images a notebook displayed, in order;
    ``key`` is true for those of a cell tagged ``key-figure``."""
    try:
        import nbformat

        nb = nbformat.read(str(notebook), as_version=4)
    except Exception:  # noqa: BLE001
        return []
    images = []
    for number, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            for mime in ("image/png", "image/jpeg"):
                if mime in data:
                    text = _alt_text(cell.get("source", ""), number)
                    key = KEY_FIGURE_TAG in cell.get("metadata", {}).get("tags", [])
                    images.append((mime, "".join(data[mime]).replace("\n", ""), text, key))
                    break
    return images[:limit]


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222;
       padding: 0 1em; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: .3em .6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
.ok, .holds { color: #1a7f37; font-weight: bold; }
.failed, .timeout, .interrupted, .fails { color: #cf222e; font-weight: bold; }
.skipped, .pending, .running { color: #777; }
pre { background: #f6f8fa; padding: .5em; white-space: pre-wrap; margin: .3em 0; }
img { max-width: 100%; border: 1px solid #eee; margin: .3em; }
img.key { max-width: 48em; display: block; }
.warning { color: #9a6700; }
section { margin-top: 2.5em; }
details { margin: .5em 0; }
summary { cursor: pointer; color: #0969da; }
"""


def _interval(claim: dict) -> str:
    unit = claim.get("unit") or ""
    lo, hi = claim.get("ci95", [None, None])
    if lo is None or hi is None or claim.get("estimate") is None:
        return "?"
    return f"{claim['estimate']:+.1f} [{lo:+.1f}, {hi:+.1f}] {unit}".strip()


def _expected(expected) -> str:
    if isinstance(expected, dict):
        return ", ".join(f"{k} {v:g}" for k, v in expected.items())
    return str(expected)


def render_scoreboard(notebooks) -> str:
    """The table of every claim of every notebook (``NotebookResult.claims``), with a count."""
    e = html.escape
    rows, total, held = [], 0, 0
    for nb in notebooks:
        for claim in nb.claims or []:
            total += 1
            ok = bool(claim.get("holds"))
            held += ok
            rows.append(
                f'<tr><td><a href="#nb-{e(nb.name)}">{e(nb.name)}</a></td>'
                f"<td>{e(str(claim.get('text', '')))}<br><small>{e(str(claim.get('verdict', '')))}"
                f"</small></td>"
                f'<td class="num">{e(_interval(claim))}</td>'
                f"<td>{e(_expected(claim.get('expected')))}</td>"
                f'<td class="num">{e(str(claim.get("n_seeds", "")))}</td>'
                f'<td class="{"holds" if ok else "fails"}">{"holds" if ok else "FAILS"}</td></tr>'
            )
    if not rows:
        return "<p>No notebook recorded a claim in this run.</p>"
    return (
        f"<p><strong>{held} of {total} claims hold.</strong> Each is a sentence of a notebook "
        f"backed by a measurement: the estimate is a difference between two methods over paired "
        f"seeds (or one quantity's mean) with its 95% interval; it holds when the interval "
        f"supports the expected direction.</p>\n"
        "<table><tr><th>notebook</th><th>claim</th><th>estimate [95% interval]</th>"
        "<th>expected</th><th>seeds</th><th>holds</th></tr>\n" + "\n".join(rows) + "\n</table>"
    )


def render_index(run) -> str:
    """The self-contained ``index.html`` of a run (a :class:`kdlib.course.run.CourseRun`): all
    text escaped, images embedded."""
    e = html.escape
    counts = ", ".join(f"{n} {status}" for status, n in run.counts().items())
    verdict = "all notebooks ran" if run.ok else "some notebooks did not run through"
    rows, sections = [], []
    for nb in run.notebooks:
        anchor = f"nb-{e(nb.name)}"
        links = []
        if nb.html:
            links.append(f'<a href="{e(nb.html)}">html</a>')
        if nb.output:
            links.append(f'<a href="{e(nb.output)}">ipynb</a>')
        seconds = "" if nb.seconds is None else f"{nb.seconds:.1f} s"
        claims = nb.claims or []
        held = sum(bool(c.get("holds")) for c in claims)
        claim_text = f"{held}/{len(claims)} hold" if claims else ""
        detail = _error_html(nb.error) if nb.error else ""
        rows.append(
            f'<tr><td><a href="#{anchor}">{e(nb.name)}</a></td>'
            f'<td class="{e(nb.status)}">{e(nb.status)}</td><td class="num">{seconds}</td>'
            f"<td>{e(claim_text)}</td><td>{' '.join(links)}</td><td>{detail}</td></tr>"
        )
        heading = f'<h2>{e(nb.name)} <span class="{e(nb.status)}">{e(nb.status)}</span></h2>'
        parts = [f'<section id="{anchor}">{heading}']
        if links:
            parts.append(f"<p>Executed notebook: {' | '.join(links)}</p>")
        if nb.error:
            parts.append(_error_html(nb.error))
        for warning in nb.warnings:
            parts.append(f'<p class="warning">warning: {e(warning)}</p>')
        images = _images(Path(run.out) / nb.output) if nb.output else []
        key = next((im for im in images if im[3]), images[0] if images else None)
        if key is not None:
            mime, data, text, _ = key
            parts.append(f'<img class="key" alt="{e(text)}" src="data:{mime};base64,{data}">')
        details = []
        if nb.parameters:
            params = ", ".join(
                f"{e(k)}={e(repr(v))}" for k, v in nb.parameters.items() if k != "results_dir"
            )
            details.append(f"<p>Parameters: <code>{params}</code></p>")
        if nb.figures:
            details.append(f"<p><code>{e(format_figures(nb.figures))}</code></p>")
            details.append("<table><tr><th>figure</th><th>value</th></tr>")
            details += [
                f"<tr><td>{e(str(k))}</td><td>{e(_format_value(v))}</td></tr>"
                for k, v in nb.figures.items()
            ]
            details.append("</table>")
        for mime, data, text, _ in images:
            if key is None or data != key[1]:
                details.append(f'<img alt="{e(text)}" src="data:{mime};base64,{data}">')
        if details:
            n_figures = len(nb.figures or {})
            summary = f"Headline figures ({n_figures}), parameters and all {len(images)} images"
            parts.append(f"<details><summary>{e(summary)}</summary>")
            parts += details
            parts.append("</details>")
        parts.append("</section>")
        sections.append("\n".join(parts))
    options = run.options
    env = ", ".join(f"{k} {v}" for k, v in run.environment.items() if k != "platform" and v)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Course run: {e(verdict)}</title><style>{_STYLE}</style></head>
<body>
<h1>Knowledge distillation course: run report</h1>
<p><strong>{e(verdict)}</strong> ({e(counts)}). Mode <code>{e(str(options.get("mode")))}</code>,
parameters <code>{e(json.dumps(options.get("parameters", {})))}</code>,
timeout {e(str(options.get("timeout_s")))} s per notebook.<br>
Started {e(run.started)}, finished {e(str(run.finished or "not yet"))}.
Source <code>{e(str(options.get("source")))}</code>.<br>{e(env)}</p>
<h2 id="scoreboard">Scoreboard</h2>
{render_scoreboard(run.notebooks)}
<h2>Notebooks</h2>
<table><tr><th>notebook</th><th>status</th><th>time</th><th>claims</th><th>rendered</th>
<th>error</th></tr>
{chr(10).join(rows)}
</table>
<p>Raw numbers: <a href="results.json">results.json</a>.</p>
{chr(10).join(sections)}
</body></html>
"""


def _error_html(error: dict) -> str:
    e = html.escape
    where = "cell ?" if error.get("cell") is None else f"cell {error['cell']}"
    if error.get("execution_count"):
        where += f" (In [{error['execution_count']}])"
    text = (
        f"<p><strong>{e(where)}: {e(str(error.get('ename')))}</strong>: "
        f"{e(str(error.get('evalue')))}</p>"
    )
    if error.get("cell_source"):
        text += f"<pre>{e(error['cell_source'])}</pre>"
    return text
