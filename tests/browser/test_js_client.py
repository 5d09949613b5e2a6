"""The browser client in Chromium against a served app: module and script forms, bodies,
headers, long polling, retries, abort, progress, cancel, errors."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest

from tests.browser.client_app import MODULE_URL, Served, open_page, run
from tests.browser.jsbuild import CLASSIC, MODULE, STATIC, classic_script, exported_names

pytestmark = pytest.mark.browser

TYPES = Path(__file__).parent / "types"


def test_classic_script_is_the_module_wrapped() -> None:
    """async-request.js is exactly what jsbuild writes from async-request.mjs: they cannot drift."""
    module = MODULE.read_text(encoding="utf-8")
    assert CLASSIC.read_text(encoding="utf-8") == classic_script(module)


def test_declarations_name_every_export() -> None:
    """The .d.mts declares each value the module exports, and no other."""
    declared = re.findall(
        r"^export declare (?:const|class|function) (\w+)",
        (STATIC / "async-request.d.mts").read_text(encoding="utf-8"),
        re.MULTILINE,
    )
    assert sorted(declared) == sorted(exported_names(MODULE.read_text(encoding="utf-8")))


def test_es_module_import(page: Any, served: Served) -> None:
    """<script type="module"> imports the client; a job started with it finishes."""
    open_page(page, served, "module")
    names = run(page, "async (client) => Object.keys(client).sort()")
    assert names == sorted(exported_names(MODULE.read_text(encoding="utf-8")))
    answer = run(
        page, "async (client) => (await client.start('/echo', {body: {n: 1}})).wait({timeout: 20})"
    )
    assert answer["status"] == "processed"
    assert json.loads(answer["response"]["body"])["args"][0]["data"] == '{"n":1}'
    # Module scripts need a JavaScript MIME type, and the module defines no global.
    assert "javascript" in page.evaluate(
        f"async () => (await fetch('{MODULE_URL}')).headers.get('Content-Type')"
    )
    assert page.evaluate("typeof window.AsyncRequest") == "undefined"


def test_classic_script_global(page: Any, served: Served) -> None:
    """A plain <script> tag defines the global AsyncRequest with the module's API."""
    open_page(page, served, "classic")
    names = page.evaluate("Object.keys(AsyncRequest).sort()")
    assert names == sorted(exported_names(MODULE.read_text(encoding="utf-8")))
    answer = run(
        page,
        """async (client) => {
            const job = await AsyncRequest.start('/echo', {body: JSON.stringify({limit: 3})});
            return {
                isJob: job instanceof AsyncRequest.Job,
                answer: await job.wait({minInterval: 0.2, onProgress: () => {}}),
            };
        }""",
    )
    assert answer["isJob"]
    echoed = json.loads(answer["answer"]["response"]["body"])["args"][0]
    # A string body is labelled JSON, as the first version of the client did.
    assert echoed["content_type"] == "application/json"
    assert echoed["data"] == '{"limit":3}'


def test_form_data_upload_reaches_the_view_untouched(page: Any, served: Served) -> None:
    """A FormData body goes as multipart with the browser's boundary, fields and file intact."""
    open_page(page, served)
    echoed = run(
        page,
        """async (client) => {
            const form = new FormData();
            form.append("title", "März report");
            form.append("upload", new Blob(["a,b\\n1,2\\n"], {type: "text/csv"}), "data.csv");
            const answer = await (await client.start("/echo", {body: form})).wait();
            return JSON.parse(answer.response.body).args[0];
        }""",
    )
    assert echoed["content_type"].startswith("multipart/form-data; boundary=")
    assert echoed["form"] == {"title": "März report"}
    assert echoed["files"] == {
        "upload": {"filename": "data.csv", "content_type": "text/csv", "text": "a,b\n1,2\n"}
    }
    assert echoed["accept"] == "application/json"


