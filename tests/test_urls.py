"""urls: the library's external urls, filled in from a template per origin, are url_for's own."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask, request, url_for
from werkzeug.middleware.proxy_fix import ProxyFix

from flask_async_request import Job, urls
from flask_async_request.state import get_state
from tests import workers
from tests.conftest import AppFactory, json_of

#: The library's endpoints with a url of their own, and the value each takes.
ENDPOINTS = [
    ("async_request.job", None),
    ("async_request.job_url", "token"),
    ("async_request.result", None),
    ("async_request.result_url", "token"),
    ("async_request.download", "signed"),
]


def _both(app: Flask, endpoint: str, name: str | None, value: str, **environ: Any) -> list[str]:
    """The template's url and url_for's, in one request of ``environ``."""
    with app.test_request_context(**environ):
        values = {} if name is None else {name: value}
        return [
            get_state().urls.external(endpoint, name, value),
            url_for(endpoint, _external=True, **values),
        ]


@pytest.mark.parametrize(("endpoint", "name"), ENDPOINTS)
@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"base_url": "https://api.example.org:8443"},
        {"base_url": "http://example.com/mounted/app"},
        {"base_url": "http://[::1]:5000"},
    ],
)
def test_the_url_is_url_for_s_own(
    app: Flask, endpoint: str, name: str | None, environ: dict[str, Any]
) -> None:
    """On any origin, scheme, port and script root, a filled-in template is url_for's answer."""
    for value in ("eyJhbGciOi.J9-x_y", "a", "eyJz.other-value_2"):  # the template, then fills
        made, expected = _both(app, endpoint, name, value, **environ)
        assert made == expected


def test_each_origin_has_its_own_template(app: Flask) -> None:
    """A template made on one host is not answered on another."""
    first = _both(app, "async_request.job_url", "token", "t1", base_url="http://one.example")
    second = _both(app, "async_request.job_url", "token", "t2", base_url="http://two.example")
    assert first[0] == "http://one.example/async_request/job/t1" == first[1]
    assert second[0] == "http://two.example/async_request/job/t2" == second[1]


def test_the_server_name_and_the_url_prefix_are_url_for_s(make_app: AppFactory) -> None:
    """``SERVER_NAME`` and ``ASYNC_REQUEST_URL_PREFIX`` shape the template as url_for's url."""
    app = make_app(SERVER_NAME="jobs.example:8000", ASYNC_REQUEST_URL_PREFIX="/v2/async")
    made, expected = _both(
        app, "async_request.job_url", "token", "abc", base_url="http://jobs.example:8000"
    )
    assert made == expected == "http://jobs.example:8000/v2/async/job/abc"


def test_a_proxy_s_rewrite_is_seen(app: Flask) -> None:
    """Behind ProxyFix the template carries the forwarded scheme and host, per forwarded origin."""
    app.wsgi_app = ProxyFix(app.wsgi_app, x_proto=1, x_host=1)  # type: ignore[method-assign]
    app.add_url_rule(
        "/show", "show", lambda: get_state().urls.external("async_request.job_url", "token", "abc")
    )
    client = app.test_client()
    for host in ("a.example", "b.example"):
        answer = client.get(
            "/show", headers={"X-Forwarded-Proto": "https", "X-Forwarded-Host": host}
        )
        assert answer.text == f"https://{host}/async_request/job/abc"


def test_an_app_s_url_defaults_are_applied(app: Flask) -> None:
    """Where the app adds values with ``url_defaults``, each request's url has its own."""

    @app.url_defaults
    def add_language(endpoint: str, values: dict[str, Any]) -> None:
        values.setdefault("lang", request.args.get("lang", "en"))

    for lang in ("fr", "de"):
        path = f"/?lang={lang}"
        made, expected = _both(app, "async_request.job_url", "token", "abc", path=path)
        assert made == expected == f"http://localhost/async_request/job/abc?lang={lang}"


@pytest.mark.parametrize("value", ["a/b", "a b", "é", "a%2F", "a?b", "a#b"])
def test_a_value_url_for_would_quote_is_url_for_s(app: Flask, value: str) -> None:
    """A value with characters url_for quotes or escapes never fills a template in as it is."""
    made, expected = _both(app, "async_request.job_url", "token", value)
    assert made == expected


def test_outside_a_request_the_url_is_the_server_name_s(make_app: AppFactory) -> None:
    """In a worker or a command (an app context, no request), url_for's url on ``SERVER_NAME``."""
    app = make_app(SERVER_NAME="jobs.example", PREFERRED_URL_SCHEME="https")
    with app.app_context():
        made = get_state().urls.external("async_request.job_url", "token", "abc")
    assert made == "https://jobs.example/async_request/job/abc"


def test_templates_are_bounded(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Host header is the client's: past the bound the templates start over, still right."""
    monkeypatch.setattr(urls, "MAX_TEMPLATES", 3)
    templates = get_state().urls
    for n in range(7):
        made, expected = _both(app, "async_request.job", None, "", base_url=f"http://h{n}.example")
        assert made == expected == f"http://h{n}.example/async_request/job"
        assert len(templates._templates) <= 3


def test_a_stored_result_s_envelope_has_url_for_s_urls(app: Flask, client: Any) -> None:
    """The finished poll of a stored result answers both hrefs as url_for builds them."""
    job = Job.create_and_enqueue(workers.ReturnChunks, 2, 10)
    result = json_of(client.get(f"/async_request/job/{job.token}"))["response"]
    with app.test_request_context():
        assert result["href"] == url_for(
            "async_request.result_url", token=job.token, _external=True
        )
        signed = result["download_href"].rsplit("/", 1)[1]
        assert result["download_href"] == url_for(
            "async_request.download", signed=signed, _external=True
        )
    assert client.get(result["download_href"]).status_code == 200
