"""Pretraining: one explicit loop, precomputed schedules, checkpoints and resume."""
