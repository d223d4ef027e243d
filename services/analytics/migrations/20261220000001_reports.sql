-- Report jobs (`POST /v1/reports`): what was asked, where the job is, and,
-- once it succeeded, the file itself until it expires.
--
-- The runner (src/reports/runner.rs) claims the oldest runnable job with
-- `FOR UPDATE SKIP LOCKED` and holds it by a lease: `locked_by` names the
-- runner, `locked_until` is when the claim lapses unless renewed. A runner
-- that dies stops renewing, and another takes the job once the lease has
-- passed, so a job survives a restart and two replicas never run one job.
-- `run_after` holds a retry back (the backoff). The clock is Postgres's
-- `now()` throughout, never a process's.
CREATE TABLE analytics.report_jobs (
    id           uuid        PRIMARY KEY,
    user_id      uuid        NOT NULL,
    kind         text        NOT NULL
        CHECK (kind IN ('spending_by_category', 'income_expense', 'cash_flow', 'net_worth')),
    format       text        NOT NULL CHECK (format IN ('csv', 'svg')),
    range_from   date        NOT NULL,
    range_to     date        NOT NULL,
    status       text        NOT NULL DEFAULT 'queued'
        CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'expired')),
    progress     smallint    NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
    attempts     integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts integer     NOT NULL CHECK (max_attempts >= 1),
    -- The last attempt's error: shown while a retry waits, and once failed.
    error        text,
    run_after    timestamptz NOT NULL DEFAULT now(),
    locked_by    uuid,
    locked_until timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    started_at   timestamptz,
    finished_at  timestamptz,
    -- Set when it succeeds; the sweep then deletes `content` and marks it
    -- `expired`.
    expires_at   timestamptz,
    content      bytea,
    content_type text,
    file_name    text,
    CHECK (range_from <= range_to),
    CHECK ((status = 'succeeded') = (content IS NOT NULL))
);

-- The caller's jobs, newest first (the listing's keyset).
CREATE INDEX report_jobs_user_idx ON analytics.report_jobs (user_id, created_at DESC, id DESC);
-- The runner's claim: only unfinished jobs, oldest first.
CREATE INDEX report_jobs_runnable_idx ON analytics.report_jobs (created_at, id)
    WHERE status IN ('queued', 'running');
-- The sweep of expired reports.
CREATE INDEX report_jobs_expiry_idx ON analytics.report_jobs (expires_at) WHERE status = 'succeeded';
