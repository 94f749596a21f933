"""Schemathesis hooks of the contract test: audio request bodies go on the wire as bytes.

Schemathesis serializes binary bodies for ``application/octet-stream`` and image types only;
``POST /api/search/audio`` also declares the audio types a browser sends, so their
generated bodies are sent as they are (without this they are filtered out unsent).
"""

import schemathesis

from clap_pipeline.search.webapp import UPLOAD_TYPES


@schemathesis.serializer(*(t for t in UPLOAD_TYPES if t.startswith("audio/")))
def audio_bytes(_context, value) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()
