"""Showing results: region contexts as HTML, plots, a dictionary browser, and what every notebook calls (setup,
results). Draws what it is given; imports nothing from the layers that talk to a model.
"""

from .browser import browser

__all__ = ["browser"]
