"""The window rule, 16-bit PCM and the window embeddings' aggregation (the floor's definitions)."""

from __future__ import annotations

import numpy as np
import pytest

from clap_pipeline.window_embeddings import (
    AGGREGATIONS,
    WindowEmbeddings,
    l2_normalise,
    window_embeddings_schema,
)
from clap_pipeline.windows import (
    CLIP_SAMPLES,
    SAMPLE_RATE,
    WindowRule,
    cut_windows,
    from_pcm16,
    to_pcm16,
)

S = SAMPLE_RATE


@pytest.mark.parametrize(
    ("seconds", "rule", "expected"),
    [
        # a 29.98-s FMA clip: six windows, the sixth partial (4.98 s) and kept
        (29.98, WindowRule(), [(k * 5 * S, 5 * S) for k in range(5)] + [(25 * S, round(4.98 * S))]),
        # a 32-s song cut at 30 s: six full windows
        (32.0, WindowRule(), [(k * 5 * S, 5 * S) for k in range(6)]),
        # the whole song: 2 s left over is less than half a window, dropped
        (32.0, WindowRule(max_audio_s=None), [(k * 5 * S, 5 * S) for k in range(6)]),
        # 3 s left over is kept (padded when read)
        (13.0, WindowRule(), [(0, 5 * S), (5 * S, 5 * S), (10 * S, 3 * S)]),
        # a 3-s clip: its only window, however short
        (3.0, WindowRule(), [(0, 3 * S)]),
        # hop 2.5 s: overlapping windows; the first partial one is kept, the rest dropped
        (10.0, WindowRule(hop_s=2.5), [(0, 5 * S), (int(2.5 * S), 5 * S), (5 * S, 5 * S),
                                       (int(7.5 * S), int(2.5 * S))]),
        # max_audio_s 12: the span is 12 s whatever the file's length
        (60.0, WindowRule(max_audio_s=12), [(0, 5 * S), (5 * S, 5 * S)]),
    ],
)  # fmt: skip
def test_window_spans(seconds: float, rule: WindowRule, expected: list) -> None:
    assert rule.spans(round(seconds * S)) == expected


def test_start_seconds_count_from_the_offset() -> None:
    rule = WindowRule(offset_s=7.0)
    starts, windows = cut_windows(np.ones(11 * S, np.float32), rule)
    assert starts == [7.0, 12.0]  # 1 s left over: dropped
    assert [len(w) for w in windows] == [CLIP_SAMPLES, CLIP_SAMPLES]


@pytest.mark.parametrize(
    "kwargs", [{"offset_s": -1}, {"hop_s": 0}, {"max_audio_s": 0.5}, {"hop_s": float("nan")}]
)
def test_bad_rules_are_refused_naming_the_setting(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        WindowRule(**kwargs)


def test_the_rule_round_trips_through_metadata() -> None:
    for rule in (WindowRule(), WindowRule(offset_s=2, hop_s=2.5, max_audio_s=None)):
        back = WindowRule.from_metadata(
            {k.encode(): v.encode() for k, v in rule.metadata().items()}
        )
        assert back.hop == rule.hop and back.max_audio_s == rule.max_audio_s
        assert back.offset_s == rule.offset_s
    with pytest.raises(ValueError, match=r"clap\.window"):
        WindowRule.from_metadata({})


def test_pcm16_is_within_one_step_and_pads_with_zeros() -> None:
    rng = np.random.default_rng(0)
    samples = rng.uniform(-1.2, 1.2, 1000).astype(np.float32)  # decoders overshoot 1.0
    pcm = to_pcm16(samples)
    assert len(pcm) == 2 * samples.size
    back = from_pcm16(pcm)
    assert back.shape == (CLIP_SAMPLES,) and back.dtype == np.float32
    inside = np.abs(samples) < 1
    assert np.abs(back[:1000][inside] - samples[inside]).max() <= 0.5 / 32768 + 1e-7
    assert back[:1000][samples >= 1].min() == pytest.approx(32767 / 32768)  # clipped
    assert not back[1000:].any()
    with pytest.raises(ValueError, match="more than a window"):
        from_pcm16(np.zeros(CLIP_SAMPLES + 1, np.int16))


def _two_tracks() -> WindowEmbeddings:
    e = l2_normalise(np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1]], np.float32))
    return WindowEmbeddings(
        track_ids=np.array([3, 3, 3, 8, 8]),
        start_s=np.array([0.0, 5.0, 10.0, 0.0, 5.0]),
        end_s=np.array([5.0, 10.0, 14.0, 5.0, 10.0]),
        embeddings=e,
    )


def test_aggregations_score_tracks_from_their_windows() -> None:
    windows = _two_tracks()
    assert windows.tracks.tolist() == [3, 8]
    assert windows.windows_per_track.tolist() == [3, 2]
    query = np.array([[0, 0, 1]], np.float32)
    first = windows.track_scores(query, "first")
    mean = windows.track_scores(query, "mean")
    best = windows.track_scores(query, "max")
    assert first.tolist() == [[0.0, 0.0]]  # neither track starts with the query's sound
    assert best[0, 0] == pytest.approx(1.0) and best[0, 1] == pytest.approx(2**-0.5)
    assert mean[0, 0] == pytest.approx(1 / 3**0.5, abs=1e-6)  # mean of three axes, normalised
    assert set(AGGREGATIONS) == {"first", "mean", "max"}
    assert windows.best_windows(query).tolist() == [[2, 4]]
    assert windows.subset([8]).tracks.tolist() == [8]
    with pytest.raises(KeyError, match="track 5"):
        windows.subset([5])


def test_unsorted_windows_are_refused() -> None:
    w = _two_tracks()
    with pytest.raises(ValueError, match="sorted"):
        WindowEmbeddings(w.track_ids[::-1], w.start_s[::-1], w.end_s, w.embeddings)


def test_the_schema_carries_model_and_rule() -> None:
    schema = window_embeddings_schema(
        4, model_version="7", model_fingerprint="abc", model_source="/m", rule=WindowRule()
    )
    assert schema.names == ["track_id", "start_s", "end_s", "embedding", "source_size",
                            "source_mtime"]  # fmt: skip
    meta = schema.metadata
    assert meta[b"clap.model.version"] == b"7" and meta[b"clap.model.fingerprint"] == b"abc"
    assert WindowRule.from_metadata(meta).hop == 5.0
