"""Fairness under saturation: per-tenant weighted shares of a model's engine slots at the ingress."""
