"""``kdlib course site``: the course as a static website, built offline.

    kdlib course run --out build/course               first, for the outputs (optional)
    kdlib course site --run build/course --out build/site

The site holds, in one flat folder that any static host serves (GitHub Pages, a university
web space, ``python -m http.server``, or the files opened straight from disk):

- ``index.html``: the README (the course's overview, set-up, the notebook table);
- one page per notebook: the *student* notebook (``notebooks/``, exercises unanswered, no hidden
  test) with the outputs of the course run in ``--run`` (figures, tables, printouts). Outputs
  are taken cell by cell, matched by cell id, and never for an answer cell or a graded test
  cell, so nothing of a solution reaches the page. Without ``--run`` the pages have no outputs;
- ``references.html``: the README's References; the Markdown files the README links to
  (CONTRIBUTING, the benchmarks' README, ...) as pages of their own;
- ``api.html`` and one page per library module (``api-kdlib.losses.html``, ...): every public
  name with its signature and docstring;
- a navigation bar on every page (previous, next, all pages) and a search box that searches
  every page's text in the browser (``search-index.js``, loaded as a script, so it works from
  ``file://`` too).

Everything is rendered by nbconvert, the way :func:`kdlib.course.report.render_notebook_html`
renders the run report: formulas are typeset by the MathJax copy that the ``course`` extra
installs (``mathjax/`` in the site), and no page loads anything from another host. Links to
repository files that are not part of the site are turned into plain text.
"""

from __future__ import annotations

import argparse
import html
import importlib
import inspect
import json
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Page", "build_site", "library_modules", "student_view"]

# the library modules that get an API page: kdlib's own modules, not the course machinery
_NOT_API = {"kdlib.__main__"}


@dataclass
class Page:
    """One page of the site: ``file`` in the site folder, its ``title`` in the navigation."""

    file: str
    title: str
    section: str  # "Course", "Notebooks", "Library"


def library_modules() -> list[str]:
    """The library's modules (``kdlib.<name>``, not ``kdlib.course``), sorted."""
    import kdlib

    folder = Path(kdlib.__file__).parent
    names = [f"kdlib.{p.stem}" for p in sorted(folder.glob("*.py")) if p.stem != "__init__"]
    return ["kdlib", *[n for n in names if n not in _NOT_API]]


def student_view(release_nb, executed_nb=None):
    """The student notebook ``release_nb`` with the outputs of ``executed_nb`` (the executed
    solution of the same assignment), matched by cell id.

    Answer cells and graded test cells keep no output: what a solution prints is not shown.
    Returns a new notebook; neither argument is changed.
    """
    import copy

    nb = copy.deepcopy(release_nb)
    outputs = {}
    if executed_nb is not None:
        for cell in executed_nb.cells:
            if cell.cell_type == "code" and cell.get("id"):
                outputs[cell["id"]] = cell
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        grader = cell.metadata.get("nbgrader", {})
        done = outputs.get(cell.get("id"))
        if done is None or grader.get("solution") or grader.get("grade"):
            cell.outputs, cell.execution_count = [], None
            continue
        cell.outputs = copy.deepcopy(done.get("outputs", []))
        cell.execution_count = done.get("execution_count")
    return nb


def _markdown_notebook(text: str):
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(text)]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    return nb


def _sections(markdown: str) -> dict[str, str]:
    """``## Heading`` -> the text under it (up to the next ``## ``)."""
    parts = re.split(r"(?m)^## ", markdown)
    return {p.split("\n", 1)[0].strip(): "## " + p for p in parts[1:]}


# docstrings use reStructuredText roles and literals; the pages render Markdown
_ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|obj):`~?([^`]+)`")


def _docstring_markdown(doc: str | None) -> str:
    if not doc:
        return "*(no docstring)*"
    text = inspect.cleandoc(doc)
    text = _ROLE.sub(r"`\1`", text)
    text = text.replace("``", "`")
    # an indented block after "::" is code
    lines, out, in_code = text.split("\n"), [], False
    for line in lines:
        if in_code and line.strip() and not line.startswith((" ", "\t")):
            out.append("```")
            in_code = False
        out.append(line[4:] if in_code and line.startswith("    ") else line)
        if line.rstrip().endswith("::") and not in_code:
            out[-1] = line.rstrip()[:-1]
            out.append("```text")
            in_code = True
    if in_code:
        out.append("```")
    return "\n".join(out)


