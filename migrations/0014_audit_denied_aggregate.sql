-- Refused admin credentials are aggregated (crosslogic/admin/denied_audit.py): the first attempt of a
-- (source, reason) in a window is one row as before; the repeats of that window become ONE more row
-- whose `attempts` counts them, between `first_at` and `last_at`. A flood of bad tokens thus writes a
-- few rows per window instead of one per request. Every other row is one attempt (attempts = 1, no
-- first/last). Adding columns with constant defaults rewrites no row, so the append-only trigger
-- (0001) is not involved.
ALTER TABLE audit_log
    ADD COLUMN attempts integer NOT NULL DEFAULT 1 CONSTRAINT audit_log_attempts_positive CHECK (attempts >= 1),
    ADD COLUMN first_at timestamptz,
    ADD COLUMN last_at  timestamptz;
