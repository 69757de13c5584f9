"""Request metrics (RED per route, model and tenant) in plain Python: what to count, not how to export it.

`deployments/ray_metrics.py` exports them through Ray's metrics; nothing here imports Ray.
"""
