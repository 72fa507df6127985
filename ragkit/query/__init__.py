"""ragkit.query."""
