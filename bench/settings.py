"""Where the benchmark's services are; override with environment variables."""

from __future__ import annotations

import os

DATABASE_URL = os.environ.get(
    "BENCH_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/far_bench"
)
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
#: Celery's SQLAlchemy result backend on the same PostgreSQL database.
PEER_DB_RESULT_BACKEND = f"db+{DATABASE_URL}"
#: Each system gets its own queue, so one's worker never takes the other's messages.
PEER_QUEUE = "bench-peer"
PEER_DB_QUEUE = "bench-peer-db"
FAR_QUEUE = "bench-far"
SECRET_KEY = "benchmark-secret-key-long-enough-for-hmac-sha256-signatures-0123"
