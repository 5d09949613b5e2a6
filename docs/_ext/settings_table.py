"""The ``settings-table`` directive: the configuration table, made from the package's own.

``flask_async_request.config.SETTINGS`` is the one table of keys, defaults and
meanings; the docs draw it rather than copy it, so they cannot drift from the code.
"""

from __future__ import annotations

from typing import Any

from flask_async_request.config import SETTINGS, default_source


def table_lines() -> list[str]:
    """The reST of the table: one row per setting, in the order of ``SETTINGS``."""
    lines = [
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 32 22 46",
        "",
        "   * - key",
        "     - default",
        "     - meaning",
    ]
    for key, setting in SETTINGS.items():
        lines += [
            f"   * - ``{key}``",
            f"     - ``{default_source(setting.default)}``",
            f"     - {setting.meaning}",
        ]
    return lines


def setup(app: Any) -> dict[str, Any]:
    # Sphinx is imported here, not at the top, so that the tests read the
    # table's lines (table_lines) where only the dev tools are installed.
    from docutils import nodes
    from docutils.statemachine import StringList
    from sphinx.util.docutils import SphinxDirective

    class SettingsTable(SphinxDirective):
        """Draw the table of every setting, its default and its meaning."""

        def run(self) -> list[nodes.Node]:
            container = nodes.container()
            source = StringList(table_lines(), source="flask_async_request/config.py")
            self.state.nested_parse(source, self.content_offset, container)
            return list(container.children)

    app.add_directive("settings-table", SettingsTable)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
