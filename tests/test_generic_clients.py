"""Clients of the pattern that know nothing of this library finish its jobs.

azure-core's long-running-operation poller is the generic client of the
asynchronous request-reply pattern: it follows the 202's ``Location``, honours
``Retry-After`` and stops at the first answer that is not 202, as Microsoft's
REST guidelines describe.
"""

from __future__ import annotations

from typing import Any

from azure.core import PipelineClient
from azure.core.configuration import Configuration
from azure.core.pipeline import PipelineResponse
from azure.core.pipeline.policies import RedirectPolicy, SansIOHTTPPolicy
from azure.core.polling import LROPoller
from azure.core.polling.base_polling import LROBasePolling
from azure.core.rest import HttpRequest

from flask_async_request import Job, accepted
from tests import workers
from tests.conftest import AppFactory, serving


def _deserialize(pipeline_response: PipelineResponse[Any, Any]) -> Any:
    return pipeline_response.http_response.json()


def _start(base: str, limit: int) -> tuple[PipelineClient[Any, Any], Any]:
    client: PipelineClient[Any, Any] = PipelineClient(base_url=base)
    request = HttpRequest("POST", f"{base}/primes", json={"limit": limit})
    initial = client.send_request(request, _return_pipeline_response=True)
    return client, initial


def test_azure_cores_poller_finishes_the_examples_job(served_example: str) -> None:
    """The poller reads the 202, polls the Location it names and ends with the reply."""
    client, initial = _start(served_example, 2_000_000)
    assert initial.http_response.status_code == 202
    poller = LROPoller(client, initial, _deserialize, LROBasePolling(timeout=0.1))
    result = poller.result(timeout=60)
    assert poller.status() == "Succeeded"
    assert result["status"] == "processed"
    assert result["response"]["status_code"] == 200
    assert '"primes": 148933' in result["response"]["body"]


class _Seen(SansIOHTTPPolicy[Any, Any]):
    """Notes each answer's status code, as it reaches the poller."""

    def __init__(self) -> None:
        self.codes: list[int] = []

    def on_response(self, request: Any, response: Any) -> None:
        self.codes.append(response.http_response.status_code)


def test_azure_cores_poller_polls_a_long_job_until_it_ends(served_example: str) -> None:
    """Every poll before the end is a 202 that names where to ask next; the last is a 200."""
    seen = _Seen()
    client: PipelineClient[Any, Any] = PipelineClient(
        base_url=served_example, per_call_policies=[seen]
    )
    request = HttpRequest("POST", f"{served_example}/primes", json={"limit": 30_000_000})
    initial = client.send_request(request, _return_pipeline_response=True)
    poller = LROPoller(client, initial, _deserialize, LROBasePolling(timeout=0.05))
    result = poller.result(timeout=120)
    assert result["status"] == "processed"
    assert seen.codes[0] == 202
    assert seen.codes[-1] == 200
    assert set(seen.codes[:-1]) == {202}
    assert len(seen.codes) >= 3


def test_azure_cores_poller_downloads_a_stored_result_by_following_the_303(
    make_app: AppFactory,
) -> None:
    """With ASYNC_REQUEST_REDIRECT_FINISHED the poller ends on the result's own bytes.

    A CSV export of 600 KB, above the result store's threshold: the last poll is a
    303 to the job's result url, which the pipeline's redirect policy follows. (The
    poller hands its final answer to azure-core's content decoding, which takes JSON,
    XML and text; a binary result is for a client that streams it.)
    """
    app = make_app(ASYNC_REQUEST_REDIRECT_FINISHED=True)
    line = "id,name\n"

    @app.post("/export")
    def export() -> Any:
        return accepted(Job.create_and_enqueue(workers.ReturnText, line, 75_000))

    with serving(app) as base:
        seen = _Seen()
        # As the Azure SDK's clients are built: redirects followed by the pipeline.
        config: Configuration[Any, Any] = Configuration()
        config.redirect_policy = RedirectPolicy()
        client: PipelineClient[Any, Any]
        client = PipelineClient(base_url=base, config=config, per_call_policies=[seen])
        initial = client.send_request(
            HttpRequest("POST", f"{base}/export"), _return_pipeline_response=True
        )
        assert initial.http_response.status_code == 202
        poller = LROPoller(
            client, initial, lambda response: response.http_response.read(), LROBasePolling(0.05)
        )
        assert poller.result(timeout=60) == (line * 75_000).encode()
    assert poller.status() == "Succeeded"
    assert 303 not in seen.codes  # followed inside the pipeline, never seen by the poller
    assert seen.codes[-1] == 200
