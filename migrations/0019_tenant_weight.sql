-- Fair share weight (issue 14, item 2): when a model's engines are saturated, each ingress replica
-- releases waiting requests across tenants in proportion to their weights (crosslogic/fairness).
-- NULL: the app's fairness.default_weight (1.0 unless configured).
ALTER TABLE tenants ADD COLUMN weight double precision CHECK (weight > 0 AND weight <= 1000);
