"""Engines behind one interface (`Engine`); the vLLM adapter is the production one."""
