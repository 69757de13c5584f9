-- Region preference (issue 11): the region an API key's or a tenant's requests go to first, unless it
-- is deeper than the spill-over threshold (regions.spill_over_queue_depth). A request's
-- x-crosslogic-region header overrides the key's, which overrides the tenant's; NULL: no preference.
-- No foreign key to `regions`: a preference may name a region before it registers or after it is
-- removed, and then simply goes unused (the request is placed as if it had none).
ALTER TABLE tenants ADD COLUMN preferred_region text CHECK (preferred_region ~ '^[a-z0-9][a-z0-9-]{0,62}$');
ALTER TABLE api_keys ADD COLUMN preferred_region text CHECK (preferred_region ~ '^[a-z0-9][a-z0-9-]{0,62}$');
