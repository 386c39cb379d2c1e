"""cycle tasks."""
