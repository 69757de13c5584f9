"""Ray Serve deployments and actors. Kept thin: they wire `crosslogic` core objects to Ray."""
