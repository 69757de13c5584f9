-- The models the key that created a batch may use (its scopes, as at creation): a line asking for
-- another model fails alone with the 403 an interactive request of that key would get. NULL: any model.
ALTER TABLE batches ADD COLUMN model_scopes text[];
