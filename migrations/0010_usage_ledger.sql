-- Usage ledger: one row per request that reached an engine (finished, failed or cancelled).
-- The request id is the primary key so a retried write can never count a request twice.
-- No foreign keys to tenants/api_keys on purpose: the ledger is billing history and must accept a
-- row (and keep it) even if the tenant or key is deleted later.

CREATE TABLE usage_ledger (
    request_id        text PRIMARY KEY CHECK (length(request_id) BETWEEN 1 AND 200),
    tenant_id         uuid NOT NULL,
    key_id            uuid,
    model             text NOT NULL,
    region            text,
    prompt_tokens     int NOT NULL CHECK (prompt_tokens >= 0),
    completion_tokens int NOT NULL CHECK (completion_tokens >= 0),
    status            text NOT NULL CHECK (status IN ('finished', 'failed', 'cancelled')),
    queue_ms          double precision,
    ttft_ms           double precision,
    total_ms          double precision,
    -- When the request ended (set by the recorder, not at insert time, so a database outage does
    -- not move usage into a later billing hour).
    created_at        timestamptz NOT NULL,
    -- Billing export batch that aggregated this row into billing_outbox; NULL = not yet aggregated.
    outbox_batch      bigint
);

CREATE INDEX usage_ledger_created_idx ON usage_ledger (created_at);
CREATE INDEX usage_ledger_tenant_created_idx ON usage_ledger (tenant_id, created_at);
-- Small by construction: only rows the exporter has not aggregated yet.
CREATE INDEX usage_ledger_unbatched_idx ON usage_ledger (created_at) WHERE outbox_batch IS NULL;
