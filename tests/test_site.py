"""`kdlib course site`: the student notebooks with a course run's outputs, the overview, the
references and the API pages as a static site that works offline."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import nbformat
import pytest
from bs4 import BeautifulSoup

from kdlib.course.site import build_site, library_modules, student_view

ROOT = Path(__file__).resolve().parent.parent
NAMES = sorted(p.name for p in (ROOT / "notebooks").iterdir() if p.is_dir())


def _solution_lines() -> list[str]:
    """Distinctive lines of code that only the solutions hold (answers and hidden tests)."""
    lines = []
    releases = "".join(p.read_text() for p in sorted((ROOT / "notebooks").glob("*/*.ipynb")))
    for path in sorted((ROOT / "solutions").glob("*/*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            for region in re.findall(
                r"### BEGIN (?:SOLUTION|HIDDEN TESTS)\n(.*?)### END", cell.source, flags=re.S
            ):
                for line in region.splitlines():
                    line = line.strip()
                    if len(line) > 30 and json.dumps(line)[1:-1] not in releases:
                        lines.append(line)
    return lines


def test_student_view_takes_outputs_but_never_of_answer_or_test_cells():
    release = nbformat.v4.new_notebook()
    executed = nbformat.v4.new_notebook()
    for i, grader in enumerate([None, {"solution": True}, {"grade": True, "locked": True}]):
        for nb in (release, executed):
            cell = nbformat.v4.new_code_cell(f"x{i} = 1")
            cell["id"] = f"c{i}"
            if grader:
                cell.metadata["nbgrader"] = grader
            nb.cells.append(cell)
        executed.cells[-1].outputs = [nbformat.v4.new_output("stream", text=f"out {i}\n")]
        executed.cells[-1].execution_count = i + 1
    view = student_view(release, executed)
    assert [len(c.outputs) for c in view.cells] == [1, 0, 0]
    assert view.cells[0].outputs[0].text == "out 0\n" and view.cells[0].execution_count == 1
    assert all(not c.outputs for c in release.cells)  # the inputs are not changed
    assert [len(c.outputs) for c in student_view(release).cells] == [0, 0, 0]


def test_build_site_refuses_bad_folders(tmp_path):
    with pytest.raises(ValueError, match="run"):
        build_site(tmp_path / "site", run=tmp_path / "missing", course_dir=ROOT)
    with pytest.raises(ValueError, match="course_dir"):
        build_site(tmp_path / "site", course_dir=tmp_path)
    with pytest.raises(ValueError, match="out"):
        build_site(ROOT / "notebooks", course_dir=ROOT)


def _internal_links(page: Path):
    text = page.read_text(encoding="utf-8")
    for attr, url in re.findall(r'\b(href|src)="([^"]+)"', text):
        parsed = urlparse(html.unescape(url))
        remote = parsed.scheme in ("http", "https", "mailto", "data", "javascript")
        if remote or url.startswith("//"):
            continue
        yield attr, html.unescape(url)


@pytest.fixture(scope="module")
def site(course, tmp_path_factory):
    out, _ = course
    folder = tmp_path_factory.mktemp("site") / "site"
    pages = build_site(folder, run=out, course_dir=ROOT, echo=lambda *a: None)
    return folder, pages, out


@pytest.mark.notebooks
def test_site_has_every_page_and_every_link_works(site):
    folder, pages, _ = site
    files = {p.file for p in pages}
    assert {"index.html", "references.html", "api.html"} <= files
    assert {f"{n}.html" for n in NAMES} <= files
    assert {f"api-{m}.html" for m in library_modules()} <= files
    broken = []
    for page in sorted(folder.glob("*.html")):
        text = page.read_text(encoding="utf-8")
        # nothing is loaded from another host: scripts, styles, images, fonts are local
        assert not re.search(r'<(script|link|img|iframe)[^>]+(src|href)="(https?:)?//', text), page
        for attr, url in _internal_links(page):
            target, _, anchor = url.partition("#")
            path = (page.parent / unquote(target.split("?")[0])) if target else page
            if not path.exists():
                broken.append(f"{page.name}: {attr}={url}")
            elif anchor and path.suffix == ".html":
                if f'id="{anchor}"' not in path.read_text(encoding="utf-8"):
                    broken.append(f"{page.name}: #{anchor} not in {path.name}")
    assert not broken, broken[:20]


@pytest.mark.notebooks
def test_site_shows_the_run_but_no_solution(site):
    folder, _, run = site
    leaked = []
    solutions = _solution_lines()
    assert len(solutions) > 20  # the check below has something to find
    for name in NAMES:
        page = (folder / f"{name}.html").read_text(encoding="utf-8")
        text = BeautifulSoup(page, features="html.parser").get_text()  # code without highlighting
        assert "BEGIN SOLUTION" not in text and "HIDDEN TESTS" not in text
        assert "raise NotImplementedError()" in text or name == "05_distillation_vs_finetuning"
        leaked += [f"{name}: {line}" for line in solutions if line in text]
        # the run's outputs are on the page: every figure and the text it printed (but for the
        # answer and test cells, which show none)
        release = nbformat.read(ROOT / "notebooks" / name / f"{name}.ipynb", as_version=4)
        shown_ids = {
            c.get("id")
            for c in release.cells
            if c.cell_type == "code"
            and not {"solution", "grade"}
            & {k for k, v in c.metadata.get("nbgrader", {}).items() if v}
        }
        executed = nbformat.read(run / f"{name}.ipynb", as_version=4)
        shown = [c for c in executed.cells if c.get("id") in shown_ids and c.get("outputs")]
        pngs = sum("image/png" in o.get("data", {}) for c in shown for o in c.outputs)
        soup = BeautifulSoup(page, features="html.parser")
        on_page = soup.select(".jp-OutputArea-output img[src^='data:image/png']")
        assert len(on_page) == pngs, (name, len(on_page), pngs)
        printed = [
            line.strip()
            for c in shown
            for o in c.outputs
            if o.output_type == "stream"
            for line in o.text.splitlines()[:1]
            if line.strip()
        ]
        assert printed and all(line in text for line in printed), name
    assert not leaked, leaked[:10]


@pytest.mark.notebooks
def test_site_search_index_covers_every_page(site):
    folder, pages, _ = site
    text = (folder / "search-index.js").read_text(encoding="utf-8")
    entries = json.loads(text.removeprefix("window.KDLIB_SEARCH = ").rstrip().rstrip(";"))
    covered = {e["url"].split("#")[0] for e in entries}
    assert covered == {p.file for p in pages}
    assert any("temperature" in e["text"].lower() for e in entries if e["url"].startswith("01_"))


def _browser():
    """Chromium (Debian's) or Chrome for playwright: KDLIB_BROWSER, else the usual places."""
    for candidate in (os.environ.get("KDLIB_BROWSER"), "/usr/bin/chromium", "chromium",
                      "google-chrome", "chromium-browser"):  # fmt: skip
        if candidate and (Path(candidate).is_file() or shutil.which(candidate)):
            return str(Path(candidate) if Path(candidate).is_file() else shutil.which(candidate))
    return None


@pytest.mark.notebooks
def test_site_in_a_browser_with_the_network_blocked(site):
    """Every page opens from disk with every request off the machine refused; formulas are
    typeset by the local MathJax; the search box finds a notebook's section."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package")
    browser_path = _browser()
    if browser_path is None:
        pytest.skip("needs chromium (Debian's package 'chromium') or Chrome (set KDLIB_BROWSER)")
    folder, pages, _ = site
    outside = []

    def route(request_route):
        url = request_route.request.url
        if url.startswith(("file://", "data:", "about:")):
            request_route.continue_()
        else:
            outside.append(url)
            request_route.abort()

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=browser_path,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )  # fmt: skip
        page = browser.new_page()
        page.route("**/*", route)
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        for item in pages:
            page.goto((folder / item.file).as_uri())
            assert page.locator("nav.kdlib-site").count() == 1, item.file
        # formulas: MathJax (served from the site's own copy) typesets notebook 02's
        page.goto((folder / "02_formal_loss.html").as_uri())
        page.wait_for_function(
            "() => document.querySelectorAll('.MathJax, .MathJax_Display, mjx-container')"
            ".length > 10",
            timeout=60_000,
        )
        assert page.locator(".MathJax_Error, merror").count() == 0
        page.fill("#kdlib-search", "temperature")
        results = page.locator("#kdlib-search-results a")
        results.first.wait_for(timeout=10_000)
        assert results.count() > 0
        hrefs = [results.nth(i).get_attribute("href") for i in range(results.count())]
        assert any(h.startswith("01_intuition.html") for h in hrefs), hrefs
        results.first.click()
        page.wait_for_load_state()
        assert page.url.startswith((folder / "x").as_uri()[:-1])
        browser.close()
    assert not outside, outside[:10]
    assert not errors, errors[:5]
