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
"""

from __future__ import annotations

import argparse
import functools
import statistics

from bench.inprocess import _repeat, _reset
from flask_async_request import Job, Worker
from flask_async_request.testing import JobRunner


class StoredBytes(Worker):
    """A reply that goes to the result store: 1 MiB of bytes."""

    def execute(self) -> tuple[int, bytes, str]:
        return 200, b"\0" * (1024 * 1024), "application/octet-stream"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--ops", type=int, default=300)
    args = parser.parse_args()
    _reset()
    from bench import far

    with far.app.app_context():
        far.db.create_all()
        text, stored = Job.create_and_enqueue(far.Noop), Job.create_and_enqueue(StoredBytes)
        with JobRunner(far.app) as runner:
            runner.run(text)
            runner.run(stored)
        tokens = {"text reply": text.token, "stored result": stored.token}
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
