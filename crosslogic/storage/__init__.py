"""PostgreSQL storage: connection pool, embedded server, migrations and driver-error translation."""
