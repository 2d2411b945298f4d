"""Evaluation: frozen features, probes (linear), task-suite runs and reports."""
