"""Cost of one `new_tracks_sensor` tick on the full FMA scale, next to a full `tracks` load.

Writes a full-scale tracks.csv (106,574 FMA-like records) and one empty MP3 per track in
FMA's folder layout, then times, in this process:

- a quiet tick: the inputs' fingerprint (one ``stat`` per folder) equals the cursor;
- a deciding tick after a change: tracks.csv's sha256, its track ids (DuckDB, one
  column kept), the audio folder listing, the selection and the decision;
- the reference: loading tracks.csv into DuckDB as the `tracks` asset does.

A deciding tick must stay well inside Dagster's sensor timeout (60 s by default) and
cheaper than the load it may trigger.
Usage: python benchmarks/bench_sensor.py [--tracks 106574] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from clap_pipeline.dataset import audio_path  # noqa: E402
from clap_pipeline.demo.fma_synthetic import synthetic_tracks, write_metadata  # noqa: E402
from clap_pipeline.metadata.fma import load_metadata  # noqa: E402
from clap_pipeline.metadata.new_tracks import CsvHash, decide, raw_inputs  # noqa: E402
from clap_pipeline.selection import inputs_state  # noqa: E402


def _median_s(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tracks", type=int, default=106_574)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-tracks", type=int, default=500, help="CLAP_MAX_TRACKS")
    args = parser.parse_args()
    import duckdb

    with tempfile.TemporaryDirectory(prefix="bench-sensor-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        frame = synthetic_tracks(args.tracks, seed=0)
        meta = write_metadata(root / "fma_metadata", frame)
        audio = root / "fma_audio"
        for track_id in frame.index:
            path = audio_path(audio, int(track_id))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        tracks_csv = meta / "tracks.csv"
        print(
            f"{args.tracks} tracks: tracks.csv {tracks_csv.stat().st_size / 1e6:.0f} MB, "
            f"{len(frame)} empty MP3s in {len(list(audio.iterdir()))} folders "
            f"(written in {time.perf_counter() - started:.0f} s)"
        )

        quiet = _median_s(lambda: inputs_state(meta, audio), args.repeats)

        def deciding_tick() -> None:
            inputs = raw_inputs(tracks_csv, audio, args.max_tracks, CsvHash.of(tracks_csv))
            decide(inputs, None, 1)

        deciding = _median_s(deciding_tick, args.repeats)
        cached = CsvHash.of(tracks_csv)
        audio_only = _median_s(
            lambda: decide(raw_inputs(tracks_csv, audio, args.max_tracks, cached), None, 1),
            args.repeats,
        )

        def load() -> None:
            db = root / "clap.duckdb"
            db.unlink(missing_ok=True)
            with duckdb.connect(str(db)) as con:
                load_metadata(con, tracks_csv, meta / "genres.csv")

        reference = _median_s(load, args.repeats)

    print(f"median of {args.repeats} (seconds)")
    print(f"  quiet tick (fingerprint = cursor)                 {quiet:8.4f}")
    print(f"  deciding tick (sha256 + ids + listing + decision) {deciding:8.3f}")
    print(f"  deciding tick, tracks.csv unchanged (hash cached) {audio_only:8.3f}")
    print(f"  reference: full `tracks` load into DuckDB         {reference:8.3f}")
    print(f"deciding tick / full load: {deciding / reference:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
