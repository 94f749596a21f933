"""Names ``training/stand_in.py`` imports from here; the model lives in ``clap_pipeline.model``.

Nothing else may import this module (test_layout); it goes once stand_in.py imports
``clap_pipeline.model`` itself.
"""

from clap_pipeline.model.clap import unfused_feature_extractor
from clap_pipeline.model.tiny import TINY_TOKENIZER_WORDS, roberta_framed, save_tiny_model

__all__ = ["TINY_TOKENIZER_WORDS", "roberta_framed", "save_tiny_model", "unfused_feature_extractor"]
