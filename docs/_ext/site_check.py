"""Checks on the built HTML that a Sphinx build cannot see, run at the end of every HTML build.

Each problem is a warning, so an error under ``-W`` (the README's docs command and CI):

- **Local links and anchors.** Every relative ``href`` / ``src`` of every page names a file of the
  built site, and a ``#fragment`` names an ``id`` on the page it points to.
- **Nothing from the network.** No script, stylesheet, font, image or frame is loaded from another
  host (``http:``, ``https:`` or ``//``): the site works offline and behind a firewall. Links a
  reader clicks (``<a href="https://...">``) are fine.
- **Examples on the API pages.** Every module page of the API reference shows at least one
  ``>>>`` example, unless its module is a known gap of tests/docs/missing_examples_allowlist.txt
  (the doctests themselves run in tests/docs/test_docstring_examples.py, which also checks that
  every public name has one).
"""

import posixpath
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

from public_api import missing_examples_allowlist

API_PAGES = "api/_autosummary"
# Attributes that make the browser fetch something when the page loads.
_LOADED = {("script", "src"), ("img", "src"), ("iframe", "src"), ("source", "src"),
           ("video", "src"), ("audio", "src"), ("embed", "src"), ("object", "data")}
_LOADING_LINK_RELS = {"stylesheet", "preload", "modulepreload", "icon", "shortcut", "prefetch"}


class _Page(HTMLParser):
  def __init__(self):
    super().__init__(convert_charrefs=True)
    self.ids: set[str] = set()
    self.links: list[tuple[str, str]] = []  # (tag, url): followed or loaded
    self.remote_loads: list[str] = []
    self.prompts = 0
    self._in_gp = False

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    for name in ("id", "name"):
      if attrs.get(name):
        self.ids.add(attrs[name])
    for attr in ("href", "src", "data"):
      url = attrs.get(attr)
      if not url:
        continue
      remote = _is_remote(url)
      rels = set((attrs.get("rel") or "").lower().split())
      loads = (tag, attr) in _LOADED or (tag == "link" and rels & _LOADING_LINK_RELS)
      if remote and loads:
        self.remote_loads.append(f"<{tag} {attr}={url!r}>")
      if not remote and tag in ("a", "link", "img", "script", "iframe", "source"):
        self.links.append((tag, url))
    if tag == "span" and "gp" in (attrs.get("class") or "").split():
      self._in_gp = True

  def handle_endtag(self, tag):
    self._in_gp = False

  def handle_data(self, data):
    if self._in_gp and data.strip() == ">>>":
      self.prompts += 1


def _is_remote(url: str) -> bool:
  scheme = urlsplit(url).scheme
  return url.startswith("//") or scheme in ("http", "https", "ftp")


def check_site(outdir: Path) -> list[str]:
  """Every problem of the built site in ``outdir``, one line each (empty: none)."""
  pages = {}
  for path in sorted(outdir.rglob("*.html")):
    if path.relative_to(outdir).parts[0] == "_static":
      continue  # the theme's template fragments, not pages
    page = _Page()
    page.feed(path.read_text(encoding="utf-8", errors="replace"))
    pages[path.relative_to(outdir).as_posix()] = page
  problems = []
  known_gaps = missing_examples_allowlist()
  for name, page in pages.items():
    for url in page.remote_loads:
      problems.append(f"{name}: loads from the network: {url}")
    for tag, url in page.links:
      parts = urlsplit(url)
      if parts.scheme:  # mailto:, javascript:, data: ...
        continue
      target = name
      if parts.path:
        target = posixpath.normpath(posixpath.join(posixpath.dirname(name), unquote(parts.path)))
        if target.startswith("../") or not (outdir / target).exists():
          problems.append(f"{name}: broken link <{tag}> to {url!r} (no file {target})")
          continue
        if (outdir / target).is_dir():
          if (outdir / target / "index.html").exists():
            target = posixpath.join(target, "index.html")
          else:
            problems.append(f"{name}: link to {url!r} names a folder, not a page")
            continue
      fragment = unquote(parts.fragment)
      if fragment and target.endswith(".html") and fragment not in pages[target].ids:
        problems.append(f"{name}: broken anchor {url!r} (no id {fragment!r} in {target})")
    module = name.removeprefix(API_PAGES + "/").removesuffix(".html")
    if name.startswith(API_PAGES + "/") and page.prompts == 0 and module not in known_gaps:
      problems.append(f"{name}: API page without an example (no '>>>' line)")
  return problems


def on_build_finished(app, exception):
  from sphinx.util import logging  # here, so that check_site runs without Sphinx (the tests)

  if exception is not None or app.builder.format != "html":
    return
  logger = logging.getLogger(__name__)
  for problem in check_site(Path(app.outdir)):
    logger.warning("site check: %s", problem)


def setup(app):
  app.connect("build-finished", on_build_finished)
  return {"parallel_read_safe": True, "parallel_write_safe": True}
