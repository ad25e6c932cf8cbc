"""Sphinx configuration of the rendered book (`make book`): MyST-NB over the executed notebooks."""

project = "Exemplar Partitioning, step by step"
author = "ep-tutorial contributors"
extensions = ["myst_nb"]
html_theme = "sphinx_book_theme"
html_title = project
html_theme_options = {"repository_url": "https://github.com/ep-tutorial/ep-tutorial", "use_repository_button": True}
nb_execution_mode = "off"  # the chapters are notebooks already executed by `make tutorial` / the tests
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 2  # glossary.md#spherical-centre: the anchors GitHub makes for the same headings
exclude_patterns = ["_build", "**.ipynb_checkpoints", "build_book.py"]
suppress_warnings = ["mystnb.unknown_mime_type"]
