"""The dashboard's bulk actions: retry, cancel or delete the jobs a list's filters select.

The list offers them for a filtered selection; each asks first, on a page that
names the jobs it will act on, and acts, on POST with the session's CSRF token,
on exactly those jobs (through :mod:`.bulk`, as ``flask async-request retry``
and ``cancel`` do).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for

from . import bulk
from .reading import JobFilter

#: The bulk actions, and what the confirmation and the message call them.
ACTIONS = {
    "retry": ("Retry", "are waiting to run again"),
    "cancel": ("Cancel", "are cancelled"),
    "delete": ("Delete", "are deleted"),
}
#: The list's filters a bulk action keeps.
_FILTERS = ("status", "worker", "owner", "older_than", "newer_than")


def _filters() -> dict[str, Any]:
    values = request.args if request.method == "GET" else request.form
    return {key: value for key in _FILTERS if (value := values.get(key, "").strip())}


def confirm_view(action: str) -> Any:
    """Name the jobs a bulk ``action`` on the list's filters takes, and ask."""
    if action not in ACTIONS:
        abort(404)
    query = _filters()
    back = url_for(".jobs", **query)
    try:
        ids = bulk.selected(action, JobFilter.from_args(query))
    except ValueError as e:
        flash(str(e), "error")
        return redirect(back, 303)
    label, _ = ACTIONS[action]
    if not ids:
        flash(f"No jobs of this selection can be {action_past(action)}.", "message")
        return redirect(back, 303)
    shown = ", ".join(map(str, ids[:20])) + (", ..." if len(ids) > 20 else "")
    return render_template(
        "async_request_dashboard/confirm.html",
        title=f"{label} {len(ids)} jobs?",
        question=f"{label} the {len(ids)} jobs of this selection ({shown}).",
        action=url_for(".bulk", action=action),
        fields={**query, "ids": ",".join(map(str, ids))},
        button=f"{label} {len(ids)} jobs",
        back=back,
    )


def action_view(action: str) -> Any:
    """Act on the jobs the confirmation named."""
    if action not in ACTIONS:
        abort(404)
    try:
        ids = [int(part) for part in request.form.get("ids", "").split(",") if part]
    except ValueError:
        abort(400, description="The form's job ids are not numbers.")
    if len(ids) > bulk.DEFAULT_LIMIT:
        abort(400, description=f"A bulk action takes {bulk.DEFAULT_LIMIT} jobs at most.")
    result = {"retry": bulk.retry, "cancel": bulk.cancel, "delete": bulk.delete}[action](ids)
    _, said = ACTIONS[action]
    message = f"{len(result.done)} jobs {said}."
    if result.skipped:
        message += f" {len(result.skipped)} skipped (they changed meanwhile)."
    flash(message, "message")
    return redirect(url_for(".jobs", **_filters()), 303)


def action_past(action: str) -> str:
    """The action's past participle: retried, cancelled, deleted."""
    return {"retry": "retried", "cancel": "cancelled", "delete": "deleted"}[action]


def add_views(blueprint: Blueprint) -> None:
    """Register the bulk actions' views on the dashboard's ``blueprint``."""
    blueprint.add_url_rule("/bulk/<action>", "confirm_bulk", confirm_view, methods=["GET"])
    blueprint.add_url_rule("/bulk/<action>", "bulk", action_view, methods=["POST"])
