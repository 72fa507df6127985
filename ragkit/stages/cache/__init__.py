"""Caches that answer repeated questions without running the pipeline: :mod:`ragkit.stages.cache.semantic`."""
