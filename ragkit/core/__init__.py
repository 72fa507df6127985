"""ragkit.core."""
