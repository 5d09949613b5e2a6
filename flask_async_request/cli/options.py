"""What the commands share: their parameter types, ``--json``, tables, and errors as messages."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import click
import sqlalchemy.exc

from ..config import parse_duration
from ..exceptions import AsyncRequestError
from ..models import JobStatus

F = TypeVar("F", bound=Callable[..., Any])


def errors_as_messages(f: F) -> F:
    """Turn the library's and the database's errors into ``Error: ...`` lines."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        # LookupError: SQLAlchemy's word for a status in the table that is not a JobStatus.
        except (AsyncRequestError, ValueError, LookupError) as e:
            raise click.ClickException(str(e)) from e
        except sqlalchemy.exc.SQLAlchemyError as e:
            detail = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
            raise click.ClickException(
                f"The database refused the query ({detail}). Is it reachable, and is the jobs"
                " table created (`flask db upgrade`, or `flask async-request init` first)?"
            ) from e

    return wrapper  # type: ignore[return-value]


class _Duration(click.ParamType):  # type: ignore[type-arg,unused-ignore]
    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, timedelta):
            return value
        try:
            return parse_duration(str(value))
        except ValueError as e:
            self.fail(str(e), param, ctx)


DURATION = _Duration()
STATUS = click.Choice([s.value for s in JobStatus], case_sensitive=False)


#: ``--json`` on the read commands: stable keys, times in ISO 8601 UTC, durations in seconds.
JSON_OPTION = click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print JSON instead: every key always present, times in ISO 8601 UTC.",
)


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )
