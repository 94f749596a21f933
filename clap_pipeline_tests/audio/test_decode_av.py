"""In-process decoding (PyAV) against the ffmpeg CLI reference: samples, failures, the asset path.

Agreement is stated as the largest absolute sample difference and the SNR of the CLI
window over the difference. Mono input gives the same samples bit for bit; stereo is
averaged before resampling in-process (after, in the CLI's libswresample), which
changes float32 rounding only: here at most 1.2e-7 (1.8e-7 on a real FMA clip) and
141 dB (docs/decode.md). The bounds leave room for an ffmpeg CLI of another FFmpeg
release than PyAV's libraries, and fail on any misalignment (a shift of one sample
gives ~15 dB, tested below).
"""

from __future__ import annotations

import pickle
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow.parquet as pq
import pytest

from clap_pipeline.audio import decode_av
from clap_pipeline.audio.decode import DecodeFailure, decode_window
from clap_pipeline.audio.decode_av import decode_job, decode_window_av
from clap_pipeline.audio.decode_failures import read_failures
from clap_pipeline.audio.waveforms import DecodeOptions, build_waveforms
from clap_pipeline.dataset import CLIP_SAMPLES
from clap_pipeline.selection import SelectedTrack
from clap_pipeline.waveform_reader import WaveformRows
from clap_pipeline.windows import WindowRule
from clap_pipeline_tests.audio_fixtures import AudioFactory

MAX_ABS_DIFF = 1e-5
PCM_STEP = 1 / 32768
MIN_SNR_DB = 90.0

DECODABLE = ("cbr128", "cbr256", "cbr320", "vbr", "mono", "22k", "wav", "left_only", "long30s")
FAILING = {
    "empty": "empty",
    "random": "not_audio",
    "truncated": "truncated",
    "truncated_early": "truncated",
    "truncated_tag": "truncated",
    "tiny": "too_short",
    "silent": "silent",
}


@pytest.fixture(scope="session")
def audio(ffmpeg: str, tmp_path_factory: pytest.TempPathFactory) -> AudioFactory:
    return AudioFactory.shared(ffmpeg, tmp_path_factory)


