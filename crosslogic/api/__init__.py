"""HTTP edge shared by the /v1 and /admin/v1 APIs."""
