#!/usr/bin/env python
"""Headless-Chromium check of the built book.

Loads every page listed in the book's table of contents (``_toc.yml``) in Debian's Chromium,
driven by Playwright for Python with ``executable_path`` (Playwright's own browser downloads are
never used), and checks that

* the page loads (HTTP 200 from a local ``http.server`` on 127.0.0.1, random free port) and every
  local resource it asks for (CSS, JS, images) is served;
* no JavaScript error happens (``console.error`` messages and uncaught exceptions);
* every ``<img>`` decodes (``HTMLImageElement.decode()`` succeeds and ``naturalWidth > 0``);
* no error output is shown: myst-nb renders a cell error as ``div.output.traceback`` and a stderr
  stream as ``div.output.stderr`` (both inside ``div.cell_output``); nbsphinx/classic Jupyter use
  ``.output_error`` / ``.output_stderr``; docutils problems show as ``.system-message`` /
  ``.problematic``. A traceback/error block is a problem, so is any output text that contains a
  Python traceback or an ``XxxError:`` line; other stderr text (warnings) is listed as a note;
* every internal link (``<a href>`` to a file of the built site, optionally with ``#anchor``)
  points to an existing file, and the anchor is an ``id`` (or ``<a name>``) of the target page;
* every chapter notebook page (its source, ``_sources/<page>.ipynb``, is a notebook) shows at
  least one decoded image in its main content;

and, on every chapter notebook page, what a reader reads (static HTML, no browser needed; the same
rules as the lead's ``shared/tools/check_book_html.py``):

* no absolute machine path (``/home/...``, ``/tmp/...``, ...) in any cell output;
* no cache or log line (``[cached]``, ``[compute]``, ``[train]``, ...) in any cell output;
* no code line wider than ``--max-code`` characters (80: what a code cell shows at 1280 px);
* a "Summary" and an "Exercises" heading;
* a Colab launch link;
* the results chapter (``--stages-page``, default ``notebooks/07_results``) shows every pipeline
  stage (CAM, TransCAM, random walk, DeepLab) in its outputs;

and saves one full-page PNG screenshot per page. Requests to other hosts (the CDN copies of
MathJax, require.js, the widget manager) are blocked, so the check is the same with or without
network; they are listed as notes and do not fail the check.

Usage::

    python scripts/browser_check.py _build/html --screenshots test-artifacts/screenshots
    python scripts/browser_check.py _build/html --static-only     # only the reading rules, no browser

Exit status: 0 all checks passed, 1 problems found (listed on stdout), 2 bad arguments or no
usable browser (Chromium or the ``playwright`` package missing).
"""
from __future__ import annotations

import argparse
import functools
import html.parser
import http.server
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

#: Chromium flags that work headless as root in a container (no sandbox, no GPU, no phoning home).
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]

#: Where Debian (and a few other distributions) put Chromium; $TRANSCAM_CHROMIUM comes first.
CHROMIUM_CANDIDATES = ["/usr/bin/chromium", "/usr/lib/chromium/chromium", "/usr/bin/chromium-browser",
                       "/usr/bin/google-chrome", "/usr/bin/google-chrome-stable"]

SKIP_PAGES = {"genindex.html", "search.html", "py-modindex.html"}

#: JavaScript errors of the Jupyter Book 1.x stack itself, harmless for the reader: listed as notes
#: (``--strict-js`` makes them problems). Each entry: (pattern of the message, why it is known).
KNOWN_UPSTREAM_JS = [
    (re.compile(r"^(SyntaxError: )?Identifier 'THEBE_JS_URL' has already been declared"),
     "sphinx-thebe 0.3.1 writes its inline config <script> twice on every page under Sphinx 7.4;"
     " the second copy is rejected, the first works"),
    (re.compile(r"^Got invalid theme mode: \. Resetting to auto\."),
     "pydata-sphinx-theme on a first visit (empty localStorage) when html_context.default_mode is unset;"
     " the theme then resets itself to 'auto'"),
]

#: Output text that means an exception reached the reader.
ERROR_TEXT = re.compile(r"Traceback \(most recent call last\)|(^|\s)[A-Za-z_.]*(Error|Exception): ", re.M)

