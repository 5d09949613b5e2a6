"""The package's annotations make type checkers refuse what would fail at run time."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Checked with mypy: each line marked ``# error`` must be an error, and no other line.
ENQUEUEING = """
from flask_async_request import Job, Worker


class Thumbnail(Worker):
    def execute(self, image_id: int, size: str = "small") -> tuple[int, str]:
        return 200, ""


class Untyped(Worker):
    def execute(self, image_id, size):  # type: ignore[no-untyped-def]
        return 200, ""


class NotAWorker:
    def execute(self, image_id: int) -> tuple[int, str]:
        return 200, ""


def chosen() -> type[Worker]:
    return Thumbnail


Job.create_and_enqueue(Thumbnail, 42)
Job.create_and_enqueue(Thumbnail, 42, "large")
Job.create_and_enqueue(Thumbnail, image_id=42, size="large")
Job.create_and_enqueue(Thumbnail, 42, commit=False)
Job.create_and_enqueue(Thumbnail, 42, idempotency_key="k", callback_url="https://x/")
Job.create_and_enqueue(Untyped, 42, "small")
Job.create_and_enqueue(chosen(), 42, anything=1)
Job.enqueue_call(Thumbnail, [42], {"size": "large"}, commit=False)
Job.create_and_enqueue(int, 1)  # error
Job.create_and_enqueue(int, 1, commit=False)  # error
Job.create_and_enqueue(NotAWorker, 42)  # error
Job.create_and_enqueue(Thumbnail)  # error
Job.create_and_enqueue(Thumbnail, "42")  # error
Job.create_and_enqueue(Thumbnail, 42, "small", "extra")  # error
Job.create_and_enqueue(Thumbnail, 42, colour="red")  # error
Job.create_and_enqueue(Untyped, 42)  # error
Job.enqueue_call(int, [1])  # error
"""


def mypy_errors(code: str, tmp_path: Path) -> tuple[set[int], str]:
    """The lines of ``code`` that mypy (strict, Python 3.10) reports errors on, and its output."""
    pytest.importorskip("mypy", reason="mypy comes with the dev dependency group")
    source = tmp_path / "checked.py"
    source.write_text(textwrap.dedent(code))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--python-version=3.10",
            # The package's own modules are checked by CI's mypy run, with its settings.
            "--follow-imports=silent",
            f"--cache-dir={tmp_path / 'cache'}",
            str(source),
        ],
        # This tree's package, not another installed copy.
        env={**os.environ, "MYPYPATH": str(ROOT)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = {
        int(m.group(1)) for m in re.finditer(r"^checked\.py:(\d+): error:", result.stdout, re.M)
    }
    return lines, result.stdout + result.stderr


def test_create_and_enqueue_checks_the_worker_and_its_arguments(tmp_path: Path) -> None:
    """A class that is not a Worker, or arguments that do not fit execute, are type errors."""
    expected = {
        number
        for number, line in enumerate(ENQUEUEING.splitlines(), start=1)
        if line.endswith("# error")
    }
    errors, output = mypy_errors(ENQUEUEING, tmp_path)
    assert errors == expected, output
