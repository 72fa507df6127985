"""ragkit.stages.retrievers."""
