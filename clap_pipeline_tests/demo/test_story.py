"""The demo's story: the per-epoch curve with its best epoch and the epochs after it."""

from __future__ import annotations

from clap_pipeline.demo.story import curve_table
from clap_pipeline.training_report import EpochRow, TrainingReport


def test_the_curve_marks_the_best_epoch_and_what_follows() -> None:
    report = TrainingReport(
        best_epoch=2,
        epochs=tuple(
            EpochRow(e, None, 3.0 - 0.1 * e, 3.1 - 0.05 * e, {"text_to_audio_recall_at_5": r})
            for e, r in ((1, 0.4), (2, 0.55), (3, 0.5))
        ),
    )
    text = curve_table(report).text().splitlines()
    assert len(text) == 2 + 3
    assert text[3].split()[:4] == ["2", "2.800", "3.000", "0.550"]
    assert text[3].endswith("best (kept)")
    assert text[4].endswith("after the best") and not text[2].endswith(")")
