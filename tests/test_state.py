"""Each app's state: found in app.extensions, its identity, and its store made once per process."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask, current_app
from flask_sqlalchemy import SQLAlchemy

from flask_async_request.state import (
    EXTENSION_KEY,
    AsyncRequestState,
    current_flask_app,
    get_state,
)
from tests.conftest import AppFactory


def test_an_app_without_init_app_says_how_to_fix_it(tmp_path: Path) -> None:
    """get_state of an app never given to init_app is a RuntimeError naming the call to make."""
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{tmp_path}/bare.db"
    SQLAlchemy(app)
    with pytest.raises(RuntimeError, match=r"call async_request\.init_app\(app\)"):
        get_state(app)
    with app.app_context(), pytest.raises(RuntimeError, match="not initialised on this app"):
        get_state()


def test_the_state_is_kept_in_the_apps_extensions(make_app: AppFactory) -> None:
    """init_app keeps the state under app.extensions["async_request"]."""
    app = make_app()
    assert EXTENSION_KEY == "async_request"
    state = get_state(app)
    assert isinstance(state, AsyncRequestState)
    assert state is app.extensions[EXTENSION_KEY]
    assert state.db is app.extensions["sqlalchemy"]
    assert state.celery is app.extensions["celery"]
    assert state.outbox is None


def test_without_an_app_the_current_one_is_meant(make_app: AppFactory) -> None:
    """get_state() is the state of the app whose context is pushed, for each of two apps."""
    first, second = make_app(), make_app()
    assert get_state(first) is not get_state(second)
    for app in (first, second):
        with app.app_context():
            assert get_state() is get_state(app)


def test_current_flask_app_is_the_app_not_its_proxy(app: Flask) -> None:
    """The object itself, which threads and signal senders can keep after the context ends."""
    assert current_flask_app() is app
    assert current_app is not app  # the proxy


class Loader:
    """An extension object as the state sees it: one that holds an identity loader."""

    def __init__(self, loader: Callable[[], object] | None) -> None:
        self.identity_loader_callback = loader


@pytest.mark.parametrize(
    ("loader", "identity"),
    [(None, None), (lambda: None, None), (lambda: "alice", "alice"), (lambda: 42, "42")],
    ids=["no loader", "none", "str", "int"],
)
def test_the_identity_is_the_loaders_as_a_str(
    app: Flask, loader: Callable[[], object] | None, identity: str | None
) -> None:
    """No loader, or a loader that answers None, is no identity; any other answer is its str."""
    state = dataclasses.replace(get_state(app), extension=Loader(loader))
    assert state.identity() == identity


def test_the_identity_is_asked_for_each_time(app: Flask) -> None:
    """The loader is called on every call, so each request gets its own identity."""
    answers = iter(["alice", "bob"])
    state = dataclasses.replace(get_state(app), extension=Loader(lambda: next(answers)))
    assert (state.identity(), state.identity()) == ("alice", "bob")


def test_the_store_is_made_once_per_process(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same store serves every call in a process; a forked child makes its own."""
    state = get_state(app)
    store = state.store()
    assert state.store() is store
    assert store.engine is state.db.engine
    # As a fork's child sees it: another pid.
    monkeypatch.setattr("os.getpid", lambda: store.pid + 1)
    child = state.store()
    assert child is not store
    assert child.pid == store.pid + 1
    assert state.store() is child
