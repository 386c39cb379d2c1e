"""check tasks."""