class _Annotation(str):
    """An annotation shown as written (``torch.Tensor``, not ``'torch.Tensor'``)."""

    def __repr__(self) -> str:
        return str(self)


def _signature(obj) -> str:
    """``(x: torch.Tensor, tau: float = 1.0) -> torch.Tensor``: annotations as written."""
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return ""

    def shown(annotation):
        if annotation is inspect.Parameter.empty:
            return annotation
        text = getattr(annotation, "__forward_arg__", annotation)
        return _Annotation(text) if isinstance(text, str) else annotation

    parameters = [p.replace(annotation=shown(p.annotation)) for p in signature.parameters.values()]
    return str(
        signature.replace(
            parameters=parameters, return_annotation=shown(signature.return_annotation)
        )
    )


def _api_markdown(module_name: str) -> str:
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None)
    if names is None:
        names = [
            n
            for n, obj in vars(module).items()
            if not n.startswith("_") and getattr(obj, "__module__", None) == module_name
        ]
    parts = [f"# `{module_name}`", "", _docstring_markdown(module.__doc__), ""]
    for name in names:
        obj = getattr(module, name, None)
        if obj is None or inspect.ismodule(obj):
            continue
        signature = _signature(obj) if callable(obj) else ""
        kind = "class" if inspect.isclass(obj) else ("function" if callable(obj) else "")
        parts += [
            f"## {name}",
            "",
            f"```python\n{kind} {name}{signature}\n```".replace("\n ", "\n"),
        ]
        doc = inspect.getdoc(obj) if (callable(obj) or inspect.isclass(obj)) else None
        parts += ["", _docstring_markdown(doc), ""]
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if attr.startswith("_") or not (
                    inspect.isfunction(member) or isinstance(member, property)
                ):
                    continue
                target = member.fget if isinstance(member, property) else member
                sig = "" if isinstance(member, property) else _signature(target)
                parts += [f"### {name}.{attr}", "", f"```python\n{attr}{sig}\n```", ""]
                parts += [_docstring_markdown(inspect.getdoc(target)), ""]
    return "\n".join(parts)


def _nav(pages: list[Page], current: Page) -> str:
    parts = ['<nav class="kdlib-site" aria-label="Course navigation">']
    parts.append('<a href="index.html"><strong>Knowledge distillation, hands-on</strong></a>')
    parts.append(
        '<p><label for="kdlib-search">Search</label>'
        '<input id="kdlib-search" type="search" placeholder="e.g. temperature" autocomplete="off">'
        '</p><ul id="kdlib-search-results"></ul>'
    )
    section = None
    for page in pages:
        if page.section != section:
            if section is not None:
                parts.append("</ul>")
            section = page.section
            parts.append(f"<h2>{html.escape(section)}</h2><ul>")
        here = ' aria-current="page"' if page is current else ""
        parts.append(f'<li><a href="{page.file}"{here}>{html.escape(page.title)}</a></li>')
    parts.append("</ul></nav>")
    return "".join(parts)


def _pager(pages: list[Page], current: Page) -> str:
    i = pages.index(current)
    prev = (
        f'<a href="{pages[i - 1].file}">← {html.escape(pages[i - 1].title)}</a>'
        if i
        else "<span></span>"
    )
    nxt = (
        f'<a href="{pages[i + 1].file}">{html.escape(pages[i + 1].title)} →</a>'
        if i + 1 < len(pages)
        else "<span></span>"
    )
    return f'<div class="kdlib-pager">{prev}{nxt}</div>'


def _link_map(root: Path, notebooks: list[str], markdown_pages: dict[str, str]) -> dict[str, str]:
    """Repository-relative paths that have a page -> the page's file name."""
    links = {}
    for name in notebooks:
        for folder in ("notebooks", "solutions"):
            links[f"{folder}/{name}/{name}.ipynb"] = f"{name}.html"
            links[f"{folder}/{name}"] = f"{name}.html"
        links[f"{name}.ipynb"] = f"{name}.html"
    links.update(markdown_pages)
    return links


