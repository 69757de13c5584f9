"""Billing: export of the usage ledger to Stripe meter events, webhooks, reconciliation."""
