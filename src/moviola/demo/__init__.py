"""``moviola demo``: a local web page to generate videos from the shipped (or given) models and compare them.

The model logic (checking a request, sampling, writing the files, the gallery) is :mod:`moviola.demo.core`, which
needs no UI; the page is :mod:`moviola.demo.app` (Gradio, the ``demo`` extra: ``pip install 'moviola[demo]'``).
See docs/demo.md.
"""
from moviola.demo.core import DemoError, DemoModel, Record, Request, Studio, write_webm

__all__ = ["DemoError", "DemoModel", "Record", "Request", "Studio", "write_webm"]
