"""The audit log (`crosslogic.audit.log`): written by the admin plane, the CLI, region heartbeats and billing.

Its own package so that billing's writers depend on the audit log, not on the admin plane.
"""
