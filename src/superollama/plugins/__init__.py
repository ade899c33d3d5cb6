"""plugins room."""
