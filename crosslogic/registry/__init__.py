"""Model registry: deployable model templates, their VRAM estimate, and the `models` table."""
