"""security room."""
