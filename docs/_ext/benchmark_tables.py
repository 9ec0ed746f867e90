"""The benchmarks' numbers on the documentation pages, straight from the committed JSON.

- The ``benchmark-table`` directive renders one table of `benchmarks.report` by its name
  (``attention_fwd_bwd``, ``mods_targets``, ``train_step``, ...; machine lines too), so a page
  shows the numbers of ``benchmarks/results/*.json`` and never a stale copy::

      ```{benchmark-table} attention_fwd_bwd
      ```

- An included Markdown file (the benchmarks' own README, on the development-notes page) loses
  its ``<!-- report:NAME -->`` markers before it is parsed: an HTML comment inside a paragraph
  would end the paragraph there and leave the rest as stray text.
"""

import re
import sys
from pathlib import Path

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective

ROOT = Path(__file__).resolve().parents[2]
_MARKER = re.compile(r"[ \t]*<!-- /?report:[a-z_]+ -->[ \t]*")


def strip_report_markers(text: str) -> str:
  """The text without its report markers; a marker alone on its line takes the line with it."""
  lines = []
  for line in text.split("\n"):
    if _MARKER.fullmatch(line):
      continue
    lines.append(_MARKER.sub("", line))
  return "\n".join(lines)


def on_include_read(app, relative_path, parent_docname, content):
  content[0] = strip_report_markers(content[0])


def _tables() -> dict[str, str]:
  if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
  from benchmarks import report

  return report.tables()


class BenchmarkTable(SphinxDirective):
  required_arguments = 1
  has_content = False

  def run(self):
    tables = _tables()
    name = self.arguments[0]
    if name not in tables:
      raise self.error(f"benchmark-table: no table {name!r}; known: {', '.join(tables)}")
    for path in sorted((ROOT / "benchmarks" / "results").glob("*.json")):
      self.env.note_dependency(str(path))
    container = nodes.container(classes=["benchmark-table"])
    self.state.nested_parse(StringList(tables[name].splitlines(), source=f"benchmarks:{name}"),
                            self.content_offset, container)
    return container.children


def setup(app):
  app.add_directive("benchmark-table", BenchmarkTable)
  app.connect("include-read", on_include_read)
  return {"parallel_read_safe": True, "parallel_write_safe": True}