def _fix_links(soup, source_dir: str, links: dict[str, str]) -> None:
    """Point links at repository files to their pages; links to files that have no page
    become plain text, links to other sites and anchors stay."""
    import posixpath

    for a in soup.find_all("a", href=True):
        href = a["href"]
        if href.startswith(("http://", "https://", "mailto:", "#")) or a.get("class") == [
            "anchor-link"
        ]:
            continue
        path, _, anchor = href.partition("#")
        target = posixpath.normpath(posixpath.join(source_dir, path)) if path else ""
        page = links.get(target) or links.get(posixpath.basename(target))
        if page:
            a["href"] = page + (f"#{anchor}" if anchor else "")
        elif path:
            a.unwrap()


def _finish_page(path: Path, page: Page, pages, links, source_dir: str) -> dict:
    """Add the navigation, the pager and the search to a page nbconvert wrote; fix its links.
    Returns the page's search-index entries (one per heading)."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(path.read_text(encoding="utf-8"), features="html.parser")
    _fix_links(soup, source_dir, links)
    if soup.title is not None:
        soup.title.string = f"{page.title} · Knowledge distillation, hands-on"
    head = soup.head
    head.append(BeautifulSoup('<link rel="stylesheet" href="site.css">', "html.parser"))
    head.append(BeautifulSoup('<script src="search-index.js"></script>', "html.parser"))
    head.append(BeautifulSoup('<script src="search.js"></script>', "html.parser"))
    body = soup.body
    body.insert(0, BeautifulSoup(_nav(pages, page), "html.parser"))
    body.append(BeautifulSoup(_pager(pages, page), "html.parser"))
    entries, current = [], {"url": page.file, "title": page.title, "text": []}
    for element in soup.select("main, body")[0].find_all(["h1", "h2", "h3", "p", "li", "pre"]):
        if element.find_parent("nav") is not None:
            continue
        if element.name in ("h1", "h2", "h3") and element.get("id"):
            if current["text"]:
                entries.append(current)
            heading = element.get_text(" ", strip=True).rstrip("¶").strip()
            current = {
                "url": f"{page.file}#{element['id']}",
                "title": f"{page.title}: {heading}",
                "text": [],
            }
        current["text"].append(element.get_text(" ", strip=True))
    entries.append(current)
    path.write_text(str(soup), encoding="utf-8")
    return [
        {"url": e["url"], "title": e["title"], "text": " ".join(e["text"])[:4000]} for e in entries
    ]


def build_site(
    out: str | Path,
    run: str | Path | None = None,
    course_dir: str | Path | None = None,
    echo=print,
) -> list[Page]:
    """Write the course site to ``out`` (replaced); returns its pages.

    ``run``: the output folder of ``kdlib course run`` whose executed notebooks give the pages
    their outputs (``None``: pages without outputs). ``course_dir``: the course repository
    (default: this one).
    """
    import nbformat

    from kdlib.course.release import assignments
    from kdlib.course.report import render_notebook_html
    from kdlib.course.run import find_repo_root

    root = Path(course_dir).resolve() if course_dir else find_repo_root()
    if not (root / "notebooks").is_dir():
        raise ValueError(f"course_dir: no notebooks/ folder in {root}")
    run = Path(run).resolve() if run is not None else None
    if run is not None and not run.is_dir():
        raise ValueError(f"run: {run} is not a folder (the --out of `kdlib course run`)")
    out = Path(out).resolve()
    if out == root or root in out.parents and out.parent == root:
        raise ValueError(f"out: {out} would replace a folder of the repository; use build/site")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)

    names = [n for n in assignments(root) if (root / "notebooks" / n / f"{n}.ipynb").is_file()]
    readme = (root / "README.md").read_text(encoding="utf-8")
    sections = _sections(readme)
    references = sections.get("References")
    overview = readme.replace(references, "") if references else readme
    linked_md = sorted(
        {
            m
            for m in re.findall(r"\]\(([^)#\s]+\.md)(?:#[^)]*)?\)", readme)
            if (root / m).is_file() and m != "README.md"
        }
    )
    markdown_pages = {m: m.replace("/", "-").removesuffix(".md") + ".html" for m in linked_md}
    markdown_pages["README.md"] = "index.html"

    # (page, notebook to render, the folder its links are relative to)
    plan: list[tuple[Page, object, str]] = []
    plan.append((Page("index.html", "Overview", "Course"), _markdown_notebook(overview), ""))
    for name in names:
        release = nbformat.read(root / "notebooks" / name / f"{name}.ipynb", as_version=4)
        executed = None
        if run is not None and (run / f"{name}.ipynb").is_file():
            executed = nbformat.read(run / f"{name}.ipynb", as_version=4)
        elif run is not None:
            echo(f"site: {name} has no executed notebook in {run}; its page has no outputs")
        title = _heading(release) or name
        plan.append(
            (
                Page(f"{name}.html", title, "Notebooks"),
                student_view(release, executed),
                f"notebooks/{name}",
            )
        )
    if references:
        plan.append(
            (Page("references.html", "References", "Course"), _markdown_notebook(references), "")
        )
    for rel in linked_md:
        text = (root / rel).read_text(encoding="utf-8")
        nb = _markdown_notebook(text)
        plan.append(
            (Page(markdown_pages[rel], _heading(nb) or rel, "Course"), nb, str(Path(rel).parent))
        )
    modules = library_modules()
    api_index = "# The library, `kdlib`\n\n" + "\n".join(
        f"- [`{m}`](api-{m}.html): {(_first_line(m))}" for m in modules
    )
    plan.append((Page("api.html", "API reference", "Library"), _markdown_notebook(api_index), ""))
    for m in modules:
        plan.append((Page(f"api-{m}.html", m, "Library"), _markdown_notebook(_api_markdown(m)), ""))

    order = {"Course": 0, "Notebooks": 1, "Library": 2}
    plan.sort(key=lambda item: order[item[0].section])  # stable: keeps the order within each
    pages = [p for p, _, _ in plan]
    links = _link_map(root, names, markdown_pages)
    links.update({f"api-{m}.html": f"api-{m}.html" for m in modules})
    index = []
    work = out / "_notebooks"
    work.mkdir()
    for page, nb, source_dir in plan:
        stem = Path(page.file).stem
        ipynb = out / f"{stem}.ipynb"
        nbformat.write(nb, ipynb)
        rendered = render_notebook_html(ipynb)  # out/<stem>.html, MathJax in out/mathjax
        ipynb.replace(work / ipynb.name)
        if rendered.name != page.file:
            rendered.replace(out / page.file)
        index += _finish_page(out / page.file, page, pages, links, source_dir)
    shutil.rmtree(work)
    for asset in ("site.css", "search.js"):
        shutil.copyfile(Path(__file__).parent / "site_assets" / asset, out / asset)
    (out / "search-index.js").write_text(
        "window.KDLIB_SEARCH = " + json.dumps(index, ensure_ascii=False) + ";\n", encoding="utf-8"
    )
    (out / ".nojekyll").write_text("")  # GitHub Pages: serve folders starting with _ as they are
    echo(f"site: {len(pages)} pages in {out} (open {out / 'index.html'})")
    return pages


def _heading(nb) -> str | None:
    """The first level-1 heading of a notebook's Markdown, without its Markdown."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            match = re.search(r"(?m)^# (.+)$", cell.source)
            if match:
                return re.sub(r"[*_`]", "", match.group(1)).strip()
    return None


def _first_line(module_name: str) -> str:
    doc = importlib.import_module(module_name).__doc__ or ""
    line = doc.strip().split("\n", 1)[0]
    return _ROLE.sub(r"`\1`", line).replace("``", "`")


def add_arguments(parser: argparse.ArgumentParser, path=("course", "site")) -> None:
    parser.add_argument(
        "--run",
        default=None,
        help="output folder of `kdlib course run` whose executed notebooks give the pages "
        "their outputs (default: build/course when it holds a run, else no outputs)",
    )
    parser.add_argument(
        "--out", default="build/site", help="the site's folder (default: build/site)"
    )
    parser.add_argument("--course-dir", default=None, help="course root (default: this repo)")


def main(args: argparse.Namespace) -> int:
    from kdlib.course.run import find_repo_root

    run = args.run
    if run is None:
        default = find_repo_root() / "build" / "course"
        run = default if any(default.glob("[0-9][0-9]_*.ipynb")) else None
    try:
        build_site(args.out, run=run, course_dir=args.course_dir)
    except ValueError as err:
        print(f"kdlib course site: {err}", file=sys.stderr)
        return 2
    return 0
