"""Packaging: the metadata, the declared dependencies, and what works without the optional ones."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import textwrap
import urllib.parse
from pathlib import Path
from typing import Any

import docutils.core
import jwt.algorithms
import pytest
from docutils import nodes

import flask_async_request
from flask_async_request import ConfigurationError
from tests.conftest import AppFactory

ROOT = Path(__file__).resolve().parents[1]
REPOSITORY = "https://github.com/flask-async-request/flask-async-request"
#: Imported by the package without being its dependency: pytest loads the pytest plugin.
NOT_DEPENDENCIES = {"pytest"}

#: Run first in a subprocess: cryptography cannot be imported, as if it were not installed.
WITHOUT_CRYPTOGRAPHY = """
import importlib.abc
import sys


class NoCryptography(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "cryptography":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, NoCryptography())
"""


def run_without_cryptography(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter in which cryptography cannot be imported."""
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_CRYPTOGRAPHY + textwrap.dedent(code)],
        cwd=ROOT,
        env={"FAR_TEST_DB": f"sqlite:///{tmp_path}/app.db", "PATH": ""},
        capture_output=True,
        text=True,
        timeout=120,
    )


def normalized(name: str) -> str:
    """A distribution's name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_distributions() -> set[str]:
    """The distributions the installed package requires, its extras' included."""
    requires = importlib.metadata.requires("flask-async-request") or []
    return {normalized(re.split(r"[^A-Za-z0-9._-]", r, maxsplit=1)[0]) for r in requires}


def imported_top_level_modules() -> set[str]:
    """The top-level modules the package's source imports, standard library and itself left out."""
    modules: set[str] = set()
    for source in Path(flask_async_request.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if isinstance(node, ast.Import):
                modules.update(alias.name.partition(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.partition(".")[0])
    return modules - set(sys.stdlib_module_names) - {"__future__", "flask_async_request"}


def test_every_imported_package_is_a_declared_dependency() -> None:
    """Each third-party module the package imports comes from a distribution it declares."""
    owners = importlib.metadata.packages_distributions()
    declared = declared_distributions()
    undeclared = {
        module: owners.get(module)
        for module in imported_top_level_modules() - NOT_DEPENDENCIES
        if not {normalized(d) for d in owners.get(module, [])} & declared
    }
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"


def test_cryptography_is_only_in_the_rsa_extra() -> None:
    """PyJWT is required without its crypto extra; the rsa extra brings it."""
    requires = importlib.metadata.requires("flask-async-request") or []
    plain = [r for r in requires if "extra ==" not in r]
    assert any(normalized(r).startswith("pyjwt>=") for r in plain), plain
    assert not any("crypto" in r.lower() for r in plain), plain
    assert any(
        normalized(r).startswith("pyjwt[crypto]") and 'extra == "rsa"' in r for r in requires
    ), requires


@pytest.mark.parametrize("algorithm", ["RS256", "PS384", "ES512"])
def test_asymmetric_algorithm_without_cryptography_is_a_configuration_error(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch, algorithm: str
) -> None:
    """An RS, PS or ES algorithm without cryptography fails at init_app, naming the rsa extra."""
    monkeypatch.setattr(jwt.algorithms, "has_crypto", False)
    with pytest.raises(ConfigurationError, match=r"pip install flask-async-request\[rsa\]"):
        make_app(create_tables=False, ASYNC_REQUEST_SIGN_ALGORITHM=algorithm)


def test_rs256_fails_at_init_app_when_cryptography_is_not_installed(tmp_path: Path) -> None:
    """Without cryptography importable, RS256 is refused at init_app with the install command."""
    result = run_without_cryptography(
        """
        from flask import Flask
        from flask_sqlalchemy import SQLAlchemy

        from flask_async_request import AsyncRequest, ConfigurationError

        app = Flask(__name__)
        app.config.update(
            SQLALCHEMY_DATABASE_URI="sqlite://",
            ASYNC_REQUEST_SIGN_ALGORITHM="RS256",
            ASYNC_REQUEST_ENCODE_KEY="-----BEGIN PRIVATE KEY-----",
        )
        SQLAlchemy(app)
        try:
            AsyncRequest(app)
        except ConfigurationError as e:
            print(e)
        else:
            raise SystemExit("init_app accepted RS256 without cryptography")
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "pip install flask-async-request[rsa]" in result.stdout


def test_hs256_round_trip_needs_no_cryptography(tmp_path: Path) -> None:
    """Import, enqueue and poll a job with HS256 tokens while cryptography cannot be imported."""
    result = run_without_cryptography(
        """
        import json
        import os
        import sys

        from flask import Flask
        from flask_sqlalchemy import SQLAlchemy

        from flask_async_request import AsyncRequest, Job
        from tests.workers import Echo

        app = Flask(__name__)
        app.config.update(
            SECRET_KEY="a-secret-key-long-enough-for-hs256-and-then-some",
            SQLALCHEMY_DATABASE_URI=os.environ["FAR_TEST_DB"],
            CELERY={"task_always_eager": True},
        )
        db = SQLAlchemy(app)
        AsyncRequest(app)
        with app.app_context():
            db.create_all()
            token = Job.create_and_enqueue(Echo, 1, 2).token
        response = app.test_client().get(
            "/async_request/job", headers={"X-JOB-AUTHORIZATION": f"Bearer {token}"}
        )
        assert response.status_code == 200, response.get_data(as_text=True)
        assert json.loads(response.json["response"]["body"])["args"] == [1, 2]
        loaded = sorted(m for m in sys.modules if m.partition(".")[0] == "cryptography")
        assert not loaded, loaded
        print("ok")
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


def pyproject() -> dict[str, Any]:
    """pyproject.toml, parsed."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib comes with Python 3.11")
    project: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return project


def test_readme_links_work_on_the_package_index() -> None:
    """The README (PyPI's page of the package) links by absolute urls only, to files that exist."""
    doctree = docutils.core.publish_doctree((ROOT / "README.rst").read_text())
    uris = [ref["refuri"] for ref in doctree.findall(nodes.reference) if "refuri" in ref]
    assert uris
    for uri in uris:
        assert urllib.parse.urlsplit(uri).scheme in ("http", "https"), uri
        for tree in (f"{REPOSITORY}/blob/main/", f"{REPOSITORY}/tree/main/"):
            if uri.startswith(tree):
                assert (ROOT / uri.removeprefix(tree)).exists(), uri


def test_metadata_links_the_docs_changes_and_issues() -> None:
    """The project's urls name its documentation, changes, source and issues, in the repository."""
    urls = pyproject()["project"]["urls"]
    assert set(urls) == {"Documentation", "Changes", "Source", "Issues"}
    for label, url in urls.items():
        assert url.startswith(REPOSITORY), (label, url)
        for tree in (f"{REPOSITORY}/blob/main/", f"{REPOSITORY}/tree/main/"):
            if url.startswith(tree):
                assert (ROOT / url.removeprefix(tree)).exists(), url


def test_python_classifiers_follow_requires_python() -> None:
    """A classifier for each Python version from requires-python's lower bound on, none missing."""
    project = pyproject()["project"]
    lowest = re.fullmatch(r">=3\.(\d+)", project["requires-python"])
    assert lowest, project["requires-python"]
    versions = {
        int(c.rsplit(".", 1)[1])
        for c in project["classifiers"]
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    }
    assert min(versions) == int(lowest.group(1))
    assert versions == set(range(min(versions), max(versions) + 1))
    assert "Programming Language :: Python :: 3 :: Only" in project["classifiers"]
