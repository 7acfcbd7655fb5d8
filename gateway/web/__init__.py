"""The gateway's web site: jam page, /status (JSON) and /metrics (Prometheus)."""
