"""Evaluation: splits, baselines, metrics and reports. Reads every layer; nothing reads it."""
