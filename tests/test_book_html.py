"""Headless-Chromium check of the built book, via scripts/browser_check.py.

* ``test_built_book_in_browser``: every page of ``_toc.yml`` in ``_build/html`` (or
  $TRANSCAM_BOOK_HTML) loads, shows no JS or notebook error, its images decode, its internal links
  and anchors resolve, each chapter notebook shows a figure; one screenshot per page is kept in
  ``test-artifacts/screenshots`` (or $TRANSCAM_SCREENSHOTS).
* ``test_checker_*``: the checker on a tiny hand-made site, one defect per page, proving that each
  check can fail (and that a clean page passes).
* ``test_reading_*``: the reading rules (machine paths and log lines in outputs, code width,
  Summary and Exercises, Colab link, chapter 7's stages) on hand-made HTML in myst-nb's layout,
  each rule failing once; no browser needed. One test runs the lead's
  ``shared/tools/check_book_html.py`` on the same pages and checks that both count the same.

The browser tests skip when the book is not built or no browser is usable (Debian's ``chromium`` package and the
``playwright`` Python package); with TRANSCAM_REQUIRE_BROWSER=1 (CI) those are failures instead.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "browser_check.py"
REQUIRE = os.environ.get("TRANSCAM_REQUIRE_BROWSER", "") == "1"


def _load_checker():
    spec = importlib.util.spec_from_file_location("browser_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("browser_check", mod)  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


bc = _load_checker()


def _unavailable(reason: str):
    if REQUIRE:
        pytest.fail(f"{reason} (TRANSCAM_REQUIRE_BROWSER=1 makes this a failure)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    """Path of the Chromium binary, or skip/fail when the browser check cannot run here."""
    exe = bc.find_chromium()
    if exe is None:
        _unavailable("no Chromium (Debian: apt-get install -y chromium; or set TRANSCAM_CHROMIUM)")
    if importlib.util.find_spec("playwright") is None:
        _unavailable("the 'playwright' Python package is not installed (pip install -r requirements.txt)")
    return exe


def _run(args, timeout=600):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


# ------------------------------------------------------------------------------------------
# the real book


def test_built_book_in_browser(browser, tmp_path):
    html = Path(os.environ.get("TRANSCAM_BOOK_HTML", REPO / "_build" / "html"))
    if not (html / "index.html").is_file():
        _unavailable(f"the book is not built ({html / 'index.html'} is absent): run bash scripts/book.sh")
    shots = Path(os.environ.get("TRANSCAM_SCREENSHOTS", REPO / "test-artifacts" / "screenshots"))
    report = tmp_path / "report.json"
    toc = ["--toc", REPO / "_toc.yml"] if not os.environ.get("TRANSCAM_BOOK_HTML") else []
    r = _run([html, "--screenshots", shots, "--json", report, "--chromium", browser, *toc])
    print(r.stdout[-20000:], r.stderr[-5000:])
    assert r.returncode != 2, f"browser check could not run:\n{r.stderr}"
    assert r.returncode == 0, "browser check found problems:\n" + "\n".join(
        ln for ln in r.stdout.splitlines() if "FAIL" in ln)
    pages = json.loads(report.read_text())["pages"]
    assert pages and all(p["screenshot"] and Path(p["screenshot"]).is_file() for p in pages)


# ------------------------------------------------------------------------------------------
# self-test on a hand-made site

_PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>{title}</title>{head}</head>
<body><nav><a href="{up}good.html">home</a></nav><main id="main-content"><h1 id="top">{title}</h1>
{body}</main></body></html>"""

#: what every chapter page needs to pass the reading rules
_CHAPTER_END = ('<p><a href="https://colab.research.google.com/github/x/y/blob/main/nb.ipynb">Colab</a></p>'
                '<h2 id="summary">Summary<a class="headerlink" href="#summary">#</a></h2><p>s</p>'
                '<h2 id="exercises">Exercises<a class="headerlink" href="#exercises">#</a></h2><p>e</p>')

_CELL = ('<div class="cell docutils container"><div class="cell_input docutils container"><pre>x</pre></div>'
         '<div class="cell_output docutils container">{out}</div></div>')


def _png(path: Path, size=(24, 16)):
    from PIL import Image

    Image.new("RGB", size, (200, 30, 30)).save(path)


