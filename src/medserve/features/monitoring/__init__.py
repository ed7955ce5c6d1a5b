"""Monitoring: prediction log, outcomes, drift, live performance, alerts, metrics."""
