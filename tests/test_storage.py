"""The result store interface: names of results, and what every store has."""

from __future__ import annotations

import pytest

from flask_async_request.storage import ResultStore, parse_name, result_name


def test_a_name_round_trips() -> None:
    """A result's name gives back its job and attempt."""
    assert result_name(12, 3) == "12-3"
    assert parse_name("12-3") == (12, 3)


@pytest.mark.parametrize("name", ["12", "x-1", "1-2-3", "-1-2", "1-2.part", ""])
def test_other_names_are_not_results(name: str) -> None:
    """Anything but ``<job>-<attempt>`` is not a result's name."""
    assert parse_name(name) is None


def test_the_interface_is_abstract() -> None:
    """A store must say how it writes, reads, deletes and lists."""
    with pytest.raises(TypeError, match="abstract"):
        ResultStore()  # type: ignore[abstract]
