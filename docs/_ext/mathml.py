"""Math rendered at build time to MathML, so a page shows its formulas with no script and no
network (a browser renders MathML natively).

Registers the HTML math renderer ``mathml``: every ``$...$`` / ``$$...$$`` (MyST's dollarmath) and
every ``math`` role or directive is converted with `latex2mathml` when the page is written. A
formula the converter cannot read is a build warning (an error under ``-W``), not raw TeX on the
page.
"""

import html

from docutils import nodes
from latex2mathml.converter import convert
from sphinx.util import logging

logger = logging.getLogger(__name__)


def _mathml(node, latex: str, display: str) -> str:
  try:
    return convert(latex.strip(), display=display)
  except Exception as error:  # noqa: BLE001 (the converter raises many kinds)
    logger.warning("math: cannot convert %r to MathML (%s)", latex, error, location=node)
    return f"<code>{html.escape(latex)}</code>"


def visit_math(self, node):
  self.body.append(
      f'<span class="math">{_mathml(node, node.astext(), "inline")}</span>')
  raise nodes.SkipNode


def visit_math_block(self, node):
  number = node.get("number")
  label = ""
  if number:
    label = f'<span class="eqno">({number})</span>'
  ids = " ".join(node.get("ids", []))
  id_attr = f' id="{ids}"' if ids else ""
  self.body.append(f'<div class="math mathml-block"{id_attr}>'
                   f'{_mathml(node, node.astext(), "block")}{label}</div>\n')
  raise nodes.SkipNode


def setup(app):
  app.add_html_math_renderer("mathml", (visit_math, None), (visit_math_block, None))
  return {"parallel_read_safe": True, "parallel_write_safe": True}
