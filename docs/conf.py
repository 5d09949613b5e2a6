"""Sphinx configuration of the flask-async-request documentation."""

from __future__ import annotations

import sys
from importlib.metadata import version as installed_version
from pathlib import Path

# The directive that draws the configuration table lives beside this file.
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
]

exclude_patterns = ["_build", "examples"]
templates_path: list[str] = []

autodoc_member_order = "bysource"
autodoc_typehints = "description"
# Types only where the docstring says what a parameter is; the signature shows the rest.
autodoc_typehints_description_target = "documented_params"

html_theme = "furo"
html_title = f"flask-async-request {release}"
