"""Sphinx configuration of the attn_jax documentation.

Build (warnings are errors; the notebooks are executed, never read from stored outputs):

    python -m pip install -e ".[docs]" && sphinx-build -W -b html docs docs/_build/html
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "_ext"))

# The notebooks compile many small programs: the XLA flags the experiment entry points use on CPU
# halve the compile time. Set before jax starts; the notebook kernels inherit the environment.
from experiments import cpu_flags  # noqa: E402

cpu_flags.use_fast_cpu_compile()

import attn_jax  # noqa: E402

project = "attn_jax"
author = "the attn_jax authors"
copyright = "the attn_jax authors"  # noqa: A001 (Sphinx's name)
release = version = attn_jax.__version__

extensions = [
    "myst_nb",  # MyST Markdown pages and notebooks (brings myst_parser)
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",  # the Google-style "Args:" / "Returns:" sections
    "sphinx.ext.viewcode",
    "api_reference",  # docs/_ext/api_reference.py: module pages, coverage, backtick names
    "mathml",  # docs/_ext/mathml.py: formulas converted to MathML at build time (no script)
    "benchmark_tables",  # docs/_ext/benchmark_tables.py: tables from benchmarks/results/*.json
    "notebook_download",  # docs/_ext/notebook_download.py: the executed notebooks as .ipynb
    "site_check",  # docs/_ext/site_check.py: links, anchors, nothing from the network, examples
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"
# guides/_*.md: sections included by a guide, not pages of their own.
exclude_patterns = ["_build", "results", "**.ipynb_checkpoints", "jupyter_execute", "guides/_*.md"]
templates_path = ["_templates"]

# A missing or broken reference is an error under -W. Names outside the project (jax, flax,
# numpy, ...) cannot be linked without network access at build time; they are rendered as code.
nitpicky = True

# ----- API reference ------------------------------------------------------------------------
# One page per module listed in docs/api/index.md; a module page lists and documents every public
# name of the module (its __all__, or the functions and classes it defines).
autosummary_generate = True
autosummary_ignore_module_all = False
autodoc_member_order = "bysource"
autodoc_preserve_defaults = True  # `score_fn=dot`, not `<function dot at 0x..>`
autodoc_typehints = "signature"
autodoc_class_signature = "mixed"
autoclass_content = "class"
add_module_names = False
python_maximum_signature_line_length = 100
# Docstrings write names in single backticks (`attend`, `attn_jax.core`): they become links.
default_role = "py:obj"
napoleon_google_docstring = True
napoleon_numpy_docstring = False

# ----- notebooks ----------------------------------------------------------------------------
nb_execution_mode = "force"  # execute every notebook at every build; stored outputs are ignored
nb_execution_timeout = 600  # seconds per cell
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True
myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3

# ----- HTML ---------------------------------------------------------------------------------
html_math_renderer = "mathml"  # no MathJax: the site loads nothing from the network
html_theme = "sphinx_book_theme"
html_title = "attn_jax"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_theme_options = {
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "use_download_button": True,
}
