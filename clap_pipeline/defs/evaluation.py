"""Assets of the evaluation domain (being written)."""
