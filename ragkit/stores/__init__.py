"""ragkit.stores."""
