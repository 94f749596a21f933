"""Assets of the audio domain (being written)."""
