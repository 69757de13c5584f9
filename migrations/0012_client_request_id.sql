-- The client's own request id (x-client-request-id, or x-request-id from older clients), kept as
-- metadata beside the server-minted request_id that keys the row. Not unique on purpose: a client
-- may reuse its id, and every request is still billed (the primary key is never client-chosen).
-- Nullable: most clients send none, and rows written before this migration have none.
ALTER TABLE usage_ledger
    ADD COLUMN client_request_id text CHECK (length(client_request_id) BETWEEN 1 AND 512);

-- Finding a client's request by the id it knows ("what happened to my-request-42?").
CREATE INDEX usage_ledger_client_request_idx ON usage_ledger (tenant_id, client_request_id)
    WHERE client_request_id IS NOT NULL;
