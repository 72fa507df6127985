"""ragkit.stages."""
