"""Alert delivery: alerts raised anywhere in a process reach the operator's sinks (webhook, PagerDuty).

Kept import-free on purpose: `crosslogic.metering.metrics` imports `crosslogic.alerts.registry`, and the
dispatcher imports the metering package; an `__init__` that imported either would be a cycle.
"""
