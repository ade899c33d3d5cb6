"""wire room."""
