"""Tenants and their API keys: models, secrets and PostgreSQL repositories."""
