"""The PostgreSQL schema and its versioned migrations.

Version *n* of the schema is reached by applying ``MIGRATIONS[0:n]`` in order, each in one
transaction that also records it in ``xlib_schema_migrations``. Migrating takes a
transaction-level advisory lock, so drivers starting together on several hosts migrate once.
A database migrated by a newer plugin (a version this one does not know) is refused.

Error texts (``error``, ``traceback``) are TEXT: clear text as it is, and texts sealed by the
``encrypt`` hook as ``SEALED_PREFIX`` + base64 of the bytes (decoded back when read).
"""

from __future__ import annotations

#: Prefix of an error text stored sealed (bytes from the encrypt hook) in a TEXT column.
SEALED_PREFIX = "xlib-sealed:base64:"

#: Advisory lock key serialising migrations ("XLPS").
MIGRATION_LOCK = 0x584C5053

MIGRATIONS: tuple[tuple[str, str], ...] = (
    (
        "runs, tasks, events, leases",
        """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    pipeline TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    structure TEXT NOT NULL,
    tenant TEXT,
    principal TEXT,
    params TEXT,
    config TEXT,
    source TEXT,
    executor TEXT,
    status TEXT NOT NULL,
    started DOUBLE PRECISION,
    finished DOUBLE PRECISION,
    resumed_from TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS runs_started ON runs(started);
CREATE TABLE IF NOT EXISTS tasks (
    run_id TEXT NOT NULL,
    task TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    started DOUBLE PRECISION,
    finished DOUBLE PRECISION,
    error_type TEXT,
    error TEXT,
    traceback TEXT,
    output BYTEA,
    output_run TEXT,
    tenant TEXT,
    PRIMARY KEY (run_id, task)
);
CREATE TABLE IF NOT EXISTS events (
    id BIGSERIAL PRIMARY KEY,
    run_id TEXT NOT NULL,
    task TEXT,
    ts DOUBLE PRECISION NOT NULL,
    event TEXT NOT NULL,
    attempt INTEGER,
    error_type TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS events_run ON events(run_id, task);
CREATE TABLE IF NOT EXISTS leases (
    run_id TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    proc_start TEXT,
    acquired DOUBLE PRECISION NOT NULL,
    heartbeat DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS leases_holder ON leases(holder);
""",
    ),
    (
        "blob_refs (outputs in the blob store)",
        """
CREATE TABLE IF NOT EXISTS blob_refs (
    run_id TEXT NOT NULL,
    task TEXT NOT NULL,
    name TEXT NOT NULL,
    PRIMARY KEY (run_id, task)
);
CREATE INDEX IF NOT EXISTS blob_refs_name ON blob_refs(name);
""",
    ),
    (
        "cache_entries, streams, stream_batches (result cache, stream checkpoints)",
        """
CREATE TABLE IF NOT EXISTS cache_entries (
    key TEXT PRIMARY KEY,
    tenant TEXT,
    pipeline TEXT NOT NULL,
    task TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL,
    expires DOUBLE PRECISION,
    run_id TEXT,
    output BYTEA NOT NULL
);
CREATE INDEX IF NOT EXISTS cache_entries_task ON cache_entries (pipeline, task);
CREATE TABLE IF NOT EXISTS streams (
    name TEXT PRIMARY KEY,
    pipeline TEXT NOT NULL,
    source TEXT,
    sink TEXT,
    status TEXT NOT NULL,
    seq BIGINT NOT NULL DEFAULT 0,
    "offset" TEXT,
    position TEXT,
    origin TEXT,
    records BIGINT NOT NULL DEFAULT 0,
    outputs BIGINT NOT NULL DEFAULT 0,
    late BIGINT NOT NULL DEFAULT 0,
    dead BIGINT NOT NULL DEFAULT 0,
    lag BIGINT,
    window_state BYTEA,
    tenant TEXT,
    lineage_run TEXT,
    started DOUBLE PRECISION,
    updated DOUBLE PRECISION,
    error TEXT
);
CREATE TABLE IF NOT EXISTS stream_batches (
    stream TEXT NOT NULL,
    seq BIGINT NOT NULL,
    run_id TEXT,
    start_offset TEXT,
    end_offset TEXT,
    records BIGINT NOT NULL,
    outputs BIGINT NOT NULL,
    late BIGINT NOT NULL DEFAULT 0,
    dead BIGINT NOT NULL DEFAULT 0,
    position TEXT,
    output BYTEA,
    committed DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (stream, seq)
);
""",
    ),
    (
        "tasks.ran, tasks.ran_attempt (a task's running event folded into its row)",
        """
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS ran DOUBLE PRECISION;
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS ran_attempt INTEGER;
""",
    ),
)

#: The migration that made each table of the cache and of stream checkpoints (1-based).
TABLE_MIGRATION = {"cache_entries": 3, "streams": 3, "stream_batches": 3}

SCHEMA_VERSION = len(MIGRATIONS)

MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS xlib_schema_migrations (
    version INTEGER PRIMARY KEY,
    description TEXT NOT NULL,
    applied DOUBLE PRECISION NOT NULL
)
"""
