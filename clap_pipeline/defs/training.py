"""Assets of the training domain (being written)."""
