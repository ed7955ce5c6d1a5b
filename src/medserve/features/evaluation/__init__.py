"""Evaluation: clinical metrics with bootstrap CIs, per-subgroup results, calibration, decision
curves, survival metrics, and a self-contained HTML report."""
