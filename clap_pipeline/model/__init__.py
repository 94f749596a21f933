"""The model every stage shares: load the base or a registered CLAP, log-mel features, text
and clip embeddings, checkpoints (``clap.py``, ``features.py``), and the tiny offline CLAP
(``tiny.py``). Imports nothing of the stages."""
