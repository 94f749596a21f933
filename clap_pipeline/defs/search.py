"""Assets of the search domain (being written)."""
