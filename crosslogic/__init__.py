"""CrossLogic core: plain async Python, no Ray imports (Ray lives in `deployments/`)."""

__version__ = "0.1.0"