#: An absolute path of the build machine (the lead's tool uses the same pattern).
MACHINE_PATH = re.compile(r"(?<![\w.:/])/(?:tmp|root|home|usr|opt|var|work|mnt|content)/[\w.+-]+/")
#: A cache / progress / log line of the package (``[cached] ...``, ``[train] ...``).
LOG_LINE = re.compile(r"\[(?:cached|compute|train|setup|pipeline|pretrain|affinity|segment|cams|data)\]")
#: What the results chapter's outputs must name: every stage of the pipeline.
STAGES = ("CAM", "TransCAM", "random walk", "DeepLab")
COLAB = "colab.research.google.com"


class _ReadingParser(html.parser.HTMLParser):
    """Collects the text of cell inputs and cell outputs (myst-nb's ``div.cell_input`` /
    ``div.cell_output``), the headings, and the link targets of one page."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.headings: list[str] = []
        self.hrefs: list[str] = []
        self._divs: list[str | None] = []  # per open <div>: "in"/"out" when it opens a cell part
        self._where: list[str] = []  # stack of the cell parts we are in
        self._heading: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "a" and a.get("href"):
            self.hrefs.append(a["href"])
        if tag == "div":
            cls = (a.get("class") or "").split()
            part = "in" if "cell_input" in cls else "out" if "cell_output" in cls else None
            self._divs.append(part)
            if part:
                self._where.append(part)
                (self.inputs if part == "in" else self.outputs).append("")
        elif tag in ("h1", "h2", "h3"):
            self._heading = []
        elif tag == "br":
            self.handle_data("\n")

    def handle_endtag(self, tag):
        if tag == "div" and self._divs:
            if self._divs.pop():
                self._where.pop()
        elif tag in ("h1", "h2", "h3") and self._heading is not None:
            self.headings.append("".join(self._heading).strip().rstrip("#¶").strip())
            self._heading = None

    def handle_data(self, data):
        if self._heading is not None:
            self._heading.append(data)
        if self._where:
            buf = self.inputs if self._where[-1] == "in" else self.outputs
            buf[-1] += data


def reading_problems(page_html: str, *, max_code: int = 80, stages: bool = False) -> tuple[list[str], dict]:
    """The reading rules (module doc) on one chapter page's HTML: ``(problems, counts)`` with
    counts of machine paths and log lines in outputs and of code lines over ``max_code``."""
    p = _ReadingParser()
    p.feed(page_html)
    out_text = "\n".join(p.outputs)
    paths = MACHINE_PATH.findall(out_text)
    logs = [ln for ln in out_text.splitlines() if LOG_LINE.search(ln)]
    wide = [ln for ln in "\n".join(p.inputs).splitlines() if len(ln.rstrip()) > max_code]
    problems = []
    if paths:
        problems.append(f"{len(paths)} machine path(s) in outputs, e.g. {paths[0]!r}")
    if logs:
        problems.append(f"{len(logs)} cache/log line(s) in outputs, e.g. {logs[0].strip()[:100]!r}")
    if wide:
        problems.append(f"{len(wide)} code line(s) over {max_code} characters, e.g. {wide[0].strip()[:60]!r}...")
    # the numbered book prefixes headings with their section number ("1.7. Summary")
    heads = [re.sub(r"^[\d.]+\s*", "", h).lower() for h in p.headings]
    for want in ("summary", "exercises"):
        if not any(h.startswith(want) for h in heads):
            problems.append(f"no '{want.capitalize()}' heading")
    if not any(COLAB in h for h in p.hrefs):
        problems.append("no Colab launch link")
    if stages:
        missing = [s for s in STAGES if not re.search(rf"(?<![\w]){re.escape(s)}(?![\w])", out_text, re.I)]
        if missing:
            problems.append(f"the outputs do not show the pipeline stage(s) {', '.join(missing)}")
    return problems, {"machine_paths": len(paths), "log_lines": len(logs), "wide_code_lines": len(wide)}


# Everything the page itself must report, gathered in one evaluate() call.
_PAGE_PROBE_JS = r"""
async (errorText) => {
  const re = new RegExp(errorText, 'm');
  const imgs = Array.from(document.images);
  for (const im of imgs) { im.loading = 'eager'; }
  const decoded = await Promise.all(imgs.map(im =>
      (im.complete && im.naturalWidth > 0) ? Promise.resolve(true)
        : Promise.race([im.decode().then(() => true, () => false),
                        new Promise(r => setTimeout(() => r(im.complete && im.naturalWidth > 0), 10000))])));
  const main = document.querySelector('main, [role=main], article') || document.body;
  const images = imgs.map((im, i) => ({
      src: im.getAttribute('src') || '', url: im.currentSrc || im.src, alt: im.alt || '',
      decoded: decoded[i] && im.naturalWidth > 0, width: im.naturalWidth, height: im.naturalHeight,
      in_main: main.contains(im)}));
  const text = el => (el.innerText || el.textContent || '').trim();
  const short = s => s.length > 300 ? s.slice(0, 300) + ' ...' : s;
  const errors = [], notes = [];
  const always = ['.output.traceback', '.output.error', '.output_error', '.system-message', '.problematic'];
  for (const el of document.querySelectorAll(always.join(','))) {
    errors.push({cls: el.className, text: short(text(el))});
  }
  const stderr = '.cell_output .stderr, .output.stderr, .output_stderr';
  for (const el of document.querySelectorAll(stderr)) {
    if (el.matches(always.join(','))) continue;
    const t = text(el);
    (re.test(t) ? errors : notes).push({cls: el.className, text: short(t)});
  }
  // any other output block (stdout, text/plain results) that prints a traceback / XxxError:
  for (const el of document.querySelectorAll('.cell_output .output, .output_area')) {
    if (el.matches(always.join(',') + ',' + stderr) || el.closest(always.join(',') + ',' + stderr)) continue;
    const t = text(el);
    if (re.test(t)) errors.push({cls: el.className, text: short(t)});
  }
  const ids = Array.from(document.querySelectorAll('[id]')).map(e => e.id)
      .concat(Array.from(document.querySelectorAll('a[name]')).map(e => e.getAttribute('name')));
  const links = Array.from(document.querySelectorAll('a[href]'))
      .map(a => ({href: a.getAttribute('href'), url: a.href}));
  const cells = document.querySelectorAll('div.cell').length;
  return {images, errors, notes, ids, links, cells, title: document.title};
}
"""


@dataclass
class PageResult:
    """What the check found on one page; ``problems`` fail the check, ``notes`` do not."""
    page: str
    notebook: bool = False
    status: int | None = None
    images: int = 0
    main_images: int = 0
    links_checked: int = 0
    screenshot: str | None = None
    seconds: float = 0.0
    machine_paths: int = 0
    log_lines: int = 0
    wide_code_lines: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# pages


def toc_pages(toc: Path) -> list[str]:
    """Document names (``book/intro``, ``notebooks/01_cam_basics``) of a jb-book ``_toc.yml``,
    root first, in reading order. ``url:`` and ``glob:`` entries are not pages of their own."""
    import yaml

    try:
        data = yaml.safe_load(toc.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise SystemExit(f"browser_check: cannot read the table of contents {toc}: {e}")
    if not isinstance(data, dict) or "root" not in data:
        raise SystemExit(f"browser_check: {toc} is not a Jupyter Book _toc.yml (no 'root' key)")
    out: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                out.append(str(node["file"]))
            for key in ("parts", "chapters", "sections"):
                if key in node:
                    walk(node[key])
        elif isinstance(node, list):
            for n in node:
                walk(n)

    out.append(str(data["root"]))
    walk(data)
    # "a/b.md" and "a/b" both name document a/b
    docs = [re.sub(r"\.(md|ipynb|rst|myst)$", "", d).strip("/") for d in out]
    return list(dict.fromkeys(docs))


def all_pages(html_dir: Path) -> list[str]:
    """Every HTML page of the site except Sphinx's generated index/search pages."""
    pages = []
    for p in sorted(html_dir.rglob("*.html")):
        rel = p.relative_to(html_dir).as_posix()
        if rel.split("/")[0] in ("_static", "_sources", "_images") or rel in SKIP_PAGES:
            continue
        pages.append(rel[: -len(".html")])
    return pages


