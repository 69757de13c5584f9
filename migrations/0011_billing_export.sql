-- Billing export: outbox of Stripe meter events, dead letters, processed webhook events.

CREATE SEQUENCE billing_batch_seq;

-- One row = one Stripe meter event: the usage of one tenant, one meter, one UTC hour, from one
-- aggregation batch. Usage arriving late for an hour already exported lands in a later batch and is
-- sent as its own event (a delta) with its own identifier; nothing already sent is ever changed.
CREATE TABLE billing_outbox (
    id              bigserial PRIMARY KEY,
    batch_id        bigint NOT NULL,
    tenant_id       uuid NOT NULL,
    meter           text NOT NULL CHECK (meter IN ('input_tokens', 'output_tokens')),
    hour            timestamptz NOT NULL,
    value           bigint NOT NULL CHECK (value > 0),
    -- Deterministic Stripe identifier (<= 100 chars): the same row always sends the same identifier,
    -- so a retry after an unknown outcome is deduplicated by Stripe.
    identifier      text NOT NULL UNIQUE CHECK (length(identifier) <= 100),
    oldest_usage_at timestamptz NOT NULL,
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts        int NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    lease_owner     text,
    lease_until     timestamptz NOT NULL DEFAULT '-infinity',
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    UNIQUE (batch_id, tenant_id, meter, hour)
);

CREATE INDEX billing_outbox_pending_idx ON billing_outbox (next_attempt_at, id) WHERE status = 'pending';
CREATE INDEX billing_outbox_tenant_hour_idx ON billing_outbox (tenant_id, hour);

-- Stripe webhook events, stored once per event id; processed asynchronously with retry.
CREATE TABLE stripe_webhook_events (
    event_id        text PRIMARY KEY,
    type            text NOT NULL,
    created         timestamptz NOT NULL,
    payload         jsonb NOT NULL,
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'processed', 'dead')),
    attempts        int NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    lease_until     timestamptz NOT NULL DEFAULT '-infinity',
    last_error      text,
    received_at     timestamptz NOT NULL DEFAULT now(),
    processed_at    timestamptz
);

CREATE INDEX stripe_webhook_events_pending_idx ON stripe_webhook_events (next_attempt_at)
    WHERE status = 'pending';

-- Work that failed for a reason a retry cannot fix; an operator inspects and replays it.
CREATE TABLE billing_dead_letters (
    id          bigserial PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('meter_event', 'webhook')),
    ref         text NOT NULL,
    reason      text NOT NULL,
    detail      jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    replayed_at timestamptz,
    replayed_by text
);

CREATE INDEX billing_dead_letters_open_idx ON billing_dead_letters (created_at) WHERE replayed_at IS NULL;

-- Billing's own view of a tenant: whether billing (not an operator) suspended it, and the newest
-- Stripe event applied, so out-of-order webhooks cannot undo a newer decision.
CREATE TABLE billing_tenant_state (
    tenant_id            uuid PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    suspended_by_billing boolean NOT NULL DEFAULT false,
    last_event_id        text,
    last_event_created   timestamptz,
    updated_at           timestamptz NOT NULL DEFAULT now()
);