@pytest.mark.parametrize(
    ("body", "content_type", "data"),
    [
        ("new Blob(['<x/>'], {type: 'application/xml'})", "application/xml", "<x/>"),
        ("new Blob(['raw'])", None, "raw"),
        ("{month: 3, tags: ['a']}", "application/json", '{"month":3,"tags":["a"]}'),
        ("[1, 2]", "application/json", "[1,2]"),
    ],
)
def test_each_body_keeps_its_own_content_type(
    page: Any, served: Served, body: str, content_type: str | None, data: str
) -> None:
    """A Blob keeps its own type (or none); only plain data is JSON-encoded and labelled JSON."""
    open_page(page, served)
    echoed = run(
        page,
        f"""async (client) => {{
            const answer = await (await client.start("/echo", {{body: {body}}})).wait();
            return JSON.parse(answer.response.body).args[0];
        }}""",
    )
    assert echoed["content_type"] == content_type
    assert echoed["data"] == data


def test_url_search_params_are_a_form(page: Any, served: Served) -> None:
    """URLSearchParams go form-encoded, as fetch labels them."""
    open_page(page, served)
    echoed = run(
        page,
        """async (client) => {
            const body = new URLSearchParams({month: "3", name: "a&b"});
            const answer = await (await client.start("/echo", {body})).wait();
            return JSON.parse(answer.response.body).args[0];
        }""",
    )
    assert echoed["content_type"].startswith("application/x-www-form-urlencoded")
    assert echoed["form"] == {"month": "3", "name": "a&b"}


@pytest.mark.parametrize(
    "headers",
    [
        "new Headers({'X-Test': 'yes', Accept: 'text/csv'})",
        "[['X-Test', 'yes'], ['Accept', 'text/csv']]",
        "{'x-test': 'yes', 'ACCEPT': 'text/csv'}",
    ],
)
def test_headers_in_any_form_arrive(page: Any, served: Served, headers: str) -> None:
    """Headers as a Headers object, pairs or an object arrive, and override the defaults."""
    open_page(page, served)
    echoed = run(
        page,
        f"""async (client) => {{
            const init = {{body: {{a: 1}}, headers: {headers}}};
            const answer = await (await client.start("/echo", init)).wait();
            return JSON.parse(answer.response.body).args[0];
        }}""",
    )
    assert echoed["x_test"] == "yes"
    assert echoed["accept"] == "text/csv"
    assert echoed["content_type"] == "application/json"


def test_job_options_headers_go_with_every_poll(page: Any, served: Served) -> None:
    """options.headers of start() are sent with the job's polls."""
    open_page(page, served)
    run(
        page,
        """async (client) => {
            const job = await client.start("/echo", {}, {headers: [["X-Test", "poll"]]});
            return job.wait();
        }""",
    )
    assert served.gets()
    assert all(p.headers.get("X-Test") == "poll" for p in served.gets())


def test_follows_the_job_url_without_the_token_header(page: Any, served: Served) -> None:
    """The job's own url (its Location) is polled; the token is in it, so no header is sent."""
    open_page(page, served)
    result = run(
        page,
        """async (client) => {
            const job = await client.start("/sleep?seconds=0.3");
            const answer = await job.wait();
            return {token: job.token, url: job.url, status: answer.status};
        }""",
    )
    assert result["status"] == "processed"
    assert result["url"] == f"{served.url}/async_request/job/{result['token']}"
    assert {p.path for p in served.polls} == {f"/async_request/job/{result['token']}"}
    assert all("X-Job-Authorization" not in p.headers for p in served.polls)


def test_header_form_without_a_job_url(page: Any, serve: Callable[..., Served]) -> None:
    """With no job url, the shared endpoint is polled with the token in the header."""
    served = serve(ASYNC_REQUEST_TOKEN_IN_URL=False)
    open_page(page, served)
    result = run(
        page,
        """async (client) => {
            const job = await client.start("/shared");
            return {token: job.token, answer: await job.wait()};
        }""",
    )
    assert result["answer"]["status"] == "processed"
    assert {p.path for p in served.polls} == {"/async_request/job"}
    assert all(
        p.headers["X-Job-Authorization"] == f"Bearer {result['token']}" for p in served.polls
    )


