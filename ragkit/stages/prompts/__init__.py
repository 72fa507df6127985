"""ragkit.stages.prompts."""
