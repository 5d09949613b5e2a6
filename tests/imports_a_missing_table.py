"""A worker module whose import runs a query the database refuses, as a broken module would."""

from __future__ import annotations

import sqlalchemy as sa
from flask import current_app

from flask_async_request import Worker

current_app.extensions["sqlalchemy"].session.execute(
    sa.text("SELECT secret FROM no_such_table WHERE id = :id"), {"id": 1}
)


class Never(Worker):
    """Never defined: the import fails before."""
