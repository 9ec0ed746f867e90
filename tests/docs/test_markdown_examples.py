"""Every ```python block of the README and of the plain-Markdown documentation runs.

A file's blocks run in order, in one fresh interpreter (a reader follows a page top to bottom, and
a later block may use an earlier one's names), from the repository root. A failure names the
Markdown file and the line. Notebooks (Markdown with a ``kernelspec``) are executed by the
documentation build instead, and the generated API pages hold no examples.
"""

import json
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
SKIPPED_DOCS = ("_build", "results", "api/_autosummary", "jupyter_execute")
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})(?P<info>[^\n`]*)$")

# Runs the blocks given as JSON on stdin; each one is compiled under its Markdown file's name with
# its first line at the block's line there, so a traceback points into the Markdown.
RUNNER = textwrap.dedent("""
    import json, sys
    namespace = {"__name__": "__main__"}
    for block in json.load(sys.stdin):
      source = "\\n" * (block["line"] - 1) + block["code"]
      exec(compile(source, block["path"], "exec"), namespace)
""")


def is_notebook(path: pathlib.Path) -> bool:
  text = path.read_text(encoding="utf-8")
  return text.startswith("---") and "kernelspec:" in text.split("\n---", 1)[0]


def markdown_files() -> list[pathlib.Path]:
  """README.md, the benchmarks' README (a page of the docs) and every plain-Markdown page."""
  pages = [
      p for p in sorted(DOCS.rglob("*.md"))
      if not any(p.relative_to(DOCS).as_posix().startswith(s) for s in SKIPPED_DOCS)
      and not is_notebook(p)]
  return [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *pages]


def python_blocks(path: pathlib.Path, root: pathlib.Path = ROOT) -> list[dict]:
  """The ```python (or ```py) fenced blocks of a Markdown file: its path relative to ``root``,
  the block's first line (1-based) and its code."""
  blocks, lines = [], path.read_text(encoding="utf-8").splitlines()
  i = 0
  while i < len(lines):
    match = FENCE.match(lines[i])
    if not match:
      i += 1
      continue
    fence, indent = match["fence"], len(match["indent"])
    language = match["info"].strip().split(" ")[0].lower()
    start = i + 1
    i = start
    while i < len(lines) and not lines[i].strip().startswith(fence):
      i += 1
    if language in ("python", "py", "python3"):
      code = "\n".join(line[indent:] for line in lines[start:i])
      blocks.append({"path": str(path.relative_to(root)), "line": start + 1, "code": code})
    i += 1
  return blocks


FILES_WITH_EXAMPLES = [p for p in markdown_files() if python_blocks(p)]


def test_readme_has_examples():
  # Guards the collection itself: if the fence parsing broke, nothing below would run.
  assert python_blocks(ROOT / "README.md"), "no ```python block found in README.md"
  assert ROOT / "README.md" in FILES_WITH_EXAMPLES


@pytest.mark.parametrize(
    "path", FILES_WITH_EXAMPLES, ids=[str(p.relative_to(ROOT)) for p in FILES_WITH_EXAMPLES])
def test_python_blocks_run(path):
  blocks = python_blocks(path)
  result = subprocess.run(
      [sys.executable, "-c", RUNNER], input=json.dumps(blocks), capture_output=True, text=True,
      cwd=ROOT, timeout=600)
  assert result.returncode == 0, (
      f"a ```python block of {path.relative_to(ROOT)} failed:\n{result.stderr[-4000:]}")


def test_fence_parser_reads_indented_and_tilde_fences(tmp_path):
  page = tmp_path / "page.md"
  page.write_text("text\n\n- item\n\n  ```python\n  x = 1\n  ```\n\n~~~py\ny = 2\n~~~\n"
                  "```bash\nz = 3\n```\n````python\n```\nw = 4\n````\n")
  blocks = [(b["line"], b["code"]) for b in python_blocks(page, root=tmp_path)]
  assert blocks == [(6, "x = 1"), (10, "y = 2"), (16, "```\nw = 4")]
