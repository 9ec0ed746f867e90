"""The built-site check of the documentation (docs/_ext/site_check.py) finds what it is for."""

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "docs" / "_ext"))
import site_check  # noqa: E402

GOOD_API_PAGE = '<pre><span class="gp">&gt;&gt;&gt; </span>f(1)</pre>'


def _site(tmp_path, pages: dict[str, str]) -> pathlib.Path:
  for name, body in pages.items():
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<html><body>{body}</body></html>", encoding="utf-8")
  return tmp_path


def test_a_sound_site_passes(tmp_path):
  site = _site(tmp_path, {
      "index.html": '<a href="guide.html#setup">setup</a> <a href="#top" id="top">top</a>'
                    ' <a href="https://example.org/x.js">a link a reader clicks</a>'
                    ' <script src="_static/local.js"></script>',
      "guide.html": '<h2 id="setup">Setup</h2>',
      "_static/local.js": "",
      "api/_autosummary/attn_jax.core.masks.html": GOOD_API_PAGE,
  })
  assert site_check.check_site(site) == []


def test_each_problem_is_reported(tmp_path):
  site = _site(tmp_path, {
      "index.html": '<a href="missing.html">gone</a> <a href="guide.html#nowhere">anchor</a>'
                    ' <script src="https://cdn.example.org/mathjax.js"></script>'
                    ' <link rel="stylesheet" href="//fonts.example.org/font.css">',
      "guide.html": '<h2 id="setup">Setup</h2>',
      "api/_autosummary/attn_jax.core.masks.html": "<p>no example here</p>",
  })
  problems = site_check.check_site(site)
  assert len(problems) == 5, problems
  text = "\n".join(problems)
  for expected in ("broken link <a> to 'missing.html'", "broken anchor 'guide.html#nowhere'",
                   "loads from the network: <script src='https://cdn.example.org/mathjax.js'>",
                   "loads from the network: <link href='//fonts.example.org/font.css'>",
                   "api/_autosummary/attn_jax.core.masks.html: API page without an example"):
    assert expected in text, text
