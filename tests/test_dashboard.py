"""The jobs dashboard through Flask's test client: closed by default, lists, shows, acts."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask, request

from flask_async_request import AsyncRequest, Job, JobStatus
from flask_async_request.dashboard import blueprint
from flask_async_request.reading import PAGE_SIZE
from flask_async_request.values import utcnow
from tests.conftest import AppFactory, current_db
from tests.dashboards import PREFIX, add, csrf_token, job_ids, open_dashboard, statements, stored

SCRIPT = "<script>alert('x')</script>"


# Closed unless the app authorises --------------------------------------------------------

ACTIONS = [
    ("get", "/"),
    ("get", "/jobs/1"),
    ("post", "/jobs/1/retry"),
    ("post", "/jobs/1/cancel"),
]


@pytest.mark.parametrize(("method", "path"), ACTIONS)
def test_off_by_default(make_app: AppFactory, method: str, path: str) -> None:
    """Without init_dashboard there is no dashboard: 404."""
    app = make_app()
    add(app)
    assert getattr(app.test_client(), method)(PREFIX + path).status_code == 404


@pytest.mark.parametrize(("method", "path"), ACTIONS)
def test_closed_without_a_callback(make_app: AppFactory, method: str, path: str) -> None:
    """init_dashboard(app, authorize=None) keeps every dashboard url at 404."""
    app = open_dashboard(make_app, authorize=None)
    add(app)
    assert getattr(app.test_client(), method)(PREFIX + path).status_code == 404


@pytest.mark.parametrize(("method", "path"), ACTIONS)
@pytest.mark.parametrize("answer", [False, None, "yes", 1])
def test_forbidden_unless_the_callback_says_true(
    make_app: AppFactory, method: str, path: str, answer: Any
) -> None:
    """A callback answering anything but True gets 403, and nothing changes."""
    app = open_dashboard(make_app, authorize=lambda: answer)
    job_id = add(app, status=JobStatus.FAILED)
    response = getattr(app.test_client(), method)(PREFIX + path)
    assert response.status_code == 403
    assert stored(app, job_id).status is JobStatus.FAILED


def test_the_callback_sees_the_request(make_app: AppFactory) -> None:
    """The callback decides per request (here by a header)."""
    app = open_dashboard(make_app, authorize=lambda: request.headers.get("X-Operator") == "ada")
    client = app.test_client()
    assert client.get(PREFIX + "/").status_code == 403
    assert client.get(PREFIX + "/", headers={"X-Operator": "ada"}).status_code == 200


def test_blueprint_registered_by_hand_is_closed(make_app: AppFactory) -> None:
    """The blueprint registered without init_dashboard (and its callback) answers 404."""
    app = make_app()
    app.register_blueprint(blueprint, url_prefix=PREFIX)
    assert app.test_client().get(PREFIX + "/").status_code == 404


def test_init_dashboard_needs_init_app_and_runs_once(make_app: AppFactory) -> None:
    """Before init_app, or a second time, init_dashboard says what to do."""
    bare = Flask(__name__)
    with pytest.raises(RuntimeError, match=r"call async_request.init_app\(app\) before"):
        AsyncRequest().init_dashboard(bare, authorize=lambda: True)
    extension = AsyncRequest()
    app = make_app(extension=extension)
    extension.init_dashboard(app, authorize=lambda: True)
    with pytest.raises(RuntimeError, match="already registered"):
        extension.init_dashboard(app, authorize=lambda: True)


def test_init_dashboard_checks_its_arguments(make_app: AppFactory) -> None:
    """A callback that is not callable, or a prefix without a slash, is refused."""
    extension = AsyncRequest()
    make_app(extension=extension)
    with pytest.raises(TypeError, match="authorize is True"):
        extension.init_dashboard(make_app(), authorize=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="url_prefix is 'ops'"):
        extension.init_dashboard(make_app(), authorize=lambda: True, url_prefix="ops")


def test_custom_url_prefix(make_app: AppFactory) -> None:
    """url_prefix moves the dashboard."""
    extension = AsyncRequest()
    app = make_app(extension=extension)
    extension.init_dashboard(app, authorize=lambda: True, url_prefix="/ops/jobs/")
    assert app.test_client().get("/ops/jobs/").status_code == 200
    assert app.test_client().get(PREFIX + "/").status_code == 404


def test_security_headers(dash: Flask) -> None:
    """Pages allow no script, no framing and no caching."""
    response = dash.test_client().get(PREFIX + "/")
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy
    assert "script-src" not in policy
    assert "frame-ancestors 'none'" in policy
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Cache-Control"] == "no-store"


# The list --------------------------------------------------------------------------------


def test_list_newest_first(dash: Flask) -> None:
    """The list shows every job, highest id first, with its status and worker."""
    ids = [add(dash, status=status) for status in JobStatus]
    html = dash.test_client().get(PREFIX + "/").get_data(as_text=True)
    assert job_ids(html) == ids[::-1]
    assert "tests.workers:Echo" in html
    assert 'class="status status-cancelled">cancelled<' in html


def test_list_empty(dash: Flask) -> None:
    """No jobs: a sentence, not an empty table."""
    html = dash.test_client().get(PREFIX + "/").get_data(as_text=True)
    assert "No jobs." in html


def test_filter_by_status(dash: Flask) -> None:
    """?status= keeps only that status."""
    failed = [add(dash, status=JobStatus.FAILED) for _ in range(2)]
    add(dash, status=JobStatus.PROCESSED)
    html = dash.test_client().get(PREFIX + "/?status=failed").get_data(as_text=True)
    assert job_ids(html) == failed[::-1]


def test_filter_by_worker(dash: Flask) -> None:
    """?worker= keeps only that worker's jobs, and combines with status."""
    sleep_waiting = add(dash, worker="tests.workers:Sleep")
    sleep_failed = add(dash, worker="tests.workers:Sleep", status=JobStatus.FAILED)
    add(dash, worker="tests.workers:Echo", status=JobStatus.FAILED)
    client = dash.test_client()
    html = client.get(PREFIX + "/?worker=tests.workers:Sleep").get_data(as_text=True)
    assert job_ids(html) == [sleep_failed, sleep_waiting]
    html = client.get(PREFIX + "/?worker=tests.workers:Sleep&status=failed").get_data(as_text=True)
    assert job_ids(html) == [sleep_failed]


