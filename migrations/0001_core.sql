-- Core schema: tenants, their API keys, the model registry and the admin audit log.
-- Append-only: never edit this file once applied anywhere; add a new numbered migration instead.

CREATE TABLE tenants (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name               text NOT NULL UNIQUE,
    status             text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    stripe_customer_id text,
    -- Default limits for the whole tenant; NULL means unlimited.
    rpm                int CHECK (rpm > 0),
    tpm                int CHECK (tpm > 0),
    max_concurrency    int CHECK (max_concurrency > 0),
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id       uuid NOT NULL REFERENCES tenants (id),
    name            text NOT NULL,
    -- Short public part of the secret used to find the row; the secret itself is never stored.
    prefix          text NOT NULL UNIQUE,
    secret_digest   bytea NOT NULL CHECK (length(secret_digest) = 32),
    -- Model names this key may use; empty means every model.
    scopes          text[] NOT NULL DEFAULT '{}',
    expires_at      timestamptz,
    revoked_at      timestamptz,
    rpm             int CHECK (rpm > 0),
    tpm             int CHECK (tpm > 0),
    max_concurrency int CHECK (max_concurrency > 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_used_at    timestamptz
);

CREATE INDEX api_keys_tenant_idx ON api_keys (tenant_id, created_at, id);
CREATE INDEX tenants_created_idx ON tenants (created_at, id);

CREATE TABLE models (
    id                    uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    served_name           text NOT NULL UNIQUE,
    source                text NOT NULL,
    task                  text NOT NULL DEFAULT 'generate' CHECK (task IN ('generate', 'embed')),
    parameter_count       bigint NOT NULL CHECK (parameter_count > 0),
    dtype                 text NOT NULL,
    max_model_len         int NOT NULL CHECK (max_model_len > 0),
    tensor_parallel_size  int NOT NULL DEFAULT 1 CHECK (tensor_parallel_size > 0),
    num_layers            int CHECK (num_layers > 0),
    num_kv_heads          int CHECK (num_kv_heads > 0),
    head_dim              int CHECK (head_dim > 0),
    price_input_per_mtok  numeric(14, 6) NOT NULL DEFAULT 0 CHECK (price_input_per_mtok >= 0),
    price_output_per_mtok numeric(14, 6) NOT NULL DEFAULT 0 CHECK (price_output_per_mtok >= 0),
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE audit_log (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL,
    action      text NOT NULL,
    target_type text NOT NULL,
    target_id   text,
    before      jsonb,
    after       jsonb,
    request_id  text,
    client_addr text,
    result      text NOT NULL
);

CREATE INDEX audit_log_at_idx ON audit_log (at, id);
CREATE INDEX audit_log_target_idx ON audit_log (target_type, target_id, at);

-- The audit log is append-only: refuse UPDATE and DELETE even from the application role.
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only' USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();

-- Key authentication caches verified keys in every ingress replica. Any change that can alter an
-- authentication decision (revocation, expiry, scopes, limits, tenant status) is announced on the
-- `crosslogic_auth` channel; NOTIFY is delivered at commit, so listeners never see uncommitted state.
-- last_used_at is written in batches by the authenticators themselves and must not wake the caches.
CREATE FUNCTION crosslogic_auth_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    row_data jsonb := to_jsonb(COALESCE(NEW, OLD));
BEGIN
    IF TG_OP = 'UPDATE' AND TG_TABLE_NAME = 'api_keys'
       AND (to_jsonb(OLD) - 'last_used_at') = (to_jsonb(NEW) - 'last_used_at') THEN
        RETURN NULL;
    END IF;
    IF TG_TABLE_NAME = 'api_keys' THEN
        PERFORM pg_notify('crosslogic_auth', json_build_object(
            'table', 'api_keys', 'id', row_data ->> 'id',
            'tenant_id', row_data ->> 'tenant_id', 'prefix', row_data ->> 'prefix')::text);
    ELSE
        PERFORM pg_notify('crosslogic_auth', json_build_object(
            'table', 'tenants', 'id', row_data ->> 'id')::text);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER api_keys_auth_notify AFTER INSERT OR UPDATE OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION crosslogic_auth_notify();
CREATE TRIGGER tenants_auth_notify AFTER UPDATE OR DELETE ON tenants
    FOR EACH ROW EXECUTE FUNCTION crosslogic_auth_notify();