def test_long_polling_is_used(page: Any, served: Served) -> None:
    """Each poll asks Prefer: wait=20; the server holds it and the answer comes as the job ends."""
    open_page(page, served)
    result = run(
        page,
        """async (client) => {
            const job = await client.start("/sleep?seconds=1.5");
            const started = performance.now();
            const answer = await job.wait({stream: false});
            return {status: answer.status, seconds: (performance.now() - started) / 1000};
        }""",
    )
    assert result["status"] == "processed"
    gets = served.gets()
    assert [p.headers.get("Prefer") for p in gets] == ["wait=20"] * len(gets)
    # Plain polling with Retry-After: 1 would take two or three polls.
    assert len(gets) == 1
    assert result["seconds"] < 2.5


def test_long_polling_falls_back_to_retry_after(page: Any, serve: Callable[..., Served]) -> None:
    """A server that does not hold polls (wait=0 applied) is polled after its Retry-After."""
    served = serve(ASYNC_REQUEST_MAX_WAIT=0)
    open_page(page, served)
    answer = run(
        page,
        """async (client) =>
            (await client.start('/sleep?seconds=2.2')).wait({timeout: 20, stream: false})""",
    )
    assert answer["status"] == "processed"
    gets = served.gets()
    assert 2 <= len(gets) <= 4
    gaps = [b.at - a.at for a, b in itertools.pairwise(gets)]
    assert min(gaps) >= 0.9, gaps


def test_progress_is_reported_with_short_long_polls(page: Any, served: Served) -> None:
    """With onProgress, polls are held about Retry-After: progress arrives in steps."""
    open_page(page, served)
    result = run(
        page,
        """async (client) => {
            const seen = [];
            const job = await client.start("/steps", {body: {steps: 4, delay: 0.6}});
            const answer = await job.wait({
                stream: false,
                onProgress: (fraction, message, status) => seen.push([fraction, message, status]),
            });
            return {seen, status: answer.status};
        }""",
    )
    assert result["status"] == "processed"
    fractions = [fraction for fraction, _, _ in result["seen"] if fraction is not None]
    assert fractions == sorted(fractions)
    assert len({f for f in fractions if 0 < f < 1}) >= 2, result["seen"]
    assert any(message == "step 1 of 4" for _, message, _ in result["seen"])
    assert {p.headers.get("Prefer") for p in served.gets()} == {"wait=1"}


@pytest.mark.parametrize("long_poll", ["true", "false"])
def test_abort_stops_polling_at_once(page: Any, served: Served, long_poll: str) -> None:
    """Aborting the signal rejects wait() with an AbortError at once; no poll follows."""
    open_page(page, served)
    result = run(
        page,
        f"""async (client) => {{
            const body = {{steps: 100, delay: 0.1}};
            const job = window.job = await client.start("/steps", {{body}});
            const controller = new AbortController();
            const waiting = job.wait({{signal: controller.signal, longPoll: {long_poll}}});
            await new Promise((resolve) => setTimeout(resolve, 1500));
            const aborted = performance.now();
            controller.abort();
            try {{
                await waiting;
                return null;
            }} catch (error) {{
                return {{
                    name: error.name,
                    dom: error instanceof DOMException,
                    ms: performance.now() - aborted,
                }};
            }}
        }}""",
    )
    assert result == {"name": "AbortError", "dom": True, "ms": pytest.approx(0, abs=100)}
    polls = len(served.gets())
    assert polls >= 1
    time.sleep(2.5)
    assert len(served.gets()) == polls
    run(page, "async () => window.job.cancel()")


