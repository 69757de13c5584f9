"""Clusters brought up by SkyPilot: the control plane and regions (cluster_configs/).

`driver` imports SkyPilot and runs only in the operator's `.venv-cloud` (SkyPilot cannot share an
environment with vLLM); `task_spec` is what it shares with the main CLI and tests (stdlib + yaml).
The renderers and the version check run ON the clusters, in the main environment.
Nothing here may import Ray or vLLM at module level.
"""
