"""API-key authentication for the /v1 routes (admin JWT auth lives in `crosslogic.admin`)."""