def test_abort_before_start_rejects(page: Any, served: Served) -> None:
    """An aborted signal given to start() rejects with its reason and sends nothing."""
    open_page(page, served)
    result = run(
        page,
        """async (client) => {
            const controller = new AbortController();
            controller.abort();
            try {
                await client.start("/echo", {body: {}}, {signal: controller.signal});
            } catch (error) {
                return error.name;
            }
        }""",
    )
    assert result == "AbortError"


def test_cancel_resolves_the_pending_wait(page: Any, served: Served) -> None:
    """cancel() sends DELETE; the pending wait() resolves with "cancelled" and polls stop."""
    open_page(page, served)
    result = run(
        page,
        """async (client) => {
            const job = await client.start("/steps", {body: {steps: 100, delay: 0.1}});
            let cancelled = null;
            const answer = await job.wait({
                onProgress: (fraction) => {
                    if (fraction > 0 && !cancelled) cancelled = job.cancel();
                },
            });
            return {answer, cancelled: await cancelled};
        }""",
    )
    assert result["answer"]["status"] == "cancelled"
    assert result["cancelled"]["response"]["status_code"] == 499
    assert [p.method for p in served.polls].count("DELETE") == 1
    polls = len(served.polls)
    time.sleep(1.5)
    assert len(served.polls) == polls


def test_503_with_retry_after_is_retried(page: Any, served: Served) -> None:
    """Two 503s (Retry-After in seconds, then as an HTTP-date), then the answer: it comes."""
    open_page(page, served)
    unavailable = {"errors": [{"message": "The job store is unavailable; try again later."}]}
    served.faults += [
        (503, {"Retry-After": "1"}, unavailable),
        (503, lambda: {"Retry-After": formatdate(time.time() + 3, usegmt=True)}, unavailable),
    ]
    answer = run(page, "async (client) => (await client.start('/echo', {body: {}})).wait()")
    assert answer["status"] == "processed"
    gets = served.gets()
    assert len(gets) == 3
    assert gets[1].at - gets[0].at >= 1
    # Three seconds ahead, in an HTTP-date, whose resolution is one second.
    assert gets[2].at - gets[1].at >= 1.9


def test_503_retries_are_bounded(page: Any, served: Served) -> None:
    """After retry.attempts 503s, wait() rejects with the typed error carrying the last one."""
    open_page(page, served)
    served.faults += [(503, {}, {"errors": [{"message": "down"}]})] * 5
    result = run(
        page,
        """async (client) => {
            const job = await client.start("/echo", {body: {}});
            try {
                await job.wait({retry: {attempts: 3, baseDelay: 0.05}});
            } catch (error) {
                return {
                    typed: error instanceof client.AsyncRequestError,
                    status: error.status,
                    body: error.body,
                    message: error.message,
                };
            }
        }""",
    )
    assert result == {
        "typed": True,
        "status": 503,
        "body": {"errors": [{"message": "down"}]},
        "message": "down",
    }
    assert len(served.gets()) == 3


def test_network_errors_are_retried(page: Any, served: Served) -> None:
    """Polls that fail in the network are tried again with a backoff, then succeed."""
    open_page(page, served)
    attempts: list[str] = []

    def flaky(route: Any) -> None:
        attempts.append(route.request.url)
        if len(attempts) <= 2:
            route.abort("connectionreset")
        else:
            route.continue_()

    page.route("**/async_request/job/**", flaky)
    answer = run(
        page,
        """async (client) => {
            const job = await client.start("/echo", {body: {}});
            return job.wait({retry: {baseDelay: 0.1}});
        }""",
    )
    assert answer["status"] == "processed"
    assert len(attempts) == 3
    assert len(served.gets()) == 1


def test_network_retries_are_bounded(page: Any, served: Served) -> None:
    """A status url that never answers rejects with the typed error, its cause the TypeError."""
    open_page(page, served)
    attempts: list[str] = []

    def down(route: Any) -> None:
        attempts.append(route.request.url)
        route.abort("connectionrefused")

    page.route("**/async_request/job/**", down)
    result = run(
        page,
        """async (client) => {
            const job = await client.start("/echo", {body: {}});
            try {
                await job.wait({retry: {attempts: 3, baseDelay: 0.05}});
            } catch (error) {
                return {
                    name: error.name,
                    typed: error instanceof client.AsyncRequestError,
                    cause: error.cause && error.cause.name,
                    response: error.response,
                };
            }
        }""",
    )
    assert result == {
        "name": "AsyncRequestError",
        "typed": True,
        "cause": "TypeError",
        "response": None,
    }
    assert len(attempts) == 3


