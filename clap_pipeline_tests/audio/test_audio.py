"""Decoding one window with ffmpeg: lengths, resampling, mono mix, seeking, failure reasons."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clap_pipeline.audio import ffmpeg_bin
from clap_pipeline.audio.decode import (
    DecodeFailure,
    decode_window,
    ensure_ffmpeg,
    id3v2_size,
    window_command,
)
from clap_pipeline.dataset import CLIP_SAMPLES, SAMPLE_RATE
from clap_pipeline_tests.audio_fixtures import (
    AMPLITUDE,
    TONE_HZ,
    AudioFactory,
    dominant_frequency,
    tone_amplitude,
)


@pytest.fixture(scope="session")
def audio(ffmpeg: str, tmp_path_factory: pytest.TempPathFactory) -> AudioFactory:
    return AudioFactory.shared(ffmpeg, tmp_path_factory)


@pytest.mark.parametrize("kind", ["cbr128", "cbr256", "cbr320", "vbr", "mono", "22k"])
def test_mp3_variants_give_exactly_five_seconds_of_the_tone_at_48k(
    audio: AudioFactory, kind: str
) -> None:
    window = decode_window(audio.source(kind))
    assert window.samples.dtype == np.float32
    assert window.samples.shape == (CLIP_SAMPLES,)
    assert window.n_samples_decoded == CLIP_SAMPLES
    # A file left at 44.1/22.05 kHz but read as 48 kHz would put the tone at 1088/2177 Hz.
    assert dominant_frequency(window.samples) == pytest.approx(TONE_HZ, abs=0.5)
    # Equal L and R average to the same tone (low bitrates lose a few % in the encoder).
    assert tone_amplitude(window.samples, TONE_HZ) == pytest.approx(AMPLITUDE, rel=0.06)
    assert np.isfinite(window.samples).all()


def test_short_clip_is_padded_and_keeps_its_real_length(audio: AudioFactory) -> None:
    window = decode_window(audio.source("short2s"))
    assert window.n_samples_decoded == 2 * SAMPLE_RATE
    assert window.samples.shape == (CLIP_SAMPLES,)
    assert not window.samples[2 * SAMPLE_RATE :].any()
    tail = window.samples[SAMPLE_RATE : 2 * SAMPLE_RATE]  # the clip's last second is real audio
    assert tone_amplitude(tail, TONE_HZ) == pytest.approx(AMPLITUDE, rel=0.05)


def test_wav_named_mp3_is_decoded_and_stereo_is_averaged(audio: AudioFactory) -> None:
    path = audio.source("wav")
    assert path.suffix == ".mp3" and path.read_bytes()[:4] == b"RIFF"
    window = decode_window(path)
    assert window.n_samples_decoded == CLIP_SAMPLES
    # Left 1 kHz and right 3 kHz at amplitude A: their mean holds each at A/2.
    assert tone_amplitude(window.samples, 1000) == pytest.approx(AMPLITUDE / 2, rel=0.01)
    assert tone_amplitude(window.samples, 3000) == pytest.approx(AMPLITUDE / 2, rel=0.01)


def test_tone_in_one_channel_comes_out_at_half_amplitude(audio: AudioFactory) -> None:
    """Plain `-ac 1` would give 0.707 A here; the mean of L and R is A/2."""
    window = decode_window(audio.source("left_only"))
    assert tone_amplitude(window.samples, TONE_HZ) == pytest.approx(AMPLITUDE / 2, rel=0.03)


def test_window_offset_seeks_on_the_input_side(audio: AudioFactory) -> None:
    path = audio.source("two_tones")  # 1 kHz for 5 s, then 2 kHz for 5 s
    assert dominant_frequency(decode_window(path).samples) == pytest.approx(1000, abs=0.5)
    later = decode_window(path, offset_s=5.0)
    assert dominant_frequency(later.samples) == pytest.approx(2000, abs=0.5)
    assert later.n_samples_decoded == CLIP_SAMPLES
    tail = decode_window(path, offset_s=7.5)  # only 2.5 s left: padded
    assert abs(tail.n_samples_decoded - int(2.5 * SAMPLE_RATE)) <= 1152  # one MP3 frame
    assert not tail.samples[tail.n_samples_decoded :].any()

    cmd = window_command(path, offset_s=5.0, exe="ffmpeg")
    i = cmd.index("-i")
    assert cmd[cmd.index("-ss") + 1] == "5.0" and cmd.index("-ss") < i
    assert cmd[cmd.index("-t") + 1] == "5" and cmd.index("-t") < i
    assert cmd[i + 1 :] == [
        f"file:{path}", "-map", "0:a:0", "-f", "f32le", "-ac", "1", "-acodec", "pcm_f32le",
        "-ar", "48000", "-rematrix_maxval", "1.0", "pipe:",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("empty", "empty"),
        ("random", "not_audio"),
        ("truncated", "truncated"),
        ("truncated_early", "truncated"),
        ("truncated_tag", "truncated"),
        ("tiny", "too_short"),
        ("silent", "silent"),
    ],
)
def test_defective_files_fail_with_their_reason(
    audio: AudioFactory, kind: str, reason: str
) -> None:
    with pytest.raises(DecodeFailure) as info:
        decode_window(audio.source(kind))
    assert info.value.reason == reason
    assert str(audio.source(kind)) in str(info.value)
    if reason in ("not_audio", "truncated") and kind != "truncated_tag":
        assert info.value.stderr_tail  # the ffmpeg lines that explain it are kept


def test_missing_file_and_offset_past_the_end(audio: AudioFactory, tmp_path: Path) -> None:
    with pytest.raises(DecodeFailure) as info:
        decode_window(tmp_path / "nope.mp3")
    assert info.value.reason == "missing"
    with pytest.raises(DecodeFailure) as info:
        decode_window(audio.source("short2s"), offset_s=10.0)
    assert info.value.reason == "too_short"


def test_os_errors_are_unreadable_failures(tmp_path: Path) -> None:
    loop = tmp_path / "000001.mp3"
    loop.symlink_to(loop.name)
    with pytest.raises(DecodeFailure) as info:
        decode_window(loop)
    assert info.value.reason == "unreadable"
    assert info.value.detail == "OSError: Too many levels of symbolic links"
    assert str(loop) in str(info.value)


def test_ffmpeg_that_hangs_is_killed_at_the_timeout(audio: AudioFactory) -> None:
    with pytest.raises(DecodeFailure) as info:
        decode_window(audio.source("cbr128"), timeout_s=0.001)
    assert info.value.reason == "timeout"


def test_id3v2_size(tmp_path: Path, audio: AudioFactory) -> None:
    assert id3v2_size(audio.source("truncated_tag")) == 10 + (0x40 << 14)
    assert id3v2_size(audio.source("wav")) == 0
    (tmp_path / "short").write_bytes(b"ID3")
    assert id3v2_size(tmp_path / "short") == 0


def test_no_ffmpeg_is_one_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CLAP_FFMPEG", str(tmp_path / "no-such-ffmpeg"))
    ffmpeg_bin.ffmpeg_exe.cache_clear()
    try:
        with pytest.raises(ffmpeg_bin.FfmpegNotFoundError, match="CLAP_FFMPEG"):
            ensure_ffmpeg()
    finally:
        monkeypatch.undo()
        ffmpeg_bin.ffmpeg_exe.cache_clear()
    assert ensure_ffmpeg() == ffmpeg_bin.ffmpeg_exe()
