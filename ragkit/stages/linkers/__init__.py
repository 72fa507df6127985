"""ragkit.stages.linkers: linking question mentions to graph values."""