def test_a_request_the_browser_will_not_make_is_not_retried(page: Any, served: Served) -> None:
    """A status url with credentials in it rejects at once with the browser's TypeError.

    fetch rejects such a request with a TypeError, as it does a network error;
    it is refused before it is sent, so asking again cannot help.
    """
    open_page(page, served)
    result = run(
        page,
        """async (client, base) => {
            const url = base.replace("://", "://user:secret@") + "/async_request/job/x";
            try {
                await client.poll(url, {retry: {attempts: 3, baseDelay: 0.05}});
            } catch (error) {
                return {name: error.name, typed: error instanceof client.AsyncRequestError};
            }
        }""",
        served.url,
    )
    assert result == {"name": "TypeError", "typed": False}
    assert served.gets() == []


def test_other_failures_reject_with_the_typed_error(page: Any, served: Served) -> None:
    """A 500 that is not the job's reply rejects at once with the response and its body."""
    open_page(page, served)
    served.faults.append((500, {}, {"errors": [{"message": "kaput"}]}))
    result = run(
        page,
        """async (client) => {
            const job = await client.start("/echo", {body: {}});
            try {
                await job.wait();
            } catch (error) {
                return {
                    typed: error instanceof client.AsyncRequestError,
                    name: error.name,
                    message: error.message,
                    status: error.response.status,
                    body: error.body,
                };
            }
        }""",
    )
    assert result == {
        "typed": True,
        "name": "AsyncRequestError",
        "message": "kaput",
        "status": 500,
        "body": {"errors": [{"message": "kaput"}]},
    }
    assert len(served.gets()) == 1


def test_start_refused_rejects_with_the_typed_error(page: Any, served: Served) -> None:
    """A starting view that does not answer 202 rejects start() with its status and body."""
    open_page(page, served)
    result = run(
        page,
        """async (client) => {
            try {
                await client.start("/refuse", {body: {month: 13}});
            } catch (error) {
                return {typed: error instanceof client.AsyncRequestError, status: error.status,
                        message: error.message};
            }
        }""",
    )
    assert result == {"typed": True, "status": 422, "message": "month must be from 1 to 12"}


def test_poll_resumes_a_job_from_its_url(page: Any, served: Served) -> None:
    """poll(url) waits for a job started elsewhere, by its own url alone."""
    open_page(page, served)
    answer = run(
        page,
        """async (client) => {
            const job = await client.start("/sleep?seconds=0.3");
            return client.poll(job.url, {timeout: 20});
        }""",
    )
    assert answer["status"] == "processed"


def _tsc() -> list[str] | None:
    """The TypeScript compiler: $FAR_TEST_TSC, or tsc on the PATH."""
    configured = os.environ.get("FAR_TEST_TSC")
    if configured:
        return [configured]
    found = shutil.which("tsc")
    return [found] if found else None


