"""ragkit.stages.querygen."""