def test_filter_by_age(dash: Flask) -> None:
    """?older_than= and ?newer_than= filter by creation time."""
    now = utcnow()
    old = add(dash, created_at=now - timedelta(days=3))
    middle = add(dash, created_at=now - timedelta(hours=5))
    new = add(dash, created_at=now - timedelta(minutes=1))
    client = dash.test_client()

    def listed(query: str) -> list[int]:
        return job_ids(client.get(f"{PREFIX}/?{query}").get_data(as_text=True))

    assert listed("older_than=1d") == [old]
    assert listed("newer_than=1h") == [new]
    assert listed("older_than=1h&newer_than=1d") == [middle]
    assert listed("older_than=1w") == []
    assert listed("newer_than=10s") == []
    assert listed("older_than=2h&status=waiting") == [middle, old]


@pytest.mark.parametrize(
    ("query", "message"),
    [("status=lost", "status is &#39;lost&#39;"), ("older_than=soon", "such as 90, 15m")],
)
def test_bad_filter_is_a_400_page(dash: Flask, query: str, message: str) -> None:
    """An unknown status or a bad duration answers 400 with the reason."""
    add(dash)
    response = dash.test_client().get(f"{PREFIX}/?{query}")
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert message in html
    assert job_ids(html) == []


def test_keyset_paging(dash: Flask) -> None:
    """Pages of PAGE_SIZE by id, newest first: Older, Older, then Newer and Newest go back."""
    total = 2 * PAGE_SIZE + 5
    with dash.app_context():
        session = current_db().session
        session.add_all(
            Job(worker="tests.workers:Echo", params={"args": [], "kwargs": {}})
            for _ in range(total)
        )
        session.commit()
    client = dash.test_client()

    def page(url: str) -> tuple[list[int], dict[str, str]]:
        html = client.get(url).get_data(as_text=True)
        links = dict(re.findall(r'<a href="([^"]+)" id="page-(\w+)"', html))
        return job_ids(html), {name: url.replace("&amp;", "&") for url, name in links.items()}

    first, links = page(PREFIX + "/")
    assert first == list(range(total, total - PAGE_SIZE, -1))
    assert set(links) == {"older"}
    second, links = page(links["older"])
    assert second == list(range(total - PAGE_SIZE, 5, -1))
    assert set(links) == {"newest", "newer", "older"}
    third, links = page(links["older"])
    assert third == [5, 4, 3, 2, 1]
    assert set(links) == {"newest", "newer"}
    back, links = page(links["newer"])
    assert back == second
    assert page(links["newer"])[0] == first
    assert page(links["newest"])[0] == first


