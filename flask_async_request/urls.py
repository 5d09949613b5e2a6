"""The library's own external urls: ``url_for``'s answer kept per origin, filled in with a token."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping
from typing import Any

from flask import request, url_for

#: What a url's one value may hold for its template to be filled in with it: the
#: characters that Werkzeug's converters write as they are (tokens, signed links).
_VERBATIM = re.compile(r"[A-Za-z0-9_.\-]+\Z")
#: Stands for the value while ``url_for`` builds a template; no url of the library holds it.
_MARK = "0-far-value-0"
#: Origins kept at most: the ``Host`` header is the client's to choose.
MAX_TEMPLATES = 256


class UrlTemplates:
    """An app's external urls of its own endpoints, each built by ``url_for`` once per origin.

    Werkzeug walks a rule's parts and quotes each value at every ``url_for``;
    the library's urls are answered at every poll, and differ only in a token.
    So the first url of an endpoint on an origin (scheme, host, script root) is
    ``url_for``'s own answer for a placeholder, and later ones fill the token in:
    the app's ``SERVER_NAME``, its blueprint prefix and a proxy's rewrite of the
    environ are those ``url_for`` saw. ``url_for`` itself answers outside a
    request, for a value it would quote, and where the app has ``url_defaults``
    functions, which may add values at each request.
    """

    def __init__(self, url_defaults: Mapping[str | None, list[Callable[..., Any]]]) -> None:
        """:param url_defaults: the app's ``url_default_functions``, which Flask fills in place."""
        self._url_defaults = url_defaults
        self._templates: dict[tuple[str, str, str, str], tuple[str, str]] = {}
        self._lock = threading.Lock()

    def external(self, endpoint: str, value_name: str | None = None, value: str = "") -> str:
        """``url_for(endpoint, **{value_name: value}, _external=True)``; ``None``: no value."""
        values = {} if value_name is None else {value_name: value}
        try:  # the request itself, looked up once rather than at each attribute
            current = request._get_current_object()  # type: ignore[attr-defined]
        except RuntimeError:  # outside a request: SERVER_NAME's url, as url_for builds it
            return url_for(endpoint, _external=True, **values)
        if (
            not _VERBATIM.match(value or "-")
            or self._url_defaults.get(None)
            or self._url_defaults.get("async_request")
        ):
            return url_for(endpoint, _external=True, **values)
        key = (endpoint, current.scheme, current.host, current.root_path)
        template = self._templates.get(key)
        if template is None:
            marked = {} if value_name is None else {value_name: _MARK}
            built = url_for(endpoint, _external=True, **marked)
            head, mark, tail = built.partition(_MARK)
            if value_name is not None and (not mark or _MARK in tail):
                return url_for(endpoint, _external=True, **values)
            template = (head, tail)
            with self._lock:
                if len(self._templates) >= MAX_TEMPLATES:
                    self._templates.clear()
                self._templates[key] = template
        head, tail = template
        return f"{head}{value}{tail}" if value_name is not None else head
