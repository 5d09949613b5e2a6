"""Sphinx configuration of the flask-async-request documentation."""

from __future__ import annotations

import sys
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any

from sphinx.pycode import ModuleAnalyzer

# The project's own extensions (the configuration table, the inventories) live here.
sys.path.insert(0, str(Path(__file__).parent / "_ext"))

project = "flask-async-request"
author = "flask-async-request contributors"
copyright = "flask-async-request contributors"
release = installed_version("flask-async-request")
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    "settings_table",
    # Intersphinx, with inventories of the objects of other projects that the docs
    # link to written at build time: no download.
    "offline_inventories",
]

# Every reference must find its target: sphinx-build -W fails on one that does not.
nitpicky = True
nitpick_ignore = [
    # Type variables of decorators' signatures; they have no page of their own.
    ("py:class", "flask_async_request.asyncview.F"),
    ("py:class", "flask_async_request.extension.C"),
    # The standard library has no pages here: the polling's steps are a Generator,
    # the events an Iterator, or an AsyncIterator in asyncio.
    ("py:class", "collections.abc.Generator"),
    ("py:class", "collections.abc.Iterator"),
    ("py:class", "collections.abc.AsyncIterator"),
    ("py:class", "os.PathLike"),
]

exclude_patterns = ["_build", "examples"]
templates_path: list[str] = []

autodoc_member_order = "bysource"
autodoc_typehints = "description"
# What a worker's execute returns, named rather than spelled out in other libraries' types.
autodoc_type_aliases = {"Reply": "flask_async_request.worker.Reply"}
# Types only where the docstring says what a parameter is; the signature shows the rest.
autodoc_typehints_description_target = "documented_params"

html_theme = "furo"
html_title = f"flask-async-request {release}"


def show_the_signature_to_call(app: Any) -> None:
    """Document ``Job.create_and_enqueue`` by its signature, not by its overloads.

    The overloads let type checkers check a call's arguments against the worker's
    ``execute``; autodoc would show them, with their type variables, in place of
    the signature a caller writes.
    """
    analyzer = ModuleAnalyzer.for_module("flask_async_request.models")
    analyzer.analyze()
    analyzer.overloads.pop("Job.create_and_enqueue")


def setup(app: Any) -> None:
    app.connect("builder-inited", show_the_signature_to_call)