def test_paging_keeps_the_filters(dash: Flask) -> None:
    """The Older link of a filtered list stays filtered."""
    failed = [add(dash, status=JobStatus.FAILED) for _ in range(PAGE_SIZE + 2)]
    for _ in range(3):
        add(dash, status=JobStatus.PROCESSED)
    client = dash.test_client()
    html = client.get(PREFIX + "/?status=failed").get_data(as_text=True)
    older = re.search(r'<a href="([^"]+)" id="page-older"', html)
    assert older
    html = client.get(older.group(1).replace("&amp;", "&")).get_data(as_text=True)
    assert job_ids(html) == failed[1::-1]


def test_list_is_one_query_without_n_plus_one(dash: Flask) -> None:
    """A page is one SELECT, the chips' counts one more; an age filter adds one per bound."""
    for _ in range(PAGE_SIZE + 5):
        add(dash, status=JobStatus.PROCESSED, owner="ada", progress=1.0)
    client = dash.test_client()
    with statements(dash) as seen:
        assert len(job_ids(client.get(PREFIX + "/?status=processed").get_data(as_text=True))) == (
            PAGE_SIZE
        )
    assert len([s for s, _ in seen if s.lstrip().upper().startswith("SELECT")]) == 2
    with statements(dash) as seen:
        client.get(PREFIX + "/?older_than=0s&newer_than=2d")
    assert len([s for s, _ in seen if s.lstrip().upper().startswith("SELECT")]) == 4


FILTERS = [
    "",
    "status=failed",
    "worker=tests.workers:Echo",
    "status=failed&worker=tests.workers:Echo",
    "older_than=1h",
    "newer_than=1d",
    "status=processed&older_than=1h&newer_than=3d",
    "before=40",
    "after=10",
    "status=failed&before=40",
    "worker=tests.workers:Echo&after=10",
]


@pytest.mark.parametrize("query", FILTERS)
def test_every_read_uses_an_index(dash: Flask, query: str) -> None:
    """SQLite's plan of every dashboard SELECT searches an index: no table scan, no sort."""
    now = utcnow()
    for number in range(60):
        add(
            dash,
            status=list(JobStatus)[number % 5],
            worker=f"tests.workers:{'Echo' if number % 3 else 'Sleep'}",
            created_at=now - timedelta(hours=number),
        )
    with statements(dash) as seen:
        assert dash.test_client().get(f"{PREFIX}/?{query}").status_code == 200
        assert dash.test_client().get(f"{PREFIX}/jobs/7").status_code == 200
    selects = [(s, p) for s, p in seen if s.lstrip().upper().startswith("SELECT")]
    assert selects
    with dash.app_context():
        connection = current_db().engine.raw_connection()
        try:
            cursor = connection.cursor()
            for statement, parameters in selects:
                cursor.execute(f"EXPLAIN QUERY PLAN {statement}", parameters)
                plan = [row[3] for row in cursor.fetchall()]
                assert plan, statement
                # A SCAN without an index is the table's own b-tree, which is the
                # primary key: fine for the unfiltered list and for a list of finished
                # statuses alone (no index holds the status, so that a claim's UPDATE
                # is HOT on PostgreSQL, and finished jobs are most of a table), walked
                # in id order up to its LIMIT, and nowhere else.
                by_status = re.search(r"WHERE \S+\.status IN \([^)]*\) ORDER BY", statement)
                unfiltered = ("WHERE" not in statement or by_status) and "LIMIT" in statement
                for step in plan:
                    assert "TEMP B-TREE" not in step, (statement, plan)
                    if step.startswith("SCAN") and "USING" not in step:
                        assert unfiltered, (statement, plan)
        finally:
            connection.close()


# One job ---------------------------------------------------------------------------------


