"""Rerankers: confidence scoring, calibration, graph/passage fusion, coverage-aware selection, abstention."""