def test_declarations_type_check() -> None:
    """The .d.mts and .d.ts compile strictly, accept the documented uses and refuse wrong ones."""
    tsc = _tsc()
    if tsc is None:
        if os.environ.get("CI"):
            pytest.fail("tsc is not installed; .ci/run installs it and sets FAR_TEST_TSC.")
        pytest.skip("tsc is not installed (npm install --prefix DIR typescript@5; FAR_TEST_TSC)")
    done = subprocess.run(
        [*tsc, "--project", str(TYPES / "tsconfig.json")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_start_waits_and_asks_again_after_a_429(page: Any, served: Served) -> None:
    """A 429 with Retry-After (nothing stored) is asked again after it, with no Idempotency-Key."""
    open_page(page, served)
    posts: list[float] = []

    def limited(route: Any) -> None:
        if route.request.method != "POST":
            route.continue_()
            return
        posts.append(time.monotonic())
        if len(posts) == 1:
            route.fulfill(
                status=429,
                headers={"Retry-After": "1", "Content-Type": "application/json"},
                body='{"errors": [{"message": "Too many jobs in flight"}]}',
            )
        else:
            route.continue_()

    page.route("**/echo", limited)
    answer = run(page, "async (client) => (await client.start('/echo', {body: {}})).wait()")
    assert answer["status"] == "processed"
    assert len(posts) == 2
    assert posts[1] - posts[0] >= 1


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "polls"])
def test_wait_asks_again_after_a_429(page: Any, served: Served, stream: bool) -> None:
    """wait() waits out a 429's Retry-After, then asks again: the stream's request or a poll."""
    open_page(page, served)
    served.faults.append((429, {"Retry-After": "1"}, {"errors": [{"message": "Slow down"}]}))
    answer = run(
        page,
        "async (client, stream) => (await client.start('/sleep?seconds=0.2')).wait({stream})",
        stream,
    )
    assert answer["status"] == "processed"
    first, second, *_ = served.gets()
    assert second.at - first.at >= 1
    accept = "text/event-stream" if stream else "application/json"
    assert first.headers.get("Accept") == second.headers.get("Accept") == accept


# Event streams ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["module", "classic"])
def test_wait_follows_the_event_stream(page: Any, served: Served, name: str) -> None:
    """wait() reads the job's event stream: onProgress gets every step, and nothing polls."""
    open_page(page, served, name)
    result = run(
        page,
        """async (client) => {
            const seen = [];
            const job = await client.start("/steps", {body: {steps: 5, delay: 0.3}});
            const answer = await job.wait({
                onProgress: (fraction, message, status, body) =>
                    seen.push([fraction, message, status, body]),
            });
            return {seen, answer};
        }""",
    )
    assert result["answer"]["status"] == "processed"
    messages = [message for _, message, _, _ in result["seen"] if message]
    assert messages == [f"step {step} of 5" for step in range(1, 6)]
    fraction, message, status, body = result["seen"][-1]
    assert body == {"status": status, "progress": fraction, "message": message}
    gets = served.gets()
    assert [p.headers.get("Accept") for p in gets] == ["text/event-stream"]
    assert all("Prefer" not in p.headers for p in gets)


def test_the_header_form_streams_too(page: Any, served: Served) -> None:
    """The shared url with the token in a header is streamed with fetch as well."""
    open_page(page, served)
    answer = run(page, "async (client) => (await client.start('/shared')).wait()")
    assert answer["status"] == "processed"
    gets = served.gets()
    assert [p.headers.get("Accept") for p in gets] == ["text/event-stream"]
    assert gets[0].headers["X-Job-Authorization"].startswith("Bearer ")


def test_a_server_that_cannot_stream_is_long_polled(
    page: Any, serve: Callable[..., Served]
) -> None:
    """Where the server answers a stream's request with JSON, wait() long polls from then on."""
    served = serve(ASYNC_REQUEST_STREAMS=False, ASYNC_REQUEST_MAX_WAIT=1)
    open_page(page, served)
    result = run(
        page,
        """async (client) => {
            const seen = [];
            const job = await client.start("/steps", {body: {steps: 3, delay: 0.8}});
            const answer = await job.wait({onProgress: (fraction) => seen.push(fraction)});
            return {seen, status: answer.status};
        }""",
    )
    assert result["status"] == "processed"
    gets = served.gets()
    assert gets[0].headers.get("Accept") == "text/event-stream"
    assert len(gets) > 1
    assert all(p.headers.get("Accept") == "application/json" for p in gets[1:])
    assert all(p.headers.get("Prefer") == "wait=1" for p in gets[1:])
