-- One Stripe customer bills one tenant: Stripe's webhooks name a customer, and the processor
-- (billing/webhook_processor.py) suspends or reactivates the tenant carrying it. With two tenants on
-- one customer it would pick an arbitrary one; the admin API answers 409 for a second tenant now.
--
-- Existing duplicates are not resolved here (which tenant is billed is an operator's decision):
-- the migration stops and names them. Give each tenant its own customer id (or clear one with
-- PATCH /admin/v1/tenants/{id} {"stripe_customer_id": null}) and start again.
DO $$
DECLARE
    duplicates text;
BEGIN
    SELECT string_agg(format('%s used by tenants %s', customer, tenants), '; ' ORDER BY customer)
      INTO duplicates
      FROM (SELECT stripe_customer_id AS customer,
                   string_agg(format('%s (%s)', name, id), ', ' ORDER BY created_at, id) AS tenants
              FROM tenants
             WHERE stripe_customer_id IS NOT NULL
             GROUP BY stripe_customer_id
            HAVING count(*) > 1) AS shared;
    IF duplicates IS NOT NULL THEN
        RAISE EXCEPTION 'tenants share a stripe_customer_id, which must be unique: %. Give each tenant its own customer id (PATCH /admin/v1/tenants/{id}), then migrate again', duplicates;
    END IF;
END
$$;

CREATE UNIQUE INDEX tenants_stripe_customer_id_key
    ON tenants (stripe_customer_id)
    WHERE stripe_customer_id IS NOT NULL;
