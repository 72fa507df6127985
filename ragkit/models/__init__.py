"""ragkit.models."""
