"""A dashboard-scale history, generated set-based (generate_series), not row by row.

100 automations x 10 schedules = 1,000 schedules; `executions` runs spread evenly
over the last 90 days (about 90 % succeeded, 7 % failed, 2 % skipped, 1 %
cancelled, the newest 50 still queued), each finished run with 3 step_runs.
"""

from __future__ import annotations

import time

from sqlalchemy import text

DEFAULT_WS = "00000000-0000-0000-0000-000000000001"  # core.access.DEFAULT_WORKSPACE_ID
GENERATE = [
    # Everything in the default workspace, where the member "bench" reads as an admin.
    """
    INSERT INTO workspaces (id, name, max_runs_per_minute)
                VALUES (CAST(:ws AS uuid), 'Default', 100000000)
    -- a benchmark measures the workers, not the workspace's runs-a-minute quota
    ON CONFLICT (id) DO UPDATE SET max_runs_per_minute = EXCLUDED.max_runs_per_minute
    """,
    """
    INSERT INTO memberships (workspace_id, subject, role)
    VALUES (CAST(:ws AS uuid), 'bench', 'admin')
    ON CONFLICT DO NOTHING
    """,
    """
    INSERT INTO automations (id, workspace_id, owner_id, name, description, steps,
        project_context, agent_url, step_timeout_s, max_retries)
    SELECT gen_random_uuid(), CAST(:ws AS uuid), 'bench',
        'automation ' || lpad(g::text, 3, '0'), '',
        '[{"name": "collect", "message": "Collect the numbers"},
          {"name": "summarise", "message": "Summarise"},
          {"name": "report", "message": "Write the report"}]'::jsonb,
        'benchmark', 'http://127.0.0.1:9/agent', 30, 3
    FROM generate_series(1, 100) AS g
    """,
    """
    INSERT INTO schedules (id, automation_id, workspace_id, kind, cron_expr, timezone,
        enabled, misfire_policy, catchup_window_s, overlap_policy, jitter_s, next_run_at,
        dispatched_count, run_count, success_count, failure_count, missed_count,
        skipped_count, created_at)
    SELECT gen_random_uuid(), a.id, a.workspace_id, 'cron', '*/5 * * * *', 'UTC', s % 7 <> 0,
        'run_once', 3600, 'skip', 0, date_trunc('hour', now()) + interval '1 hour', 1000, 1000,
        900, 70, 0, 0, now() - interval '91 days'
    FROM automations a, generate_series(1, 10) AS s
    """,
    """
    CREATE TEMP TABLE bench_slots AS
    SELECT id AS schedule_id, automation_id, workspace_id, row_number() OVER (ORDER BY id) - 1 AS k
    FROM schedules
    """,
    """
    INSERT INTO executions (id, automation_id, workspace_id, schedule_id, trigger,
        scheduled_for, status, attempt, queued_at, started_at, finished_at, current_step,
        total_steps, error, available_at)
    SELECT gen_random_uuid(), s.automation_id, s.workspace_id, s.schedule_id,
        CASE WHEN g % 50 = 0 THEN 'manual' ELSE 'schedule' END,
        x.t, x.status, 1, x.t,
        CASE WHEN x.status IN ('succeeded', 'failed') THEN x.t + interval '1 second' END,
        CASE WHEN x.status <> 'queued' THEN x.t + (2 + x.r * 20) * interval '1 second' END,
        CASE WHEN x.status = 'queued' THEN 0 ELSE 3 END, 3,
        CASE x.status WHEN 'failed' THEN 'step 2: agent answered HTTP 500 Internal Server Error'
            WHEN 'skipped' THEN 'skipped: the previous run was still running (overlap policy)'
        END,
        x.t
    FROM generate_series(0, :n - 1) AS g
    JOIN bench_slots s ON s.k = g % 1000
    CROSS JOIN LATERAL (
        SELECT now() - interval '90 days' + g * (:span / :n) * interval '1 second' AS t,
            r,
            CASE WHEN g >= :n - 50 THEN 'queued'
                 WHEN r < 0.90 THEN 'succeeded' WHEN r < 0.97 THEN 'failed'
                 WHEN r < 0.99 THEN 'skipped' ELSE 'cancelled' END AS status
        FROM (SELECT random() + 0 * g AS r OFFSET 0) AS rr
    ) AS x
    """,
    """
    INSERT INTO step_runs (execution_id, step_number, step_key, attempt, status, request,
        response_status, response_body, error, started_at, finished_at, duration_ms)
    SELECT e.id, n, 'step_' || n, 1,
        CASE WHEN e.status = 'failed' AND n = 2 THEN 'failed' ELSE 'succeeded' END,
        jsonb_build_object('url', 'http://127.0.0.1:9/agent', 'step_number', n,
            'execution_id', e.id),
        CASE WHEN e.status = 'failed' AND n = 2 THEN 500 ELSE 200 END,
        '{"output": "done: step ' || n || '"}',
        CASE WHEN e.status = 'failed' AND n = 2 THEN 'agent answered HTTP 500' END,
        e.queued_at + n * interval '1 second', e.queued_at + n * interval '2 second', 420
    FROM executions e CROSS JOIN generate_series(1, 3) AS n
    WHERE e.status <> 'queued'
    """,
]


def generate(executions: int = 1_000_000) -> dict[str, float]:
    """Fill the current DATABASE_URL's (empty, migrated) database; returns timings."""
    from db.session import get_engine

    timings: dict[str, float] = {}
    started = time.perf_counter()
    with get_engine().begin() as conn:
        conn.execute(text("SET LOCAL synchronous_commit = off"))
        for sql in GENERATE:
            conn.execute(text(sql), {"n": executions, "span": 90 * 86400.0, "ws": DEFAULT_WS})
    timings["insert_s"] = time.perf_counter() - started
    started = time.perf_counter()
    with get_engine().connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
    timings["vacuum_analyze_s"] = time.perf_counter() - started
    with get_engine().connect() as conn:
        timings["executions"] = conn.execute(text("SELECT count(*) FROM executions")).scalar()
        timings["step_runs"] = conn.execute(text("SELECT count(*) FROM step_runs")).scalar()
    return timings
