"""Measurements every script reports through: parameters, size, latency, task metrics."""

from .measure import count_parameters, evaluate_classifier, measure_latency, model_size_mb

__all__ = ["count_parameters", "evaluate_classifier", "measure_latency", "model_size_mb"]
