"""Routing by queue depth: the router's load table, the view ingress replicas route from, policies."""
