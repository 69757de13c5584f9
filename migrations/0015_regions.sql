-- Regions (issue 11): the control plane's registry of the regional clusters allowed to heartbeat.
-- No secret is stored: a region's signing secret derives from the control plane's master secret
-- (CROSSLOGIC_REGION_MASTER_SECRET), its name and `secret_generation`; rotating bumps the generation,
-- which kills the old secret at once. `last_*` is what the newest accepted heartbeat said (the live
-- view lives in the router actor; these columns survive its restarts and show silent regions).
CREATE TABLE regions (
    name              text PRIMARY KEY CHECK (name ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    secret_generation int NOT NULL DEFAULT 1 CHECK (secret_generation >= 1),
    -- An operator's drain outlives heartbeats and router restarts.
    operator_drained  boolean NOT NULL DEFAULT false,
    -- Set: heartbeats are refused (region_disabled); re-creating the region re-enables it.
    disabled_at       timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    last_heartbeat_at timestamptz,
    last_gateway_url  text,
    last_versions     jsonb,
    last_agent_id     text
);

-- Heartbeat nonces seen within the clock-skew window, shared by every ingress replica: a captured
-- heartbeat replayed to another replica is refused too. Rows older than twice the window are pruned
-- (a nonce that old is refused by its timestamp anyway).
CREATE TABLE region_nonces (
    region  text NOT NULL REFERENCES regions (name) ON DELETE CASCADE,
    nonce   text NOT NULL,
    seen_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (region, nonce)
);

CREATE INDEX region_nonces_seen_at_idx ON region_nonces (seen_at);
