"""image tasks."""
