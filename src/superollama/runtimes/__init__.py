"""runtimes room."""
