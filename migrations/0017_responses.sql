-- Stored responses of the Responses API (POST /v1/responses with `store`, the default): what
-- GET /v1/responses/{id} returns and what a later request's `previous_response_id` continues from.
-- Every read and delete is scoped to the tenant that made the response: another tenant's id is
-- simply not found.
--
-- JSON is kept as `json` (the text as written), not `jsonb`: nothing queries inside it, and jsonb
-- refuses a "\u0000" escape that a client's input may legitimately carry.

CREATE TABLE responses (
    id                   text PRIMARY KEY CHECK (id ~ '^resp_[0-9a-f]{32}$'),
    tenant_id            uuid NOT NULL REFERENCES tenants (id),
    key_id               uuid,
    -- The server's request id that produced it: the usage_ledger row's key (same hex as `id`).
    request_id           text NOT NULL CHECK (request_id ~ '^req_[0-9a-f]{32}$'),
    model                text NOT NULL,
    status               text NOT NULL
                         CHECK (status IN ('completed', 'incomplete', 'failed', 'cancelled')),
    previous_response_id text,
    -- The body as the client sent it.
    request              json NOT NULL,
    -- The conversation this response answered, as input items: a previous response's input and
    -- output, then this request's input (instructions are not carried over, as OpenAI's are not).
    -- A continuation reads only this row, whichever replica serves it and even if an earlier
    -- response of the chain was deleted since.
    input_items          json NOT NULL,
    -- The response object as the client received it (OpenAI's shape).
    response             json NOT NULL,
    input_tokens         int NOT NULL DEFAULT 0 CHECK (input_tokens >= 0),
    output_tokens        int NOT NULL DEFAULT 0 CHECK (output_tokens >= 0),
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX responses_tenant_created_idx ON responses (tenant_id, created_at);
