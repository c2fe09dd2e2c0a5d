"""Schema migrations shared by the SQLite and PostgreSQL stores.

Each migration is a tuple of single SQL statements (no ``executescript``:
sqlite3's ``executescript`` commits on its own, which would break the
one-transaction-per-migration rule). Statements may use ``{name}``
placeholders for the few types that differ between engines; each store
supplies them in its ``DDL_TYPES`` mapping:

- ``{real}``: a float column (epoch seconds). SQLite ``REAL`` is 8 bytes,
  PostgreSQL ``REAL`` is only 4, hence ``DOUBLE PRECISION`` there.
- ``{serial_pk}``: an auto-incremented integer primary key, used to keep
  insertion order (FIFO dispatch must not depend on two commands having
  different ``created_at`` values).

Never edit a migration that has shipped; append a new one.
"""

from __future__ import annotations

from collections.abc import Mapping

# The version table itself is created before any migration runs, so it
# cannot be part of the list. One row per applied migration.
SCHEMA_VERSION_DDL = (
    "CREATE TABLE IF NOT EXISTS schema_version ("
    " version INTEGER PRIMARY KEY,"
    " applied_at {real} NOT NULL)"
)

MIGRATIONS: list[tuple[str, ...]] = [
    # 1: agents, commands ledger, API tokens.
    (
        """
        CREATE TABLE agents (
            agent_id TEXT PRIMARY KEY,
            status TEXT NOT NULL DEFAULT 'offline'
                CHECK (status IN ('online', 'offline')),
            version TEXT,
            site TEXT,
            hostname TEXT,
            protocol INTEGER,
            verbs TEXT NOT NULL DEFAULT '{{}}',
            connected_at {real},
            last_seen {real},
            peer TEXT,
            session_id TEXT,
            labels TEXT NOT NULL DEFAULT '{{}}'
        )
        """,
        """
        CREATE TABLE commands (
            seq {serial_pk},
            command_id TEXT NOT NULL UNIQUE,
            agent_id TEXT NOT NULL,
            verb TEXT NOT NULL,
            args TEXT NOT NULL DEFAULT '{{}}',
            status TEXT NOT NULL,
            timeout {real},
            exit_code INTEGER,
            result TEXT,
            stdout TEXT,
            stderr TEXT,
            stdout_truncated INTEGER NOT NULL DEFAULT 0,
            stderr_truncated INTEGER NOT NULL DEFAULT 0,
            error TEXT,
            created_at {real} NOT NULL,
            dispatched_at {real},
            started_at {real},
            finished_at {real}
        )
        """,
        "CREATE INDEX commands_agent_status_created ON commands (agent_id, status, created_at)",
        # For the unfiltered "newest first" listing.
        "CREATE INDEX commands_created ON commands (created_at)",
        """
        CREATE TABLE tokens (
            name TEXT PRIMARY KEY,
            token_hash TEXT NOT NULL UNIQUE,
            created_at {real} NOT NULL
        )
        """,
    ),
    # 2: delivery deadlines, command history, idempotency keys, session epochs.
    (
        "ALTER TABLE commands ADD COLUMN expires_at {real}",
        # Serves the deadline sweeps (status = 'queued' / IN dispatched, running).
        "CREATE INDEX commands_status_expires ON commands (status, expires_at)",
        """
        CREATE TABLE command_events (
            seq {serial_pk},
            command_id TEXT NOT NULL REFERENCES commands (command_id),
            status TEXT NOT NULL,
            at {real} NOT NULL,
            detail TEXT
        )
        """,
        "CREATE INDEX command_events_command ON command_events (command_id, seq)",
        # The key row is written before its command in the same transaction
        # (so a concurrent duplicate becomes a lookup), hence the deferred FK.
        """
        CREATE TABLE idempotency_keys (
            token_name TEXT NOT NULL,
            idem_key TEXT NOT NULL,
            request_hash TEXT NOT NULL,
            command_id TEXT NOT NULL
                REFERENCES commands (command_id) DEFERRABLE INITIALLY DEFERRED,
            created_at {real} NOT NULL,
            PRIMARY KEY (token_name, idem_key)
        )
        """,
        "ALTER TABLE agents ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0",
        # Backfill the history of commands created before version 2 from
        # their timestamps (one statement per step, so seq follows the
        # lifecycle within each command). Repeated dispatches are not
        # recoverable; detail marks these events as reconstructed.
        """
        INSERT INTO command_events (command_id, status, at, detail)
        SELECT command_id, 'queued', created_at, '{{"migrated":true}}'
        FROM commands ORDER BY seq
        """,
        """
        INSERT INTO command_events (command_id, status, at, detail)
        SELECT command_id, 'dispatched', COALESCE(dispatched_at, created_at),
            '{{"migrated":true}}'
        FROM commands
        WHERE dispatched_at IS NOT NULL OR status = 'dispatched'
        ORDER BY seq
        """,
        """
        INSERT INTO command_events (command_id, status, at, detail)
        SELECT command_id, 'running', COALESCE(started_at, dispatched_at, created_at),
            '{{"migrated":true}}'
        FROM commands
        WHERE started_at IS NOT NULL OR status = 'running'
        ORDER BY seq
        """,
        """
        INSERT INTO command_events (command_id, status, at, detail)
        SELECT command_id, status,
            COALESCE(finished_at, started_at, dispatched_at, created_at),
            '{{"migrated":true}}'
        FROM commands
        WHERE status NOT IN ('queued', 'dispatched', 'running')
        ORDER BY seq
        """,
    ),
    # 3: live command output, agent telemetry, cancellation requests.
    (
        # Chunks as streamed by the agent; (command_id, seq) makes a
        # redelivered chunk a no-op (INSERT ... ON CONFLICT DO NOTHING).
        """
        CREATE TABLE command_output (
            command_id TEXT NOT NULL REFERENCES commands (command_id),
            seq INTEGER NOT NULL CHECK (seq >= 0),
            stream TEXT NOT NULL CHECK (stream IN ('stdout', 'stderr')),
            data TEXT NOT NULL,
            at {real} NOT NULL,
            PRIMARY KEY (command_id, seq)
        )
        """,
        # Host metrics, one row per report; data is a JSON object. seq
        # orders an agent's reports and bounds how many are kept.
        """
        CREATE TABLE agent_telemetry (
            seq {serial_pk},
            agent_id TEXT NOT NULL,
            at {real} NOT NULL,
            data TEXT NOT NULL
        )
        """,
        "CREATE INDEX agent_telemetry_agent ON agent_telemetry (agent_id, seq)",
        "ALTER TABLE commands ADD COLUMN cancel_requested_at {real}",
    ),
    # 4: token roles and scopes, agent certificate serials, certificate
    # revocations, the hash-chained audit log.
    (
        # Tokens made before roles existed keep working as operators.
        "ALTER TABLE tokens ADD COLUMN role TEXT NOT NULL DEFAULT 'operator'"
        " CHECK (role IN ('viewer', 'operator', 'admin'))",
        # JSON lists, NULL = no restriction.
        "ALTER TABLE tokens ADD COLUMN verbs TEXT",
        "ALTER TABLE tokens ADD COLUMN sites TEXT",
        "ALTER TABLE tokens ADD COLUMN expires_at {real}",
        "ALTER TABLE tokens ADD COLUMN revoked_at {real}",
        # Hex serial of the certificate the agent last said HELLO with.
        "ALTER TABLE agents ADD COLUMN cert_serial TEXT",
        # seq orders revocations so that backends can poll "since the last one".
        """
        CREATE TABLE revoked_certificates (
            seq {serial_pk},
            serial TEXT NOT NULL UNIQUE,
            agent_id TEXT NOT NULL,
            revoked_at {real} NOT NULL,
            reason TEXT
        )
        """,
        # Append-only; seq is assigned by the writer (last + 1) under a lock,
        # hash = SHA-256(canonical record + prev_hash) (viworks.backend.audit).
        """
        CREATE TABLE audit_log (
            seq INTEGER PRIMARY KEY,
            at {real} NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            target TEXT,
            outcome TEXT NOT NULL,
            detail TEXT,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL
        )
        """,
        "CREATE INDEX audit_log_hash ON audit_log (hash)",
    ),
    # 5: jobs (one verb fanned out to the agents a selector matched) and their targets.
    (
        # concurrency/max_errors keep what the operator asked ("10%" or "3");
        # *_limit is what it resolved to for this job's number of targets.
        # args are redacted (secrets are never stored); has_secrets tells a
        # restarted backend that it cannot start the remaining targets.
        """
        CREATE TABLE jobs (
            job_id TEXT PRIMARY KEY,
            status TEXT NOT NULL
                CHECK (status IN ('running', 'paused', 'stopped', 'completed', 'cancelled')),
            verb TEXT NOT NULL,
            args TEXT NOT NULL DEFAULT '{{}}',
            has_secrets INTEGER NOT NULL DEFAULT 0,
            selector TEXT NOT NULL,
            concurrency TEXT NOT NULL,
            concurrency_limit INTEGER NOT NULL CHECK (concurrency_limit >= 1),
            max_errors TEXT NOT NULL,
            max_errors_limit INTEGER NOT NULL CHECK (max_errors_limit >= 1),
            canary INTEGER,
            canary_auto INTEGER NOT NULL DEFAULT 0,
            canary_passed INTEGER NOT NULL DEFAULT 0,
            timeout {real},
            ttl {real} NOT NULL,
            created_by TEXT,
            created_at {real} NOT NULL,
            updated_at {real} NOT NULL,
            finished_at {real},
            error TEXT
        )
        """,
        "CREATE INDEX jobs_status_created ON jobs (status, created_at)",
        "CREATE INDEX jobs_created ON jobs (created_at)",
        # One row per targeted agent, in the order they are started. A target
        # without a command is pending, or has an outcome that never made a
        # command: 'expired' (offline past the job's TTL) or 'rejected' (the
        # ledger refused it, e.g. the agent no longer offers the verb).
        """
        CREATE TABLE job_targets (
            job_id TEXT NOT NULL REFERENCES jobs (job_id),
            position INTEGER NOT NULL,
            agent_id TEXT NOT NULL,
            command_id TEXT REFERENCES commands (command_id),
            outcome TEXT CHECK (outcome IN ('expired', 'rejected')),
            error TEXT,
            PRIMARY KEY (job_id, position),
            UNIQUE (job_id, agent_id)
        )
        """,
        "CREATE INDEX job_targets_command ON job_targets (command_id)",
    ),
    # 6: whether each agent verifies command signatures (its HELLO's "signing").
    (
        "ALTER TABLE agents ADD COLUMN signing TEXT NOT NULL DEFAULT 'off'"
        " CHECK (signing IN ('on', 'off'))",
    ),
    # 7: the key's command reference indexed. Inserting a command checks the
    # (deferred) foreign key of the key row written just before it: without this
    # index SQLite scanned every idempotency key (one per job target) per command.
    ("CREATE INDEX idempotency_keys_command ON idempotency_keys (command_id)",),
    # 8: every certificate each agent id has connected with (recorded at every
    # handshake), so that revoking an agent revokes a stolen second certificate too.
    (
        """
        CREATE TABLE agent_certificates (
            agent_id TEXT NOT NULL,
            serial TEXT NOT NULL,
            first_seen {real} NOT NULL,
            last_seen {real} NOT NULL,
            PRIMARY KEY (agent_id, serial)
        )
        """,
        # Revoking by serial looks the serial's agent up.
        "CREATE INDEX agent_certificates_serial ON agent_certificates (serial)",
        # The serials known before version 8: each agent's last one.
        """
        INSERT INTO agent_certificates (agent_id, serial, first_seen, last_seen)
        SELECT agent_id, cert_serial, COALESCE(connected_at, last_seen, 0),
            COALESCE(last_seen, connected_at, 0)
        FROM agents WHERE cert_serial IS NOT NULL
        """,
    ),
    # 9: each agent's telemetry history bounded in bytes ([backend] telemetry_history_bytes).
    # bytes: the stored JSON's length (ASCII); bytes_before: the bytes of the agent's
    # earlier reports (a running sum), so the reports beyond the budget are found through
    # the index instead of summing the history at every report.
    (
        "ALTER TABLE agent_telemetry ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE agent_telemetry ADD COLUMN bytes_before INTEGER NOT NULL DEFAULT 0",
        """
        UPDATE agent_telemetry SET bytes = sums.bytes, bytes_before = sums.bytes_before
        FROM (
            SELECT seq, LENGTH(data) AS bytes,
                SUM(LENGTH(data)) OVER (PARTITION BY agent_id ORDER BY seq) - LENGTH(data)
                    AS bytes_before
            FROM agent_telemetry
        ) AS sums
        WHERE agent_telemetry.seq = sums.seq
        """,
        "CREATE INDEX agent_telemetry_bytes"
        " ON agent_telemetry (agent_id, seq, bytes_before, bytes)",
        "DROP INDEX agent_telemetry_agent",
    ),
    # 10: the web console. Sessions: the SHA-256 of a random session id (the cookie holds
    # the id; the database never does) -> the token that logged in, until expires_at. In
    # the store, so a restarted backend or another replica knows them. Agents keep their
    # certificate's end of validity; the audit log is filtered by time.
    (
        """
        CREATE TABLE console_sessions (
            session_hash TEXT PRIMARY KEY,
            token_name TEXT NOT NULL REFERENCES tokens (name),
            created_at {real} NOT NULL,
            expires_at {real} NOT NULL
        )
        """,
        "CREATE INDEX console_sessions_expires ON console_sessions (expires_at)",
        "CREATE INDEX console_sessions_token ON console_sessions (token_name)",
        "ALTER TABLE agents ADD COLUMN cert_not_after {real}",
        "CREATE INDEX audit_log_at ON audit_log (at)",
    ),
]

LATEST_VERSION = len(MIGRATIONS)


def render(statement: str, ddl_types: Mapping[str, str]) -> str:
    """Fill the engine-specific type placeholders of one DDL statement."""
    return statement.format_map(ddl_types).strip()
