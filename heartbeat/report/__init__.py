"""Figures, reports, baselines, cross-validation and evaluation. Importing this package imports nothing (predict reads heartbeat.report.metrics without matplotlib)."""
