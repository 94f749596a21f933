"""Locate the ffmpeg executable: the one on PATH, else the binary imageio-ffmpeg ships."""

from __future__ import annotations

import functools
import shutil

from clap_pipeline.config import ffmpeg_override


class FfmpegNotFoundError(RuntimeError):
    pass


@functools.cache
def ffmpeg_exe() -> str:
    """Path of a usable ffmpeg. ``CLAP_FFMPEG`` overrides the search."""
    override = ffmpeg_override()
    if override:
        if shutil.which(override) is None:
            raise FfmpegNotFoundError(f"CLAP_FFMPEG={override!r} is not an executable")
        return override
    on_path = shutil.which("ffmpeg")
    if on_path:
        return on_path
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as exc:  # the wheel raises RuntimeError when its binary is missing
        raise FfmpegNotFoundError(
            "ffmpeg not found: install it (apt-get install ffmpeg) or `pip install imageio-ffmpeg`, "
            "or point CLAP_FFMPEG at a binary"
        ) from exc
