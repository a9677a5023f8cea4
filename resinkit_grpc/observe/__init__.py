"""Seeing inside a running server: the per-RPC interceptor (Prometheus metrics and the access
log), the service's own metrics, the log format, and optional OpenTelemetry traces. Arrows
point one way: this package reads the store and the watch core; nothing there knows of it."""
