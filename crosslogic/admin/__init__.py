"""The admin plane: bearer-JWT auth, audit log and the `/admin/v1` API (no Ray)."""