def _make_site(root: Path) -> dict[str, list[str]]:
    """A small built-site look-alike; returns, per page, the problems the checker must report
    (as distinguishing substrings; [] means the page must pass)."""
    html = root / "html"
    (html / "_images").mkdir(parents=True)
    (html / "_sources").mkdir()
    (html / "sub").mkdir()
    _png(html / "_images" / "fig.png")
    (html / "_images" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    (html / "index.html").write_text('<meta http-equiv="Refresh" content="0; url=good.html" />')
    for nb in ("nb_good", "nb_noimg"):
        (html / "_sources" / f"{nb}.ipynb").write_text("{}")
    img = '<img src="_images/fig.png" alt="fig">'
    pages = {
        # clean pages: anchors here and elsewhere, a folder link, external link and image (blocked
        # offline: a note, not a problem), a warning on stderr (a note), a known upstream JS error
        "good": ("", img + '<p><a href="#top">top</a> <a href="nb_good.html#results">r</a> '
                 '<a href="sub/">sub</a> <a href="sub/page.html?x=1#s1">s1</a> '
                 '<a href="https://example.invalid/x">ext</a> <a href="mailto:a@b.c">m</a></p>'
                 '<img src="https://example.invalid/logo.png" alt="external">', []),
        "nb_good": ("", '<h2 id="results">Results</h2>' + _CELL.format(out=img)
                    + _CELL.format(out='<div class="output stderr highlight-myst-ansi notranslate"><pre>'
                                       '/tmp/x.py:1: UserWarning: careful</pre></div>')
                    + _CELL.format(out='<div class="output stream"><pre>loss 0.3, error rate 2%</pre></div>')
                    + _CHAPTER_END, []),
        "thebe_twice": ('<script>const THEBE_JS_URL = "x"</script><script>const THEBE_JS_URL = "x"</script>',
                        "<p>known upstream error only</p>", []),
        # one defect each
        "nb_noimg": ("", _CELL.format(out='<div class="output stream"><pre>no figure</pre></div>') + _CHAPTER_END,
                     ["chapter notebook page shows 0 decoded image(s)"]),
        "broken_img": ("", img + '<img src="_images/corrupt.png" alt="corrupt">',
                       ["image does not decode: src='_images/corrupt.png'"]),
        "missing_img": ("", '<img src="_images/nope.png" alt="gone">',
                        ["image does not decode: src='_images/nope.png'", "HTTP 404"]),
        "broken_link": ("", '<a href="nowhere.html">x</a>', ["broken link: href='nowhere.html'"]),
        "broken_anchor": ("", '<a href="good.html#no-such-id">x</a>', ["broken anchor: href='good.html#no-such-id'"]),
        "traceback": ("", _CELL.format(out='<div class="output traceback highlight-ipythontb notranslate"><pre>'
                                           'ValueError   Traceback (most recent call last)\nValueError: boom'
                                           '</pre></div>'), ["error output [output traceback"]),
        "stderr_error": ("", _CELL.format(out='<div class="output stderr"><pre>RuntimeError: CUDA missing'
                                              '</pre></div>'), ["error output [output stderr"]),
        "stdout_traceback": ("", _CELL.format(out='<div class="output stream"><pre>Traceback (most recent call '
                                                  'last):\n  File "x"\nKeyError: 3</pre></div>'),
                             ["error output [output stream"]),
        "js_error": ("", '<script>throw new Error("deliberate exception")</script>'
                     '<script>console.error("deliberate console error")</script>',
                     ["deliberate exception", "console error: deliberate console error"]),
        "docutils_error": ("", '<div class="system-message"><p class="system-message-title">System Message: '
                           'ERROR/3 (ch.md, line 4)</p><p>Unknown directive type "figur".</p></div>',
                           ["error output [system-message]"]),
        "missing_css": ('<link rel="stylesheet" href="_static/missing.css">', "<p>styled?</p>", ["HTTP 404"]),
        "not_built": None,
    }
    expected = {}
    for name, spec in pages.items():
        expected[f"{name}.html"] = ["was not built"] if spec is None else spec[2]
        if spec is not None:
            head, body, _ = spec
            (html / f"{name}.html").write_text(_PAGE.format(title=name, head=head, body=body, up=""))
    (html / "sub" / "index.html").write_text(_PAGE.format(title="sub", head="", body="<p>sub</p>", up="../"))
    (html / "sub" / "page.html").write_text(_PAGE.format(
        title="s", head="", body='<h2 id="s1">S1</h2><a href="../good.html#top">up</a>', up="../"))
    toc = root / "_toc.yml"
    names = [n for n in pages if n != "good"]
    toc.write_text("format: jb-book\nroot: good\nchapters:\n" + "".join(f"  - file: {n}\n" for n in names))
    return expected


@pytest.fixture(scope="module")
def site_report(browser, tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    expected = _make_site(root)
    report = root / "report.json"
    r = _run([root / "html", "--toc", root / "_toc.yml", "--screenshots", root / "shots",
              "--json", report, "--chromium", browser, "--timeout", "30"], timeout=300)
    assert report.is_file(), f"no report (exit {r.returncode}):\n{r.stdout}\n{r.stderr}"
    pages = {p["page"]: p for p in json.loads(report.read_text())["pages"]}
    return root, expected, pages, r


def test_checker_fails_on_defects(site_report):
    root, expected, pages, r = site_report
    assert r.returncode == 1, r.stdout
    assert set(pages) == set(expected)
    for page, want in expected.items():
        got = pages[page]["problems"]
        for w in want:
            assert any(w in g for g in got), f"{page}: expected a problem containing {w!r}, got {got}"
            assert any(w in ln for ln in r.stdout.splitlines() if "FAIL" in ln and page in ln), r.stdout
        assert len(got) == len(want), f"{page}: expected exactly {want}, got {got}"


def test_checker_notes_are_not_failures(site_report):
    _, _, pages, _ = site_report
    notes = pages["good.html"]["notes"]
    assert any("external resource not loaded" in n and "example.invalid/logo.png" in n for n in notes)
    assert any("UserWarning: careful" in n for n in pages["nb_good.html"]["notes"])
    assert any("THEBE_JS_URL" in n and "known upstream" in n for n in pages["thebe_twice.html"]["notes"])
    assert pages["nb_good.html"]["notebook"] and not pages["good.html"]["notebook"]
    assert pages["nb_good.html"]["main_images"] == 1
    assert pages["good.html"]["links_checked"] >= 4  # external and mailto: links are not counted


def test_checker_screenshots(site_report):
    from PIL import Image

    root, expected, pages, _ = site_report
    shots = sorted((root / "shots").glob("*.png"))
    assert len(shots) == len(expected) - 1  # every built page
    for s in shots:
        with Image.open(s) as im:
            im.load()
            assert im.size[0] == 1280 and im.size[1] >= 200, (s, im.size)


def test_checker_passes_clean_pages_and_strict_js(browser, site_report):
    root = site_report[0]
    ok = _run([root / "html", "--pages", "good", "nb_good.html", "sub/page", "--chromium", browser])
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "OK: 3 page(s)" in ok.stdout
    strict = _run([root / "html", "--pages", "thebe_twice", "--strict-js", "--chromium", browser])
    assert strict.returncode == 1 and "THEBE_JS_URL" in strict.stdout, strict.stdout


def test_checker_bad_arguments(tmp_path):
    r = _run([tmp_path / "absent"], timeout=60)
    assert r.returncode == 2 and "is not a folder" in r.stderr
    (tmp_path / "html").mkdir()
    r = _run([tmp_path / "html", "--chromium", tmp_path / "no-such-chromium"], timeout=60)
    assert r.returncode == 2 and "no Chromium found" in r.stderr


def test_toc_pages_reads_nested_entries(tmp_path):
    toc = tmp_path / "_toc.yml"
    toc.write_text("format: jb-book\nroot: book/intro\nparts:\n  - caption: A\n    chapters:\n"
                   "      - file: notebooks/01_a.ipynb\n        sections:\n          - file: notebooks/01b\n"
                   "      - url: https://example.invalid\n  - caption: B\n    chapters:\n      - file: book/refs.md\n")
    assert bc.toc_pages(toc) == ["book/intro", "notebooks/01_a", "notebooks/01b", "book/refs"]


# ------------------------------------------------------------------------------------------
# the reading rules (static HTML, no browser)


def _myst_cell(code: str, out: str = "") -> str:
    """One code cell as myst-nb 1.x writes it (input, then output blocks)."""
    import html as _html

    cell = ('<div class="cell docutils container">\n<div class="cell_input docutils container">\n'
            '<div class="highlight-ipython3 notranslate"><div class="highlight"><pre><span></span>'
            f'{_html.escape(code)}\n</pre></div>\n</div>\n</div>\n')
    if out:
        cell += ('<div class="cell_output docutils container">\n<div class="output stream highlight-myst-ansi '
                 'notranslate"><div class="highlight"><pre><span></span>'
                 f'{_html.escape(out)}\n</pre></div>\n</div>\n</div>\n')
    return cell + "</div>\n"


def _chapter(*cells: str, summary=True, exercises=True, colab=True, prose="") -> str:
    body = "<h1>Chapter</h1>" + prose + "".join(cells)
    if colab:
        body += '<a class="btn" href="https://colab.research.google.com/github/x/y/blob/main/n.ipynb">Colab</a>'
    if summary:
        body += '<section id="summary"><h2>Summary<a class="headerlink" href="#summary">#</a></h2></section>'
    if exercises:
        body += '<section id="exercises"><h2>Exercises<a class="headerlink" href="#exercises">#</a></h2></section>'
    return _PAGE.format(title="c", head="", body=body, up="")


_STAGE_TABLE = "stage  mIoU\nCAM  40.1\nTransCAM  44.0\n+ random walk  45.2\nDeepLab  47.0"
_CLEAN = _chapter(_myst_cell("x = 1  # " + "a" * 71, "run folder: pipeline-tiny-abc"),  # exactly 80 wide
                  _myst_cell("print(res)", _STAGE_TABLE))


def test_reading_rules_pass_a_clean_chapter():
    problems, counts = bc.reading_problems(_CLEAN, stages=True)
    assert problems == [] and counts == {"machine_paths": 0, "log_lines": 0, "wide_code_lines": 0}


@pytest.mark.parametrize("page, stages, want", [
    (_chapter(_myst_cell("print(p)", "weights in /home/ci/artifacts/run/x.pt")), False, "1 machine path"),
    (_chapter(_myst_cell("m = load()", "[cached] classifier run-1\n[compute] cams")), False, "2 cache/log line"),
    (_chapter(_myst_cell("y = 2  # " + "b" * 72)), False, "1 code line(s) over 80"),
    (_chapter(_myst_cell("z = 3"), summary=False), False, "no 'Summary' heading"),
    (_chapter(_myst_cell("z = 3"), exercises=False), False, "no 'Exercises' heading"),
    (_chapter(_myst_cell("z = 3"), colab=False), False, "no Colab launch link"),
    (_chapter(_myst_cell("t", "CAM 40\nTransCAM 44\nrandom walk 45")), True, "stage(s) DeepLab"),
    # stage names in the prose only: the outputs must show them
    (_chapter(_myst_cell("t", "nothing ran"), prose="<p>CAM, TransCAM, random walk, DeepLab</p>"), True,
     "stage(s) CAM, TransCAM, random walk, DeepLab"),
])
def test_reading_rules_each_can_fail(page, stages, want):
    problems, _ = bc.reading_problems(page, stages=stages)
    assert len(problems) == 1 and want in problems[0], problems


def test_reading_rules_from_the_command_line(tmp_path):
    html = tmp_path / "html"
    (html / "notebooks").mkdir(parents=True)
    (html / "_sources" / "notebooks").mkdir(parents=True)
    (html / "index.html").write_text(_PAGE.format(title="i", head="", body="<p>i</p>", up=""))
    for name, page in [("01_a", _CLEAN), ("07_results", _chapter(_myst_cell("t", "[train] step 3")))]:
        (html / "notebooks" / f"{name}.html").write_text(page)
        (html / "_sources" / "notebooks" / f"{name}.ipynb").write_text("{}")
    r = _run([html, "--static-only", "--pages", "notebooks/01_a", "notebooks/07_results"])
    assert r.returncode == 1, r.stdout + r.stderr
    fails = [ln for ln in r.stdout.splitlines() if "FAIL" in ln]
    assert all("07_results" in ln for ln in fails) and len(fails) == 2, fails
    assert "0 machine path(s) and 1 log line(s) in outputs, 0 code line(s) over 80" in r.stdout


def test_reading_rules_agree_with_the_leads_tool(tmp_path):
    """The lead's shared/tools/check_book_html.py counts the same on the same seven pages."""
    from conftest import SHARED

    tool = SHARED / "tools" / "check_book_html.py"
    if not tool.is_file():
        pytest.skip(f"{tool} is absent (the team's shared/ folder)")
    html = tmp_path / "html"
    (html / "notebooks").mkdir(parents=True)
    (html / "_sources" / "notebooks").mkdir(parents=True)
    pages = {
        "01_a": _CLEAN,
        "02_b": _chapter(_myst_cell("print(p)", "saved to /tmp/run/x.pt\nand /root/.cache/y/z")),
        "03_c": _chapter(_myst_cell("a = 1  # " + "c" * 75 + "\nb = 2  # " + "d" * 80, "[cached] run")),
        "04_d": _chapter(_myst_cell("q = 1", "[setup] ok\n[pipeline] stage cams\nfine")),
        "05_e": _CLEAN,
        "06_f": _chapter(_myst_cell("w = 1", "[compute] cams (not found; run)")),
        "07_results": _CLEAN,
    }
    for name, page in pages.items():
        (html / "notebooks" / f"{name}.html").write_text(page)
        (html / "_sources" / "notebooks" / f"{name}.ipynb").write_text("{}")
    lead = subprocess.run([sys.executable, str(tool), str(html)], capture_output=True, text=True, timeout=120)
    m = re.search(r"(\d+) machine paths and (\d+) log lines in outputs, (\d+) code lines over", lead.stdout)
    assert m, lead.stdout + lead.stderr
    ours = _run([html, "--static-only", "--pages", *[f"notebooks/{n}" for n in pages]])
    m2 = re.search(r"(\d+) machine path\(s\) and (\d+) log line\(s\) in outputs, (\d+) code line\(s\)",
                   ours.stdout)
    assert m2, ours.stdout + ours.stderr
    assert m.groups() == m2.groups() == ("2", "4", "2")
    assert lead.returncode == ours.returncode == 1
