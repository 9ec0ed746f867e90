"""Every notebook page downloadable as ``.ipynb``, with the outputs of this build.

myst-nb writes each executed notebook to ``jupyter_execute/`` beside the HTML output folder; at
the end of an HTML build this copies them into the site as ``_notebooks/<page>.ipynb``, the path
a page links to (the primer does, at its top). It runs before the site check
(docs/_ext/site_check.py), which then finds a link to a notebook that was not written.
"""

import shutil
from pathlib import Path

FOLDER = "_notebooks"


def copy_notebooks(app, exception):
  if exception is not None or app.builder.format != "html":
    return
  executed = Path(app.outdir).parent / "jupyter_execute"
  for notebook in sorted(executed.rglob("*.ipynb")):
    target = Path(app.outdir) / FOLDER / notebook.relative_to(executed)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(notebook, target)


def setup(app):
  app.connect("build-finished", copy_notebooks, priority=400)  # before the site check (500)
  return {"parallel_read_safe": True, "parallel_write_safe": True}
