"""Showing results: region contexts as HTML, plots, a dictionary browser, S² to rotate, and what every notebook calls
(setup, results, its closing summary). Draws what it is given; imports nothing from the layers that talk to a model.
"""

from . import (
    display,  # noqa: F401  (registers the renderer a Region shows itself with)
    summary,
)
from .browser import browser
from .notebook import markdown
from .sphere import sphere_figure, sphere_html

__all__ = ["browser", "markdown", "sphere_figure", "sphere_html", "summary"]
