"""Intersphinx inventories of the objects of other projects that the docs link to.

The docs are built where only package registries can be reached, so the
``objects.inv`` of Python, Flask or SQLAlchemy cannot be downloaded at build
time. :data:`INVENTORIES` names each object of theirs that the docs refer to and
the page of the project's own documentation that describes it; the build writes
it as one small inventory per project, and intersphinx links to those pages. A
reference to an object missing here is a warning of the nitpicky build: add the
object, with its page, to its project's table.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any, NamedTuple

from sphinx.application import Sphinx
from sphinx.config import Config


class Inventory(NamedTuple):
    """One project's documented objects, as intersphinx needs them."""

    project: str
    #: Where the project's documentation is published; each uri is relative to it.
    url: str
    #: Object name -> (``domain:role``, uri of its page and anchor; ``$`` stands for the name).
    objects: dict[str, tuple[str, str]]


INVENTORIES = {
    "python": Inventory(
        "Python",
        "https://docs.python.org/3/",
        {
            "collections.abc.Callable": ("py:class", "library/collections.abc.html#$"),
            "collections.abc.Iterable": ("py:class", "library/collections.abc.html#$"),
            "collections.abc.Mapping": ("py:class", "library/collections.abc.html#$"),
            "datetime.datetime": ("py:class", "library/datetime.html#$"),
            "datetime.timedelta": ("py:class", "library/datetime.html#$"),
            "http.HTTPStatus": ("py:class", "library/http.html#$"),
            "urllib": ("py:module", "library/urllib.html#module-urllib"),
            "urllib.request.urlopen": ("py:function", "library/urllib.request.html#$"),
        },
    ),
    "flask": Inventory(
        "Flask",
        "https://flask.palletsprojects.com/en/stable/",
        {"flask.Flask": ("py:class", "api/#$")},
    ),
    "flask-sqlalchemy": Inventory(
        "Flask-SQLAlchemy",
        "https://flask-sqlalchemy.readthedocs.io/en/stable/",
        {"flask_sqlalchemy.SQLAlchemy": ("py:class", "api/#$")},
    ),
    "sqlalchemy": Inventory(
        "SQLAlchemy",
        "https://docs.sqlalchemy.org/en/20/",
        {
            "sqlalchemy.orm.Mapped": ("py:class", "orm/internals.html#$"),
            # Where the class is defined, which is how the model's annotations
            # name it; SQLAlchemy documents it as sqlalchemy.orm.Mapped.
            "sqlalchemy.orm.base.Mapped": ("py:class", "orm/internals.html#sqlalchemy.orm.Mapped"),
            # The types of a statement's forms, by the modules that define them.
            "sqlalchemy.sql.base.Executable": (
                "py:class",
                "core/selectable.html#sqlalchemy.sql.expression.Executable",
            ),
            "sqlalchemy.sql.dml.Update": (
                "py:class",
                "core/dml.html#sqlalchemy.sql.expression.Update",
            ),
            "sqlalchemy.sql.elements.ColumnElement": (
                "py:class",
                "core/sqlelement.html#sqlalchemy.sql.expression.ColumnElement",
            ),
            "sqlalchemy.orm.attributes.QueryableAttribute": (
                "py:class",
                "orm/internals.html#sqlalchemy.orm.QueryableAttribute",
            ),
        },
    ),
}


def inventory_bytes(inventory: Inventory) -> bytes:
    """``inventory`` in the format of a Sphinx ``objects.inv`` (version 2)."""
    header = (
        "# Sphinx inventory version 2\n"
        f"# Project: {inventory.project}\n"
        "# Version: \n"
        "# The remainder of this file is compressed using zlib.\n"
    )
    lines = "".join(
        f"{name} {role} 1 {uri} -\n" for name, (role, uri) in sorted(inventory.objects.items())
    )
    return header.encode() + zlib.compress(lines.encode())


def write_inventories(app: Sphinx, config: Config) -> None:
    """Write the inventories beside the build's doctrees and point intersphinx at them."""
    directory = Path(app.doctreedir) / "inventories"
    directory.mkdir(parents=True, exist_ok=True)
    mapping: dict[str, tuple[str, str]] = {}
    for name, inventory in INVENTORIES.items():
        path = directory / f"{name}.inv"
        path.write_bytes(inventory_bytes(inventory))
        mapping[name] = (inventory.url, str(path))
    config.intersphinx_mapping = mapping


def setup(app: Sphinx) -> dict[str, Any]:
    app.setup_extension("sphinx.ext.intersphinx")
    # Before intersphinx checks the mapping (priority 800) and loads it.
    app.connect("config-inited", write_inventories, priority=500)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