def default_toc(html_dir: Path) -> Path | None:
    """``_toc.yml`` of the book that ``html_dir`` was built from: ``<root>/_build/html`` → root."""
    cands = []
    if html_dir.name == "html" and html_dir.parent.name == "_build":
        cands.append(html_dir.parent.parent / "_toc.yml")
    cands.append(Path.cwd() / "_toc.yml")
    return next((c for c in cands if c.is_file()), None)


def is_notebook_source(html_dir: Path, doc: str, toc: Path | None) -> bool:
    """Whether page ``doc`` was built from a notebook: Sphinx copies each source to
    ``_sources/<doc><suffix>``; the TOC's folder is asked when ``_sources`` is absent."""
    if (html_dir / "_sources" / f"{doc}.ipynb").is_file():
        return True
    if any((html_dir / "_sources").glob(f"{doc}.*")):
        return False
    return toc is not None and (toc.parent / f"{doc}.ipynb").is_file()


# --------------------------------------------------------------------------------------------
# anchors of other pages (static HTML: Sphinx writes its ids into the files)


class _IdCollector(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if v and (k == "id" or (k == "name" and tag == "a")):
                self.ids.add(v)


@functools.lru_cache(maxsize=None)
def file_ids(path: Path) -> frozenset[str]:
    c = _IdCollector()
    c.feed(path.read_text(encoding="utf-8", errors="replace"))
    return frozenset(c.ids)


def link_target(html_dir: Path, path: str) -> Path:
    """File under ``html_dir`` that URL path ``path`` (already relative to the site root) names."""
    rel = unquote(path).lstrip("/")
    p = html_dir / rel
    if rel == "" or rel.endswith("/") or p.is_dir():
        p = p / "index.html"
    return p


# --------------------------------------------------------------------------------------------
# browser


def find_chromium(explicit: str | None = None) -> str | None:
    """Path of a Chromium binary: ``explicit``, $TRANSCAM_CHROMIUM, then the usual places."""
    for c in [explicit, os.environ.get("TRANSCAM_CHROMIUM")]:
        if c:
            return c if (os.path.isfile(c) and os.access(c, os.X_OK)) else None
    for c in CHROMIUM_CANDIDATES:
        if os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    for name in ("chromium", "chromium-browser"):
        w = shutil.which(name)
        if w:
            return w
    return None


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # the check reports failures itself
        pass


def serve(html_dir: Path):
    """A threaded static server for ``html_dir`` on 127.0.0.1 and a free port; returns the server
    (call ``shutdown()``) and its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(html_dir))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, name="browser-check-http", daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}/"


def _screenshot_name(doc: str) -> str:
    return doc.replace("/", "__") + ".png"


def apply_reading_rules(res: PageResult, html_dir: Path, doc: str, *, max_code: int = 80,
                        stages_page: str = "notebooks/07_results") -> None:
    """Add the reading rules' problems and counts to ``res`` (chapter notebook pages only)."""
    if not res.notebook or not (html_dir / res.page).is_file():
        return
    text = (html_dir / res.page).read_text(encoding="utf-8", errors="replace")
    problems, counts = reading_problems(text, max_code=max_code, stages=doc == stages_page)
    res.problems.extend(problems)
    for k, v in counts.items():
        setattr(res, k, v)


def check_static(html_dir: Path, pages: list[str], *, toc: Path | None, max_code: int = 80,
                 stages_page: str = "notebooks/07_results") -> list[PageResult]:
    """The reading rules alone (no browser): one result per page."""
    results = []
    for doc in pages:
        res = PageResult(page=f"{doc}.html", notebook=is_notebook_source(html_dir, doc, toc))
        if not (html_dir / res.page).is_file():
            res.problems.append(f"page {res.page} was not built (no such file)")
        apply_reading_rules(res, html_dir, doc, max_code=max_code, stages_page=stages_page)
        results.append(res)
    return results


def check_site(html_dir: Path, pages: list[str], *, toc: Path | None, chromium: str,
               screenshots: Path | None, timeout_s: float = 60.0, width: int = 1280,
               height: int = 900, min_images_notebook: int = 1, strict_js: bool = False,
               settle_ms: int = 300, max_code: int = 80, stages_page: str = "notebooks/07_results",
               log=print) -> list[PageResult]:
    """Load each page of ``pages`` (document names, ``.html`` added) and check it; see module doc."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    srv, base = serve(html_dir)
    origin = base.rstrip("/")
    results: list[PageResult] = []
    if screenshots is not None:
        screenshots.mkdir(parents=True, exist_ok=True)
    try:
        with sync_playwright() as pw, tempfile.TemporaryDirectory(prefix="browser-check-profile-") as profile:
            ctx = pw.chromium.launch_persistent_context(
                profile, executable_path=chromium, headless=True, args=CHROMIUM_FLAGS,
                viewport={"width": width, "height": height}, service_workers="block",
                timeout=timeout_s * 1000)
            blocked: list[str] = []

            def route(r):
                if r.request.url.startswith(origin + "/"):
                    r.continue_()
                else:
                    blocked.append(r.request.url)
                    r.abort("blockedbyclient")

            ctx.route("**/*", route)
            for doc in pages:
                t0 = time.perf_counter()
                res = PageResult(page=f"{doc}.html", notebook=is_notebook_source(html_dir, doc, toc))
                results.append(res)
                if not (html_dir / res.page).is_file():
                    res.problems.append(f"page {res.page} was not built (no such file; the table of contents"
                                        " or --pages lists it)")
                    continue
                apply_reading_rules(res, html_dir, doc, max_code=max_code, stages_page=stages_page)
                blocked.clear()
                console, js_errors = [], []
                bad_responses: dict[str, str] = {}  # url -> first failure seen (404, then "aborted")
                page = ctx.new_page()
                page.on("console", lambda m: console.append(m) if m.type == "error" else None)
                page.on("pageerror", lambda e: js_errors.append(f"JavaScript exception: {e}"))
                page.on("response", lambda r: bad_responses.setdefault(r.url, f"HTTP {r.status} for {r.url}")
                        if r.status >= 400 and r.url.startswith(origin) else None)
                page.on("requestfailed", lambda r: bad_responses.setdefault(
                    r.url, f"request failed ({r.failure}) for {r.url}") if r.url.startswith(origin) else None)
                try:
                    resp = page.goto(base + res.page, wait_until="load", timeout=timeout_s * 1000)
                    res.status = resp.status if resp is not None else None
                    if res.status != 200:
                        res.problems.append(f"page answered HTTP {res.status}")
                    page.wait_for_timeout(settle_ms)  # let load-time handlers and timers run
                    probe = page.evaluate(_PAGE_PROBE_JS, ERROR_TEXT.pattern)
                    if screenshots is not None:
                        # A viewport as tall as the page lays the theme's sticky sidebars out as a
                        # reader scrolling would see them (a plain full-page capture clips them).
                        full_h = int(page.evaluate("document.documentElement.scrollHeight"))
                        page.set_viewport_size({"width": width, "height": max(height, min(full_h, 16000))})
                        page.wait_for_timeout(250)
                        shot = screenshots / _screenshot_name(doc)
                        page.screenshot(path=str(shot), full_page=True, timeout=timeout_s * 1000)
                        res.screenshot = str(shot)
                except PlaywrightError as e:
                    res.problems.append(f"page did not load: {str(e).splitlines()[0]}")
                    page.close()
                    continue
                page.close()

                res.problems.extend(sorted(bad_responses.values()))
                for m in console:
                    loc = (m.location or {}).get("url", "")
                    if m.text.startswith("Failed to load resource") or "ERR_BLOCKED_BY_CLIENT" in m.text:
                        continue  # local: reported from the response above; other hosts: a note below
                    js_errors.append(f"console error: {m.text}" + (f" ({loc})" if loc else ""))
                for msg in js_errors:
                    text = msg.split(": ", 1)[1]
                    known = next((why for pat, why in KNOWN_UPSTREAM_JS if pat.search(text)), None)
                    if known is None or strict_js:
                        res.problems.append(msg)
                    else:
                        res.notes.append(f"{msg} [known upstream: {known}]")
                for u in sorted(set(blocked)):
                    res.notes.append(f"external resource not loaded (offline check): {u}")

                imgs = probe["images"]
                res.images = len(imgs)
                for im in imgs:
                    if not im["decoded"]:
                        if not im["url"].startswith(origin):
                            res.notes.append(f"external image not checked: {im['url']}")
                            continue
                        res.problems.append(f"image does not decode: src={im['src']!r} alt={im['alt']!r}")
                res.main_images = sum(1 for im in imgs if im["decoded"] and im["in_main"])
                if res.notebook and res.main_images < min_images_notebook:
                    res.problems.append(
                        f"chapter notebook page shows {res.main_images} decoded image(s) in its content,"
                        f" expected at least {min_images_notebook} (were the notebooks executed?)")
                for e in probe["errors"]:
                    res.problems.append(f"error output [{e['cls']}]: {e['text']}")
                for n in probe["notes"]:
                    res.notes.append(f"stderr output [{n['cls']}]: {n['text']}")

                own_ids = set(probe["ids"])
                seen = set()
                for ln in probe["links"]:
                    url, href = ln["url"], ln["href"]
                    if not url.startswith(origin + "/") or (url, href) in seen:
                        continue  # external, mailto:, javascript:
                    seen.add((url, href))
                    res.links_checked += 1
                    parts = urlsplit(url)
                    target = link_target(html_dir, parts.path)
                    if not target.is_file():
                        res.problems.append(f"broken link: href={href!r} -> {target.relative_to(html_dir)}"
                                            " does not exist")
                        continue
                    frag = unquote(parts.fragment)
                    if not frag or target.suffix != ".html":
                        continue
                    same = target.resolve() == (html_dir / res.page).resolve()
                    ids = own_ids | file_ids(target) if same else file_ids(target)
                    if frag not in ids:
                        res.problems.append(f"broken anchor: href={href!r} -> no id {frag!r} in "
                                            f"{target.relative_to(html_dir).as_posix()}")
                res.seconds = round(time.perf_counter() - t0, 2)
                log(f"[browser-check] {res.page}: {res.images} image(s), {res.links_checked} internal "
                    f"link(s), {len(res.problems)} problem(s), {res.seconds:.1f} s")
            ctx.close()
    finally:
        srv.shutdown()
        srv.server_close()
    return results


# --------------------------------------------------------------------------------------------
# command line


def _write_json_atomic(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("html_dir", type=Path, help="the built site, e.g. _build/html")
    ap.add_argument("--screenshots", type=Path, default=None,
                    help="folder for one full-page PNG per page (created)")
    ap.add_argument("--toc", type=Path, default=None,
                    help="_toc.yml listing the pages (default: the book root above _build/html, or ./_toc.yml;"
                         " without one every HTML page is checked)")
    ap.add_argument("--pages", nargs="+", default=None,
                    help="check these pages (paths under html_dir, .html optional) instead of the TOC's")
    ap.add_argument("--chromium", default=None,
                    help="Chromium binary (default: $TRANSCAM_CHROMIUM, /usr/bin/chromium, ...)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds allowed per page load (default 60)")
    ap.add_argument("--strict-js", action="store_true",
                    help="also fail on the known, harmless JavaScript errors of the Jupyter Book stack")
    ap.add_argument("--min-images", type=int, default=1,
                    help="decoded images each chapter notebook page must show (default 1)")
    ap.add_argument("--max-code", type=int, default=80,
                    help="widest code line a chapter may show, in characters (default 80)")
    ap.add_argument("--stages-page", default="notebooks/07_results",
                    help="the page whose outputs must show every pipeline stage (default notebooks/07_results)")
    ap.add_argument("--static-only", action="store_true",
                    help="only the reading rules on the HTML files (paths, log lines, code width, Summary and"
                         " Exercises, Colab link, the stages); no browser needed")
    args = ap.parse_args(argv)

    html_dir = args.html_dir.resolve()
    if not (html_dir.is_dir()):
        print(f"browser_check: {args.html_dir} is not a folder (expected the built book, e.g. _build/html;"
              " build it with: bash scripts/book.sh)", file=sys.stderr)
        return 2
    chromium = None if args.static_only else find_chromium(args.chromium)
    if chromium is None and not args.static_only:
        print("browser_check: no Chromium found (looked at --chromium / $TRANSCAM_CHROMIUM, "
              + ", ".join(CHROMIUM_CANDIDATES) + "); on Debian: apt-get install -y chromium", file=sys.stderr)
        return 2
    try:
        if not args.static_only:
            import playwright  # noqa: F401
    except ImportError:
        print("browser_check: the Python package 'playwright' is missing (pip install -r requirements.txt;"
              " never 'playwright install': the check drives the system Chromium)", file=sys.stderr)
        return 2

    toc = args.toc if args.toc is not None else default_toc(html_dir)
    if args.pages:
        pages = [re.sub(r"\.html$", "", p).strip("/") for p in args.pages]
        source = "--pages"
    elif toc is not None:
        if not toc.is_file():
            print(f"browser_check: --toc {toc} does not exist", file=sys.stderr)
            return 2
        pages = toc_pages(toc)
        source = str(toc)
    else:
        pages = all_pages(html_dir)
        source = "every HTML page (no _toc.yml found)"
    if not pages:
        print(f"browser_check: no pages to check in {html_dir}", file=sys.stderr)
        return 2

    print(f"[browser-check] {len(pages)} page(s) from {source}; "
          + ("reading rules only" if args.static_only else f"Chromium {chromium}"))
    t0 = time.perf_counter()
    if args.static_only:
        results = check_static(html_dir, pages, toc=toc, max_code=args.max_code, stages_page=args.stages_page)
    else:
        try:
            results = check_site(html_dir, pages, toc=toc, chromium=chromium, screenshots=args.screenshots,
                                 timeout_s=args.timeout, min_images_notebook=args.min_images,
                                 strict_js=args.strict_js, max_code=args.max_code,
                                 stages_page=args.stages_page)
        except Exception as e:  # the browser did not start: a set-up problem, not a finding
            print(f"browser_check: could not drive Chromium {chromium}: {type(e).__name__}: {e}",
                  file=sys.stderr)
            return 2
    seconds = time.perf_counter() - t0
    if not (html_dir / "index.html").is_file():
        results.append(PageResult(page="index.html", problems=["index.html is missing"]))
    if args.json is not None:
        _write_json_atomic(args.json, {"html_dir": str(html_dir), "seconds": round(seconds, 2),
                                       "pages": [asdict(r) for r in results]})

    n_bad = 0
    grouped: dict[str, list[str]] = {}
    for r in results:
        for n in r.notes:
            grouped.setdefault(re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1", n), []).append(r.page)
    for n, where in grouped.items():
        at = ", ".join(where) if len(where) <= 3 else f"{len(where)} pages"
        print(f"  note  [{at}] {n}")
    for r in results:
        for p in r.problems:
            n_bad += 1
            print(f"  FAIL  {r.page}: {p}")
    chapters = [r for r in results if r.notebook]
    print(f"[browser-check] as read: {len(chapters)} chapter page(s), "
          f"{sum(r.machine_paths for r in chapters)} machine path(s) and {sum(r.log_lines for r in chapters)} "
          f"log line(s) in outputs, {sum(r.wide_code_lines for r in chapters)} code line(s) over "
          f"{args.max_code} characters")
    status = "OK" if n_bad == 0 else f"{n_bad} problem(s)"
    shots = f"; screenshots in {args.screenshots}" if args.screenshots is not None else ""
    print(f"[browser-check] {status}: {len(results)} page(s), "
          f"{sum(r.images for r in results)} image(s), {sum(r.links_checked for r in results)} internal "
          f"link(s) checked in {seconds:.1f} s{shots}")
    return 0 if n_bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