def test_show_a_job(dash: Flask) -> None:
    """A job's page: worker, arguments, reply, attempts, timings, owner, progress, callback."""
    now = utcnow()
    job_id = add(
        dash,
        status=JobStatus.PROCESSED,
        params={"args": [42, "small"], "kwargs": {"size": "big"}},
        status_code=201,
        response='{"url": "/thumbs/42"}',
        content_type="application/json",
        attempts=2,
        owner="user-7",
        progress=0.5,
        progress_message="half way",
        callback_url="https://client.example/hooks",
        callback_status="delivered: 204",
        created_at=now - timedelta(seconds=30),
        started_at=now - timedelta(seconds=20),
        finished_at=now - timedelta(seconds=5),
    )
    response = dash.test_client().get(f"{PREFIX}/jobs/{job_id}")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    for expected in [
        f"Job {job_id}",
        ">processed<",
        "tests.workers:Echo",
        "&#34;small&#34;",
        "&#34;size&#34;: &#34;big&#34;",
        "{&#34;url&#34;: &#34;/thumbs/42&#34;}",
        'id="job-status-code">201<',
        "application/json",
        'id="job-attempts">2<',
        'id="job-owner">user-7<',
        "50% · half way",
        'id="job-waited">10.0 s<',
        'id="job-ran">15.0 s<',
        "https://client.example/hooks",
        "delivered: 204",
    ]:
        assert expected in html, expected
    assert 'id="retry"' not in html
    assert 'id="cancel"' not in html


def test_show_a_failed_job_with_its_error(dash: Flask) -> None:
    """A failed job shows its error message and a Retry button."""
    job_id = add(dash, status=JobStatus.FAILED, status_code=500, response='{"error": "disk full"}')
    html = dash.test_client().get(f"{PREFIX}/jobs/{job_id}").get_data(as_text=True)
    assert 'id="job-error">disk full<' in html
    assert 'id="retry"' in html
    assert 'id="cancel"' not in html


def test_show_a_running_job(dash: Flask) -> None:
    """A running job has a Cancel button and its times so far."""
    job_id = add(dash, status=JobStatus.PROCESSING, started_at=utcnow(), attempts=1)
    html = dash.test_client().get(f"{PREFIX}/jobs/{job_id}").get_data(as_text=True)
    assert 'id="cancel"' in html
    assert "so far" in html
    assert "No reply yet" in html


def test_show_missing_job_is_404(dash: Flask) -> None:
    """An unknown id answers 404."""
    assert dash.test_client().get(f"{PREFIX}/jobs/999").status_code == 404


def test_long_reply_is_cut(dash: Flask) -> None:
    """A huge reply is shown cut, saying how much is left out."""
    job_id = add(dash, status=JobStatus.PROCESSED, response="x" * 100_010)
    html = dash.test_client().get(f"{PREFIX}/jobs/{job_id}").get_data(as_text=True)
    assert "10 more characters not shown" in html
    assert "x" * 100_001 not in html


# Escaping --------------------------------------------------------------------------------


def test_everything_shown_is_escaped(dash: Flask) -> None:
    """Reply, arguments, owner, worker, progress message and callback are text, never markup."""
    job_id = add(
        dash,
        status=JobStatus.FAILED,
        worker=f"tests.workers:{SCRIPT}",
        params={"args": [SCRIPT], "kwargs": {SCRIPT: SCRIPT}},
        response=SCRIPT,
        owner=SCRIPT,
        progress_message=SCRIPT,
        callback_url=f"https://x.example/{SCRIPT}",
        callback_status=SCRIPT,
    )
    client = dash.test_client()
    for url in [f"{PREFIX}/jobs/{job_id}", f"{PREFIX}/", f"{PREFIX}/?worker={SCRIPT}"]:
        html = client.get(url).get_data(as_text=True)
        assert "<script" not in html, url
        assert "&lt;script&gt;" in html, url


# Retry and cancel ------------------------------------------------------------------------


def test_retry_a_failed_job(dash: Flask) -> None:
    """Retry runs a failed job again (eagerly here) and says so."""
    job_id = add(dash, status=JobStatus.FAILED, status_code=500, response='{"error": "x"}')
    client = dash.test_client()
    token = csrf_token(client, job_id)
    response = client.post(f"{PREFIX}/jobs/{job_id}/retry", data={"csrf_token": token})
    assert response.status_code == 303
    assert response.headers["Location"].endswith(f"{PREFIX}/jobs/{job_id}")
    job = stored(dash, job_id)
    assert (job.status, job.status_code) == (JobStatus.PROCESSED, 200)
    html = client.get(response.headers["Location"]).get_data(as_text=True)
    assert f"Job {job_id} is waiting to run again." in html


