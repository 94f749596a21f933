"""Assets of the metadata domain (being written)."""
