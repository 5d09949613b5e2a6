"""The README's quickstart runs as written, its settings table is the package's, and its
chapter list and commands are those of the docs and the project."""

from __future__ import annotations

import importlib
import json
import sys
import time
from pathlib import Path

import docutils.core
import pytest
from docutils import nodes

from flask_async_request.config import SETTINGS, default_source
from tests.conftest import Internals

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.rst"


def quickstart_code() -> str:
    text = README.read_text()
    start = text.index(".. code-block:: python\n\n    import json\n    from flask import Flask\n")
    block = text[start:].split("\n\n", 1)[1].split("\n\nSave it as")[0]
    return "\n".join(line[4:] for line in block.splitlines()) + "\n"


def test_quickstart_is_short() -> None:
    """The quickstart reaches a working endpoint in under 20 lines of code."""
    lines = [line for line in quickstart_code().splitlines() if line.strip()]
    assert len(lines) < 20


def test_quickstart_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, internals: Internals
) -> None:
    """Saved as quickstart.py, it answers 202 and then the sum."""
    (tmp_path / "quickstart.py").write_text(quickstart_code())
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("quickstart")
    try:
        client = module.app.test_client()
        created = client.post("/sums/1000")
        assert created.status_code == 202
        headers = {"X-JOB-AUTHORIZATION": f"Bearer {created.json['token']}"}
        deadline = time.monotonic() + 30
        while (response := client.get("/async_request/job", headers=headers)).status_code == 202:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert json.loads(response.json["response"]["body"]) == {"sum": 332833500}
    finally:
        internals.embedded_worker(module.app).stop()
        sys.modules.pop("quickstart", None)


def text_of(rst: str) -> str:
    """The text a piece of reST shows, with its whitespace collapsed."""
    doctree = docutils.core.publish_doctree(rst, settings_overrides={"report_level": 5})
    return " ".join(doctree.astext().split())


def readme_settings_rows() -> list[tuple[str, ...]]:
    """The rows of the table in the README's Configuration section."""
    doctree = docutils.core.publish_doctree(README.read_text())
    section = next(s for s in doctree.findall(nodes.section) if s[0].astext() == "Configuration")
    table = next(section.findall(nodes.table))
    rows = table.findall(nodes.row)
    return [tuple(" ".join(e.astext().split()) for e in row.children) for row in rows][1:]


def test_readme_settings_table_is_the_package_table() -> None:
    """The README lists every setting of config.SETTINGS, in order, with its default and meaning."""
    expected = [
        (key, default_source(setting.default), text_of(setting.meaning))
        for key, setting in SETTINGS.items()
    ]
    assert readme_settings_rows() == expected


def toctree_chapters() -> list[str]:
    """The documents of the toctrees of docs/index.rst, in order."""
    chapters: list[str] = []
    in_toctree = False
    for line in (ROOT / "docs" / "index.rst").read_text().splitlines():
        if line.startswith(".. toctree::"):
            in_toctree = True
        elif in_toctree and line.startswith("   ") and not line.strip().startswith(":"):
            chapters.append(line.strip())
        elif in_toctree and line and not line.startswith(" "):
            in_toctree = False
    return chapters


def readme_chapter_links() -> list[str]:
    """The targets of the links in the README's Documentation section, in order."""
    doctree = docutils.core.publish_doctree(README.read_text())
    section = next(s for s in doctree.findall(nodes.section) if s[0].astext() == "Documentation")
    return [ref["refuri"] for ref in section.findall(nodes.reference) if "refuri" in ref]


def test_readme_lists_every_docs_chapter() -> None:
    """Each chapter of the docs' table of contents is linked from the README, in its order."""
    chapters = toctree_chapters()
    assert "testing" in chapters
    # docs/changes.rst only includes CHANGES.rst, which the README links itself.
    expected = [
        "CHANGES.rst" if chapter == "changes" else f"docs/{chapter}.rst" for chapter in chapters
    ]
    linked = [uri for uri in readme_chapter_links() if uri.endswith(".rst")]
    assert [next((e for e in expected if uri.endswith(e)), uri) for uri in linked] == expected


def test_readme_curl_commands_show_the_status_code() -> None:
    """Each curl command of the README prints the status code its comments show."""
    commands = [line.strip() for line in README.read_text().splitlines()]
    commands = [line for line in commands if line.startswith("curl ")]
    assert commands
    for command in commands:
        flags = command.split()
        assert "%{http_code}" in command or "-i" in flags or "-si" in flags, command


def readme_commands() -> list[str]:
    """The shell commands of the README's literal blocks, one per line."""
    doctree = docutils.core.publish_doctree(README.read_text())
    return [
        line.strip()
        for block in doctree.findall(nodes.literal_block)
        for line in block.astext().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


def test_readme_set_up_commands_upgrade_pip_before_using_groups() -> None:
    """A README command that installs a dependency group upgrades pip first (groups need 25.1)."""
    commands = [c for c in readme_commands() if "--group" in c]
    assert {"dev", "docs"} <= {c.split("--group ", 1)[1].split()[0] for c in commands}
    for command in commands:
        steps = command.split(" && ")
        group = next(i for i, step in enumerate(steps) if "--group" in step)
        venv = steps.index("python3 -m venv .venv")
        assert ".venv/bin/pip install -U pip" in steps[venv:group], command


def test_ci_runs_the_readme_set_up_commands_as_written() -> None:
    """.ci/run runs the README's test and docs commands verbatim, as on a fresh machine."""
    script = ROOT / ".ci" / "run"
    if not script.exists():
        pytest.skip("the sdist holds no .ci/run")
    ci = script.read_text()
    commands = [c for c in readme_commands() if "--group" in c]
    assert commands
    for command in commands:
        assert command in ci, command


def test_readme_docs_command_builds_nitpicky_with_warnings_as_errors() -> None:
    """The docs command checks every cross-reference and fails on any warning."""
    (command,) = [c for c in readme_commands() if "--group docs" in c]
    build = command.split(" && ")[-1].split()
    assert build[0] == ".venv/bin/sphinx-build"
    assert {"-n", "-W"} <= set(build)