def test_retry_refuses_a_job_that_did_not_fail(dash: Flask) -> None:
    """Retrying a job that is not failed changes nothing and says why."""
    job_id = add(dash, status=JobStatus.PROCESSED, response="done")
    client = dash.test_client()
    # A finished job's page has no forms; another job's page gives the session's token.
    token = csrf_token(client, add(dash, status=JobStatus.FAILED))
    response = client.post(
        f"{PREFIX}/jobs/{job_id}/retry", data={"csrf_token": token}, follow_redirects=True
    )
    assert "only failed jobs can be retried" in response.get_data(as_text=True)
    assert stored(dash, job_id).response == "done"


def test_cancel_a_running_job(dash: Flask) -> None:
    """Cancel ends a running job as cancelled."""
    job_id = add(dash, status=JobStatus.PROCESSING, started_at=utcnow(), attempts=1)
    client = dash.test_client()
    token = csrf_token(client, job_id)
    response = client.post(
        f"{PREFIX}/jobs/{job_id}/cancel", data={"csrf_token": token}, follow_redirects=True
    )
    assert f"Job {job_id} is cancelled." in response.get_data(as_text=True)
    job = stored(dash, job_id)
    assert (job.status, job.status_code) == (JobStatus.CANCELLED, 499)


def test_cancel_a_waiting_job(dash: Flask) -> None:
    """Cancel ends a waiting job too."""
    job_id = add(dash)
    client = dash.test_client()
    client.post(f"{PREFIX}/jobs/{job_id}/cancel", data={"csrf_token": csrf_token(client, job_id)})
    assert stored(dash, job_id).status is JobStatus.CANCELLED


def test_cancel_refuses_a_finished_job(dash: Flask) -> None:
    """Cancelling a finished job changes nothing and says why."""
    job_id = add(dash, status=JobStatus.PROCESSED, response="done")
    client = dash.test_client()
    token = csrf_token(client, add(dash))
    response = client.post(
        f"{PREFIX}/jobs/{job_id}/cancel", data={"csrf_token": token}, follow_redirects=True
    )
    assert "is processed already. It cannot be cancelled." in response.get_data(as_text=True)
    assert stored(dash, job_id).status is JobStatus.PROCESSED


@pytest.mark.parametrize("action", ["retry", "cancel"])
def test_action_on_a_missing_job_is_404(dash: Flask, action: str) -> None:
    """Retry or cancel of an unknown id answers 404."""
    client = dash.test_client()
    token = csrf_token(client, add(dash))
    assert client.post(f"{PREFIX}/jobs/999/{action}", data={"csrf_token": token}).status_code == (
        404
    )


@pytest.mark.parametrize("action", ["retry", "cancel"])
@pytest.mark.parametrize("token", [None, "", "forged"])
def test_post_without_the_csrf_token_is_refused(
    dash: Flask, action: str, token: str | None
) -> None:
    """A POST without this session's token (missing, empty, forged) is 400 and changes nothing."""
    status = JobStatus.FAILED if action == "retry" else JobStatus.WAITING
    job_id = add(dash, status=status)
    client = dash.test_client()
    csrf_token(client, job_id)
    data = {} if token is None else {"csrf_token": token}
    assert client.post(f"{PREFIX}/jobs/{job_id}/{action}", data=data).status_code == 400
    assert stored(dash, job_id).status is status


def test_csrf_token_of_another_session_is_refused(dash: Flask) -> None:
    """A token taken from one session does not work in another."""
    job_id = add(dash, status=JobStatus.WAITING)
    victim, attacker = dash.test_client(), dash.test_client()
    stolen = csrf_token(attacker, job_id)
    csrf_token(victim, job_id)
    response = victim.post(f"{PREFIX}/jobs/{job_id}/cancel", data={"csrf_token": stolen})
    assert response.status_code == 400
    assert stored(dash, job_id).status is JobStatus.WAITING


def test_app_templates_take_the_place_of_the_dashboards(
    make_app: AppFactory, tmp_path: Any
) -> None:
    """An app template of the same name replaces the dashboard's own."""
    folder = tmp_path / "templates" / "async_request_dashboard"
    folder.mkdir(parents=True)
    (folder / "jobs.html").write_text("{{ page.jobs | length }} jobs, the app's way")
    app = open_dashboard(make_app)
    app.template_folder = str(tmp_path / "templates")
    add(app)
    assert app.test_client().get(PREFIX + "/").get_data(as_text=True) == "1 jobs, the app's way"
