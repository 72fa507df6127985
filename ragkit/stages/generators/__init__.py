"""ragkit.stages.generators."""
