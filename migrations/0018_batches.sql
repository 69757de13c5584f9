-- The Batch API: uploaded files (/v1/files), batches (/v1/batches) and the progress of each line.
-- Every row belongs to a tenant and is read by it only: another tenant's id is simply not found.
-- Progress lives here so any ingress replica can run a batch and resume another's after it died.

CREATE TABLE batch_files (
    id          text PRIMARY KEY CHECK (id ~ '^file-[0-9a-f]{32}$'),
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    purpose     text NOT NULL CHECK (purpose IN ('batch', 'batch_output')),
    filename    text NOT NULL,
    bytes       bigint NOT NULL CHECK (bytes >= 0),
    line_count  int NOT NULL CHECK (line_count >= 0),
    -- Where the content is in the file storage (crosslogic/batches/file_storage.py).
    storage_key text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX batch_files_tenant_created_idx ON batch_files (tenant_id, created_at, id);

CREATE TABLE batches (
    id                text PRIMARY KEY CHECK (id ~ '^batch_[0-9a-f]{32}$'),
    tenant_id         uuid NOT NULL REFERENCES tenants (id),
    key_id            uuid,
    endpoint          text NOT NULL CHECK (endpoint IN ('/v1/chat/completions', '/v1/embeddings')),
    input_file_id     text NOT NULL,
    completion_window text NOT NULL,
    status            text NOT NULL CHECK (status IN ('validating', 'failed', 'in_progress', 'finalizing',
                                                      'completed', 'expired', 'cancelling', 'cancelled')),
    metadata          json,
    errors            json,
    output_file_id    text,
    error_file_id     text,
    total             int NOT NULL DEFAULT 0,
    completed         int NOT NULL DEFAULT 0,
    failed            int NOT NULL DEFAULT 0,
    -- The runner holding it and until when: a claim not renewed in time is taken over.
    claimed_by        text,
    claim_expires_at  timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    expires_at        timestamptz NOT NULL,
    in_progress_at    timestamptz,
    finalizing_at     timestamptz,
    completed_at      timestamptz,
    failed_at         timestamptz,
    expired_at        timestamptz,
    cancelling_at     timestamptz,
    cancelled_at      timestamptz
);
CREATE INDEX batches_tenant_created_idx ON batches (tenant_id, created_at, id);
-- Small by construction: only batches that still have work.
CREATE INDEX batches_active_idx ON batches (created_at)
    WHERE status IN ('validating', 'in_progress', 'finalizing', 'cancelling');

CREATE TABLE batch_lines (
    batch_id   text NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
    line_no    int NOT NULL CHECK (line_no >= 0),
    custom_id  text,
    -- The server request id of this line: the usage ledger's key, so a line re-run after a runner
    -- died is still metered once.
    request_id text NOT NULL,
    status     text NOT NULL CHECK (status IN ('pending', 'completed', 'failed')),
    -- The line's request body (pending) and its output or error line (done).
    body       json,
    result     json,
    PRIMARY KEY (batch_id, line_no)
);
CREATE INDEX batch_lines_pending_idx ON batch_lines (batch_id, line_no) WHERE status = 'pending';

-- Batch lines in the usage ledger: the batch they belong to, and the price multiplier the billing
-- export applies to their tokens (numeric: a half of an odd count is exact until the hourly sum rounds).
ALTER TABLE usage_ledger
    ADD COLUMN batch_id text,
    ADD COLUMN price_multiplier numeric(6, 4) NOT NULL DEFAULT 1
        CHECK (price_multiplier > 0 AND price_multiplier <= 1);
