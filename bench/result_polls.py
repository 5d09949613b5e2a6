"""The poll of a finished job whose reply is a stored result, beside one whose reply is text.

    python -m bench.result_polls --rounds 7 --ops 300

Two jobs of the benchmark's app (``bench.far``: PostgreSQL, Redis) are run to
their end in this process: one replies a short JSON text, kept in the jobs
table; the other replies 1 MiB of bytes, kept in the result store, whose poll
answers the envelope with its size, checksum and ``href`` instead of the body.
Each round times ``--ops`` polls of each, in turn, with Flask's test client
(process CPU time, ``time.process_time``, and wall time per poll, as
``bench.inprocess`` does); the medians of the rounds and the ratio of the stored
result's CPU to the text's are printed.

Process CPU on a machine shared with other work varies by more than the
difference measured; ``--instructions`` counts instead the instructions a poll
executes, the same from one run to the next whatever else runs: each kind of
poll is made ``--ops`` times in a process of its own under ``valgrind --tool=callgrind``,
beside one that makes none, and the difference, divided by ``--ops``, is the poll's. The
objects of the set-up are frozen out of the garbage collector's scans first
(``gc.freeze``): a full scan of them costs as much as hundreds of polls, and would fall
on one kind or the other by chance.
"""

from __future__ import annotations

import argparse
import functools
import gc
import statistics

from bench.harness import callgrind_instructions
from bench.inprocess import _repeat, _reset
from flask_async_request import Job, Worker
from flask_async_request.testing import JobRunner


class StoredBytes(Worker):
    """A reply that goes to the result store: 1 MiB of bytes."""

    def execute(self) -> tuple[int, bytes, str]:
        return 200, b"\0" * (1024 * 1024), "application/octet-stream"


#: The kinds of poll, by name: what ``--polls`` names.
KINDS = ("text reply", "stored result")


def _jobs() -> dict[str, str]:
    """The two finished jobs' tokens, by kind, in a fresh jobs table."""
    _reset()
    from bench import far

    with far.app.app_context():
        far.db.create_all()
        text, stored = Job.create_and_enqueue(far.Noop), Job.create_and_enqueue(StoredBytes)
        with JobRunner(far.app) as runner:
            runner.run(text)
            runner.run(stored)
        return dict(zip(KINDS, (text.token, stored.token), strict=True))


def _polls(kind: str, ops: int) -> None:
    """Make ``ops`` polls of ``kind`` (none for ``"none"``), after 20 of each to warm up."""
    from bench import far

    tokens = _jobs()
    client = far.app.test_client()
    for _ in range(20):
        for token in tokens.values():
            client.get("/async_request/job", headers={"X-JOB-AUTHORIZATION": token})
    # What the set-up left is no poll's: the collections that follow scan what the
    # polls allocate, not a heap whose full scans would fall on one kind or the other.
    gc.collect()
    gc.freeze()
    for _ in range(ops if kind != "none" else 0):
        client.get("/async_request/job", headers={"X-JOB-AUTHORIZATION": tokens[kind]})


def _instructions(kind: str, ops: int) -> int:
    """The instructions a process making ``ops`` polls of ``kind`` executes, by callgrind."""
    return callgrind_instructions("bench.result_polls", "--polls", kind, "--ops", str(ops))


def instructions(ops: int) -> None:
    """Print the instructions per poll of each kind, and their ratio."""
    baseline = _instructions("none", ops)
    per_poll = {kind: (_instructions(kind, ops) - baseline) / ops for kind in KINDS}
    print(f"{'poll of a finished job':<24} {'instructions':>12}")
    for kind, count in per_poll.items():
        print(f"{kind:<24} {count:>12,.0f}")
    ratio = per_poll["stored result"] / per_poll["text reply"]
    print(f"ratio, stored result / text reply: {ratio:.3f} (target <= 1.0)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--ops", type=int, default=300)
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="count each poll's instructions under valgrind instead of timing it",
    )
    parser.add_argument("--polls", choices=[*KINDS, "none"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.polls:
        _polls(args.polls, args.ops)
        return
    if args.instructions:
        instructions(args.ops)
        return
    from bench import far

    tokens = _jobs()
    client = far.app.test_client()
    cases = {
        name: _repeat(
            functools.partial(
                client.get, "/async_request/job", headers={"X-JOB-AUTHORIZATION": token}
            ),
            far.celery_app,
        )
        for name, token in tokens.items()
    }
    for name, case in cases.items():
        answer = client.get("/async_request/job", headers={"X-JOB-AUTHORIZATION": tokens[name]})
        assert answer.status_code == 200, (name, answer.status_code, answer.data[:200])
        case(20)  # warm up
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
    for round_ in range(args.rounds):
        names = list(cases)
        if round_ % 2:
            names.reverse()
        for name in names:
            figures[name].append(cases[name](args.ops))
    medians = {
        name: (statistics.median(c for c, _ in runs), statistics.median(w for _, w in runs))
        for name, runs in figures.items()
    }
    print(f"{'poll of a finished job':<24} {'CPU us':>8} {'wall us':>8}")
    for name, (cpu, wall) in medians.items():
        print(f"{name:<24} {cpu:>8.0f} {wall:>8.0f}")
    ratio = medians["stored result"][0] / medians["text reply"][0]
    print(f"CPU ratio, stored result / text reply: {ratio:.2f} (target <= 1.0)")


if __name__ == "__main__":
    main()
