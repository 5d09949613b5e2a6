"""The browser client's results in Chromium: a job's file as a Response or a Blob, saved
under the server's name, or handed to a plain ``<a href download>`` by its signed link."""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, Response, request, url_for

from flask_async_request import Job, Worker, accepted
from tests.browser.client_app import Poll, Served, open_page, run

pytestmark = pytest.mark.browser

#: Bytes of every value, not text in any charset: what a ZIP or a PDF is.
DATA = bytes((index * 7 + index // 256) % 256 for index in range(300_000))
#: The name the worker gives, with characters that only filename* carries.
FILENAME = "rapport d'été.bin"
DISPOSITION = (
    "attachment; filename=\"rapport.bin\"; filename*=UTF-8''rapport%20d%27%C3%A9t%C3%A9.bin"
)


class Export(Worker):
    """Returns DATA as a file to download, or ``text`` as a text reply with a filename."""

    def execute(self, text: str | None = None, named: bool = True) -> Any:
        if not named:
            return 200, DATA, "application/octet-stream"
        if text is not None:
            return (
                200,
                text,
                "text/csv; charset=utf-8",
                {"Content-Disposition": 'attachment; filename="rows.csv"'},
            )
        return 200, DATA, "application/octet-stream", {"Content-Disposition": DISPOSITION}


class Fails(Worker):
    """Raises: a failed job, which has no result."""

    def execute(self) -> Any:
        raise RuntimeError("no export today")


def _build_files(app: Flask, served: Served) -> None:
    @app.before_request
    def record() -> None:
        """The shared result url and the download links, which the polls' record leaves out."""
        if request.path == "/async_request/result" or request.path.startswith(
            "/async_request/download/"
        ):
            served.polls.append(
                Poll(request.method, request.path, dict(request.headers), time.monotonic())
            )

    @app.post("/file")
    def file() -> Any:
        return accepted(Job.create_and_enqueue(Export))

    @app.post("/unnamed")
    def unnamed() -> Any:
        return accepted(Job.create_and_enqueue(Export, named=False))

    @app.post("/text")
    def text() -> Any:
        return accepted(Job.create_and_enqueue(Export, request.args["text"]))

    @app.post("/shared-file")
    def shared_file() -> Any:
        """The header form: the shared status url in the body, no Location."""
        job = Job.create_and_enqueue(Export)
        return {"token": job.token, "url": url_for("async_request.job", _external=True)}, 202

    @app.post("/fails")
    def fails() -> Any:
        return accepted(Job.create_and_enqueue(Fails))

    @app.get("/other-bytes")
    def other_bytes() -> Any:
        return Response(b"x" * len(DATA), mimetype="application/octet-stream")


@pytest.fixture
def extra_views() -> Callable[[Flask, Served], None]:
    """The views that start file jobs, beside the client's tests' own."""
    return _build_files


#: Reads a Blob as base64 in the page, so its exact bytes come back to the test.
BLOB_BASE64 = """
    async function base64(blob) {
        const bytes = new Uint8Array(await blob.arrayBuffer());
        let text = "";
        for (let i = 0; i < bytes.length; i += 8192) {
            text += String.fromCharCode.apply(null, bytes.subarray(i, i + 8192));
        }
        return btoa(text);
    }
"""


def _run(page: Any, body: str, arg: Any = None) -> Any:
    return run(page, f"async (client, arg) => {{ {BLOB_BASE64} {body} }}", arg)


@pytest.mark.parametrize("path", ["/file", "/shared-file"])
def test_blob_is_the_workers_bytes(page: Any, served: Served, path: str) -> None:
    """blob(): the exact bytes, typed, from the job's own url or the shared one (token header)."""
    open_page(page, served)
    got = _run(
        page,
        """const job = await client.start(arg);
           const blob = await job.blob({timeout: 30});
           return {data: await base64(blob), type: blob.type, size: job.answer.response.size,
                   body: job.answer.response.body};""",
        path,
    )
    assert base64.b64decode(got["data"]) == DATA
    assert got["type"] == "application/octet-stream"
    assert got["size"] == len(DATA)
    # The stored reply's envelope has no body; the client gives "" as its type says.
    assert got["body"] == ""
    results = [p for p in served.gets() if p.path.endswith("/result")]
    assert len(results) == 1
    if path == "/shared-file":
        # The shared result url takes the token in the header, as the polls do.
        assert results[0].path == "/async_request/result"
        assert results[0].headers["X-Job-Authorization"].startswith("Bearer ")
    else:
        assert "X-Job-Authorization" not in results[0].headers


def test_result_is_a_response_with_the_kept_headers(page: Any, served: Served) -> None:
    """result(): the result url's Response, its Content-Disposition and ETag readable."""
    open_page(page, served)
    got = _run(
        page,
        """const job = await client.start("/file");
           await job.wait({timeout: 30});
           const response = await job.result();
           return {status: response.status,
                   disposition: response.headers.get("Content-Disposition"),
                   etag: response.headers.get("ETag"),
                   length: (await response.arrayBuffer()).byteLength};""",
    )
    assert got == {
        "status": 200,
        "disposition": DISPOSITION,
        "etag": f'"{hashlib.sha256(DATA).hexdigest()}"',
        "length": len(DATA),
    }


def test_save_downloads_under_the_servers_filename(
    page: Any, served: Served, tmp_path: Path
) -> None:
    """save(): the browser downloads the bytes under the Content-Disposition's filename*."""
    open_page(page, served)
    with page.expect_download(timeout=30_000) as info:
        saved = _run(
            page,
            """const job = await client.start("/file");
               const saved = await job.save();
               return {filename: saved.filename, size: saved.blob.size};""",
        )
    download = info.value
    assert saved == {"filename": FILENAME, "size": len(DATA)}
    assert download.suggested_filename == FILENAME
    target = tmp_path / "saved.bin"
    download.save_as(target)
    assert target.read_bytes() == DATA
    # The object url is not left in the page.
    assert page.evaluate("document.querySelectorAll('a[download]').length") == 0


def test_save_under_a_name_given(page: Any, served: Served, tmp_path: Path) -> None:
    """save(name): the name given wins over the server's."""
    open_page(page, served)
    with page.expect_download(timeout=30_000) as info:
        _run(page, """return (await (await client.start("/file")).save("mine.bin")).filename;""")
    assert info.value.suggested_filename == "mine.bin"
    info.value.save_as(tmp_path / "mine.bin")
    assert (tmp_path / "mine.bin").read_bytes() == DATA


def test_download_url_in_a_plain_link(page: Any, served: Served, tmp_path: Path) -> None:
    """downloadUrl(): a signed link, no token; a plain <a href download> downloads the bytes."""
    open_page(page, served)
    href = _run(
        page,
        """const job = await client.start("/file");
           const href = await job.downloadUrl({timeout: 30});
           const link = document.createElement("a");
           link.id = "link";
           link.href = href;
           link.download = "";
           link.textContent = "Download";
           document.body.appendChild(link);
           return href;""",
    )
    assert href.startswith(f"{served.url}/async_request/download/")
    with page.expect_download(timeout=30_000) as info:
        page.click("#link")
    assert info.value.suggested_filename == FILENAME
    info.value.save_as(tmp_path / "linked.bin")
    assert (tmp_path / "linked.bin").read_bytes() == DATA
    downloads = [p for p in served.polls if p.path.startswith("/async_request/download/")]
    assert len(downloads) == 1
    assert "X-Job-Authorization" not in downloads[0].headers
    assert not any(p.path.endswith("/result") for p in served.polls)


def test_a_text_reply_is_a_response_too(page: Any, served: Served, tmp_path: Path) -> None:
    """A reply kept as text: result() and save() give its bytes, with its kept filename."""
    open_page(page, served)
    with page.expect_download(timeout=30_000) as info:
        got = _run(
            page,
            """const job = await client.start("/text?text=" + encodeURIComponent(arg));
               const response = await job.result({timeout: 30});
               const text = await response.text();
               const saved = await job.save();
               let refused = null;
               try { await job.downloadUrl(); } catch (error) { refused = error.name; }
               return {text, type: response.headers.get("Content-Type"),
                       filename: saved.filename, refused};""",
            "a,b\n1,é\n",
        )
    assert got == {
        "text": "a,b\n1,é\n",
        "type": "text/csv; charset=utf-8",
        "filename": "rows.csv",
        "refused": "AsyncRequestError",
    }
    info.value.save_as(tmp_path / "rows.csv")
    assert (tmp_path / "rows.csv").read_text(encoding="utf-8") == "a,b\n1,é\n"


def test_a_failed_job_has_no_result(page: Any, served: Served) -> None:
    """blob() of a failed job rejects with the typed error, which carries the answer."""
    open_page(page, served)
    got = _run(
        page,
        """const job = await client.start("/fails");
           try { await job.blob({timeout: 30}); } catch (error) {
               return {typed: error instanceof client.AsyncRequestError, message: error.message,
                       status: error.body.status};
           }""",
    )
    assert got == {
        "typed": True,
        "message": "The job is failed; it has no result.",
        "status": "failed",
    }


def test_bytes_that_are_not_the_recorded_ones_are_refused(page: Any, served: Served) -> None:
    """blob() checks the SHA-256 the envelope gives; verify: false takes the bytes as they are."""
    open_page(page, served)
    answer = {
        "status": "processed",
        "response": {
            "status_code": 200,
            "size": len(DATA),
            "sha256": hashlib.sha256(DATA).hexdigest(),
            "href": f"{served.url}/other-bytes",
        },
    }
    served.faults.append((200, {}, answer))
    served.faults.append((200, {}, answer))
    got = _run(
        page,
        """const job = await client.start("/sleep?seconds=5");
           let message = null;
           try { await job.blob(); } catch (error) { message = error.message; }
           const unchecked = await job.blob({verify: false});
           return {message, size: unchecked.size};""",
    )
    assert got == {
        "message": f"The download of {served.url}/other-bytes does not match its SHA-256.",
        "size": len(DATA),
    }


def test_aborting_stops_the_download(page: Any, served: Served) -> None:
    """A signal aborted while the job runs rejects blob() with its reason."""
    open_page(page, served)
    got = _run(
        page,
        """const job = await client.start("/sleep?seconds=5");
           const controller = new AbortController();
           setTimeout(() => controller.abort(), 200);
           try { await job.blob({signal: controller.signal}); }
           catch (error) { return error.name; }""",
    )
    assert got == "AbortError"


@pytest.mark.parametrize("path", ["/file", "/shared-file"])
def test_redirect_mode_gives_the_result_of_the_redirect(
    page: Any, serve: Callable[..., Served], path: str
) -> None:
    """With ASYNC_REQUEST_REDIRECT_FINISHED the poll that follows the 303 is the result:
    wait() resolves processed, and blob() reads that response, with no second download."""
    served = serve(ASYNC_REQUEST_REDIRECT_FINISHED=True)
    open_page(page, served)
    got = _run(
        page,
        """const job = await client.start(arg);
           const answer = await job.wait({timeout: 30});
           const blob = await job.blob();
           let refused = null;
           try { await job.downloadUrl(); } catch (error) { refused = error.message; }
           return {answer, data: await base64(blob), refused};""",
        path,
    )
    reply = got["answer"]["response"]
    assert got["answer"]["status"] == "processed"
    assert reply["size"] == len(DATA)
    assert reply["sha256"] == hashlib.sha256(DATA).hexdigest()
    assert reply["href"].endswith("/result")
    assert reply["body"] == ""
    assert base64.b64decode(got["data"]) == DATA
    assert "ASYNC_REQUEST_REDIRECT_FINISHED" in got["refused"]
    results = [p for p in served.gets() if p.path.endswith("/result")]
    # One for wait()'s poll, read by blob(); one for downloadUrl()'s poll, never read.
    assert len(results) == 2
    if path == "/shared-file":
        assert all(p.headers["X-Job-Authorization"].startswith("Bearer ") for p in results)


def test_redirect_mode_saves_under_the_servers_filename(
    page: Any, serve: Callable[..., Served], tmp_path: Path
) -> None:
    """save() in redirect mode: the name of the result's Content-Disposition, the exact bytes."""
    served = serve(ASYNC_REQUEST_REDIRECT_FINISHED=True)
    open_page(page, served)
    with page.expect_download(timeout=30_000) as info:
        _run(page, """return (await (await client.start("/file")).save()).filename;""")
    assert info.value.suggested_filename == FILENAME
    info.value.save_as(tmp_path / "redirected.bin")
    assert (tmp_path / "redirected.bin").read_bytes() == DATA


def test_save_without_a_name_anywhere(page: Any, served: Served, tmp_path: Path) -> None:
    """No name given and no Content-Disposition: saved as "download"."""
    open_page(page, served)
    with page.expect_download(timeout=30_000) as info:
        name = _run(page, """return (await (await client.start("/unnamed")).save()).filename;""")
    assert name == info.value.suggested_filename == "download"
    info.value.save_as(tmp_path / "unnamed.bin")
    assert (tmp_path / "unnamed.bin").read_bytes() == DATA
