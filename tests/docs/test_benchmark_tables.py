"""The benchmark tables in README.md and benchmarks/README.md are the committed JSON's numbers.

Each table sits between ``<!-- report:NAME -->`` markers and must equal what
`benchmarks.report` renders from benchmarks/results/*.json (``python -m benchmarks.report
--write`` regenerates them after a new benchmark run).
"""

import pytest

from benchmarks import report


@pytest.mark.parametrize("path", report.READMES, ids=lambda p: p.parent.name + "/" + p.name)
def test_marked_tables_equal_the_committed_json(path):
  text = path.read_text()
  assert report.MARKER.search(text), f"{path.name} has no benchmark table"
  assert report.rewrite(text, report.tables()) == text, (
      f"{path.name}'s tables differ from benchmarks/results: run python -m benchmarks.report "
      "--write")


def test_rewrite_replaces_only_the_marked_block():
  text = "a\n<!-- report:mods -->\nold\n<!-- /report:mods -->\nb\n"
  assert report.rewrite(text, {"mods": "new"}) == (
      "a\n<!-- report:mods -->\nnew\n<!-- /report:mods -->\nb\n")