def agreement(reference: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """(max |difference|, SNR in dB of ``reference`` over the difference; inf if equal)."""
    diff = other.astype(np.float64) - reference.astype(np.float64)
    noise = float(np.sum(diff**2))
    signal = float(np.sum(reference.astype(np.float64) ** 2))
    snr = float("inf") if noise == 0 else 10 * np.log10(signal / noise)
    return float(np.max(np.abs(diff))), snr


def _no_addresses(text: str) -> str:
    return re.sub(r"0x[0-9a-f]+", "0x", text)  # ffmpeg's lines name its objects' addresses


def failure_of(fn, *args, **kwargs) -> DecodeFailure:  # type: ignore[no-untyped-def]
    with pytest.raises(DecodeFailure) as info:
        fn(*args, **kwargs)
    return info.value


@pytest.mark.parametrize("kind", DECODABLE)
@pytest.mark.parametrize("offset_s", [0.0, 1.3])
def test_in_process_window_agrees_with_the_cli(
    audio: AudioFactory, kind: str, offset_s: float
) -> None:
    path = audio.source(kind)
    cli = decode_window(path, offset_s)
    av_window = decode_window_av(path, offset_s)
    assert av_window.samples.dtype == np.float32 and av_window.samples.shape == (CLIP_SAMPLES,)
    assert av_window.n_samples_decoded == cli.n_samples_decoded
    max_abs, snr = agreement(cli.samples, av_window.samples)
    assert max_abs <= MAX_ABS_DIFF, (kind, offset_s, max_abs, snr)
    assert snr >= MIN_SNR_DB, (kind, offset_s, max_abs, snr)


def test_a_one_sample_shift_breaks_the_agreement_bounds(audio: AudioFactory) -> None:
    """The bounds are tight enough to catch a window that starts one sample off."""
    window = decode_window_av(audio.source("long30s"), 2.0).samples
    max_abs, snr = agreement(window[1:], window[:-1])
    assert max_abs > MAX_ABS_DIFF and snr < MIN_SNR_DB


@pytest.mark.parametrize("kind", ["cbr256", "wav", "22k", "mono"])
def test_resampling_in_chunks_gives_the_samples_of_one_frame(
    audio: AudioFactory, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """libswresample keeps its filter state across frames: chunking is for speed only."""
    path = audio.source(kind)
    chunked = decode_window_av(path, 0.0).samples
    monkeypatch.setattr(decode_av, "RESAMPLE_CHUNK", 10**9)  # the whole window as one frame
    whole = decode_window_av(path, 0.0).samples
    np.testing.assert_array_equal(chunked, whole)
    assert np.abs(chunked).max() > 0.01


def test_seek_and_padding_agree_at_the_end_of_the_clip(audio: AudioFactory) -> None:
    path = audio.source("two_tones")  # 10 s: from 7.5 s only 2.5 s are left
    cli, av_window = decode_window(path, 7.5), decode_window_av(path, 7.5)
    assert av_window.n_samples_decoded == cli.n_samples_decoded < CLIP_SAMPLES
    assert not av_window.samples[av_window.n_samples_decoded :].any()
    assert agreement(cli.samples, av_window.samples)[1] >= MIN_SNR_DB


@pytest.mark.parametrize(("kind", "reason"), FAILING.items())
def test_every_defect_kind_is_classified_as_by_the_cli(
    audio: AudioFactory, ffmpeg: str, kind: str, reason: str
) -> None:
    path = audio.source(kind)
    cli = failure_of(decode_window, path)
    own = failure_of(decode_window_av, path)  # the libraries alone, no fallback
    fallback = failure_of(decode_window_av, path, fallback_exe=ffmpeg)
    assert cli.reason == own.reason == fallback.reason == reason
    if reason != "not_audio":  # its detail names the tool that failed
        assert own.detail == cli.detail == fallback.detail
    assert str(path) in str(own)
    if reason in ("not_audio", "truncated") and kind != "truncated_tag":
        assert own.stderr_tail  # FFmpeg's own lines explain it, as with the CLI
    if reason == "not_audio":  # what the libraries cannot decode is the CLI's to judge
        assert fallback.detail == cli.detail  # "ffmpeg exited with N": the CLI's verdict
        # ffmpeg's threads order their lines differently from run to run: compare the sets
        assert set(_no_addresses(fallback.stderr_tail).splitlines()) & set(
            _no_addresses(cli.stderr_tail).splitlines()
        )


def test_missing_unreadable_past_the_end_and_timeout(audio: AudioFactory, tmp_path: Path) -> None:
    loop = tmp_path / "000001.mp3"
    loop.symlink_to(loop.name)
    short = audio.source("short2s")
    for args in [(tmp_path / "nope.mp3",), (loop,), (short, 10.0)]:
        cli, own = failure_of(decode_window, *args), failure_of(decode_window_av, *args)
        assert (own.reason, own.detail) == (cli.reason, cli.detail)
    assert [
        failure_of(decode_window_av, *a).reason for a in [(tmp_path / "nope.mp3",), (loop,)]
    ] == [
        "missing",
        "unreadable",
    ]
    late = failure_of(decode_window_av, audio.source("long30s"), timeout_s=1e-6)
    assert late.reason == "timeout" and "1e-06 s" in late.detail


def test_failures_cross_process_boundaries(audio: AudioFactory, ffmpeg: str) -> None:
    failure = decode_job("av", audio.source("silent"), WindowRule(), 60.0, ffmpeg)
    assert isinstance(failure, DecodeFailure)
    copy = pickle.loads(pickle.dumps(failure))
    assert (copy.reason, copy.path, copy.detail, copy.stderr_tail, str(copy)) == (
        failure.reason,
        failure.path,
        failure.detail,
        failure.stderr_tail,
        str(failure),
    )


def test_asset_path_in_a_process_pool_writes_what_the_cli_path_writes(
    tmp_path: Path, audio: AudioFactory
) -> None:
    kinds = [*DECODABLE, *FAILING]
    tracks: dict[str, list[SelectedTrack]] = {"000": []}
    for i, kind in enumerate(kinds, start=1):
        tracks["000"].append(
            SelectedTrack(i, audio.make(kind, tmp_path / "fma" / "000" / f"{i:06d}.mp3"))
        )
    results = {}
    for decoder in ("cli", "av"):
        out = tmp_path / decoder
        options = DecodeOptions(decoder=decoder, workers=2, process_pool_min_jobs=1)
        summary = build_waveforms(tracks, out / "waveforms", out / "clap.duckdb", options)
        assert summary.decoded == len(kinds)
        table = pq.read_table(out / "waveforms" / "000.parquet")
        failures = {f.track_id: (f.reason, f.detail) for f in read_failures(out / "clap.duckdb")}
        results[decoder] = (table, failures)
    (cli_table, cli_failures), (av_table, av_failures) = results["cli"], results["av"]
    assert av_failures == cli_failures
    assert sorted(reason for reason, _ in av_failures.values()) == sorted(FAILING.values())
    assert av_table.schema.equals(cli_table.schema, check_metadata=True)
    assert av_table.column("track_id").to_pylist() == cli_table.column("track_id").to_pylist()
    assert av_table.drop(["pcm"]).equals(cli_table.drop(["pcm"]))  # same windows, same lengths
    ref_rows, got_rows = WaveformRows(cli_table, "cli"), WaveformRows(av_table, "av")
    for row in range(len(ref_rows)):
        # 16-bit PCM: float rounding may move a sample by one step of 1/32768
        max_abs, snr = agreement(ref_rows.samples(row), got_rows.samples(row))
        assert max_abs <= PCM_STEP and snr >= MIN_SNR_DB


_BUILD_IN_A_POOL = """
import sys
from pathlib import Path
from clap_pipeline.audio.waveforms import DecodeOptions, build_waveforms
from clap_pipeline.selection import SelectedTrack

if __name__ == "__main__":
    clip, out = Path(sys.argv[1]), Path(sys.argv[2])
    tracks = [SelectedTrack(i, clip) for i in range(1, 1000)]  # one clip, many rows
    options = DecodeOptions(workers=2, process_pool_min_jobs=1)
    build_waveforms({"000": tracks}, out / "waveforms", out / "clap.duckdb", options)
"""


def _ppid(process: psutil.Process) -> int | None:
    """Its parent's pid, None when it has exited since it was listed."""
    try:
        return process.ppid()
    except psutil.NoSuchProcess:
        return None


def test_decode_workers_exit_when_the_run_is_killed(tmp_path: Path, audio: AudioFactory) -> None:
    script = tmp_path / "build.py"
    script.write_text(_BUILD_IN_A_POOL)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(audio.source("cbr128")), str(tmp_path)]
    )
    try:
        parent = psutil.Process(proc.pid)
        deadline = time.monotonic() + 120
        workers: list[psutil.Process] = []
        while len(workers) < 2:  # the two decode workers, children of the fork server
            assert proc.poll() is None and time.monotonic() < deadline
            descendants = parent.children(recursive=True)
            workers = [p for p in descendants if _ppid(p) not in (None, parent.pid)]
            time.sleep(0.1)
    finally:
        proc.kill()  # kill -9 of the process that runs build_waveforms
        proc.wait()
    _, alive = psutil.wait_procs(descendants, timeout=10)  # workers, fork server, tracker
    for orphan in alive:
        orphan.kill()
    assert not alive, [p.pid for p in alive]


def test_a_worker_cuts_the_track_into_its_windows(audio: AudioFactory, ffmpeg: str) -> None:
    """A 30-s clip: six 5-s windows as 16-bit PCM; the whole span once, not six decodes."""
    windows = decode_job("av", audio.source("long30s"), WindowRule(), 60.0, ffmpeg)
    cli = decode_job("cli", audio.source("long30s"), WindowRule(), 60.0, ffmpeg)
    assert windows.start_s == cli.start_s == (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)
    assert windows.n_samples_decoded == cli.n_samples_decoded == (CLIP_SAMPLES,) * 6
    assert [len(p) for p in windows.pcm] == [2 * CLIP_SAMPLES] * 6
    # the third window is what a decode of that window alone gives
    alone = decode_window_av(audio.source("long30s"), 10.0).samples
    third = np.frombuffer(windows.pcm[2], "<i2").astype(np.float32) / 32768
    # the same audio; the resampler starts afresh at a seek, hence not bit for bit
    assert agreement(alone, third)[1] >= 40.0
    hop = decode_job(
        "av", audio.source("long30s"), WindowRule(hop_s=10, max_audio_s=25), 60, ffmpeg
    )
    assert hop.start_s == (0.0, 10.0, 20.0)
