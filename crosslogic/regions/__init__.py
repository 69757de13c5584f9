"""Regions: engines in other Ray clusters, reached through a regional gateway, announced by an agent.

Plain async Python (no Ray): request signing, the wire protocol, the control plane's view of regions,
the gateway's HTTP app and client, the agent. The Ray wiring lives in `deployments/`.
"""
