"""Operating Auxot: liveness, readiness, Prometheus metrics (cross-app, so in the top app)."""
