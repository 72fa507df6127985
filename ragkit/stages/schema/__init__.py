"""ragkit.stages.schema."""
