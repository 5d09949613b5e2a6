"""The tutorial's app: sums of squares, added up by a worker that reports its progress."""

import json

from flask import Flask, request
from flask_sqlalchemy import SQLAlchemy

from flask_async_request import AsyncRequest, EnqueueError, Job, Worker, accepted

db = SQLAlchemy()
async_request = AsyncRequest()

CHUNK = 1_000_000
LARGEST = 1_000_000_000


class SumOfSquares(Worker):
    """Adds up ``i * i`` for every ``i`` below ``n``, a chunk at a time."""

    def execute(self, n):
        total = 0
        for start in range(0, n, CHUNK):
            stop = min(start + CHUNK, n)
            total += sum(i * i for i in range(start, stop))
            # Polls show it; once the job is cancelled it raises JobCancelled instead.
            self.progress(stop, n, f"added {stop:,} of {n:,}")
        return 200, json.dumps({"n": n, "sum": total})


def create_app(config=None):
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY="change-me-to-32-random-bytes-or-more",
        SQLALCHEMY_DATABASE_URI="sqlite:///sums.db",
    )
    app.config.update(config or {})
    db.init_app(app)
    async_request.init_app(app)
    with app.app_context():
        db.create_all()

    @app.post("/sums")
    def start_sum():
        n = (request.get_json(silent=True) or {}).get("n")
        if isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= LARGEST:
            return {"errors": [{"message": f"n must be an int from 1 to {LARGEST:,}"}]}, 400
        try:
            job = Job.create_and_enqueue(SumOfSquares, n)
        except EnqueueError as e:
            # Stored all the same: the sweeper sends it once the broker is back.
            job = e.job
        return accepted(job)

    return app
