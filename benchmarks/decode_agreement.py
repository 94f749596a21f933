"""Agreement of the in-process decode (PyAV) with the ffmpeg CLI on real clips.

For each file and window offset prints the decoded length of both paths, the largest
absolute sample difference and the SNR (dB) of the CLI window over the difference,
or both failure reasons. Not a timing; for clips the tests cannot read (real FMA).

    .venv/bin/python benchmarks/decode_agreement.py FILE.mp3 [...] [--offsets 0 12.5]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from clap_pipeline.audio.decode import DecodedWindow, DecodeFailure, decode_window  # noqa: E402
from clap_pipeline.audio.decode_av import decode_window_av  # noqa: E402


def _run(fn, path: Path, offset_s: float) -> DecodedWindow | DecodeFailure:  # type: ignore[no-untyped-def]
    try:
        return fn(path, offset_s)
    except DecodeFailure as failure:
        return failure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", type=Path, nargs="+")
    parser.add_argument("--offsets", type=float, nargs="+", default=[0.0, 12.5])
    args = parser.parse_args()
    for path in args.files:
        for offset in args.offsets:
            cli, own = _run(decode_window, path, offset), _run(decode_window_av, path, offset)
            label = f"{path} @ {offset:g} s:"
            if isinstance(cli, DecodeFailure) or isinstance(own, DecodeFailure):
                print(label, "cli", getattr(cli, "reason", "ok"), "| in-process",
                      getattr(own, "reason", "ok"))  # fmt: skip
                continue
            diff = own.samples.astype(np.float64) - cli.samples.astype(np.float64)
            noise = float(np.sum(diff**2))
            signal = float(np.sum(cli.samples.astype(np.float64) ** 2))
            snr = "inf" if noise == 0 else f"{10 * np.log10(signal / noise):.1f}"
            print(f"{label} samples {cli.n_samples_decoded} (cli) {own.n_samples_decoded} "
                  f"(in-process), max abs diff {np.max(np.abs(diff)):.3g}, SNR {snr} dB")  # fmt: skip


if __name__ == "__main__":
    main()
