"""Synthetic data folders of heartbeat-like recordings, for tests and `make demo`.

`write_dataset_b(root)` writes `root/set_b.csv` and `root/set_b/*.wav` laid out exactly like
the common download of PASCAL Dataset B, quirks included (dataset_b). `write_layout(root, format)`
writes a small folder in any layout heartbeat.data.layouts reads (Dataset A, PhysioNet 2016,
CirCor 2022, class folders, labels.csv), each with its quirks (layouts). The sounds themselves,
normal, murmur and extrastole heartbeats, are `heartbeat_signal`'s (sound).

Everything is drawn from seeded numpy generators: the same seed gives byte-identical files.
Only numpy and soundfile are imported (soxr too, when a layout asks for 44.1 kHz), so the
test suite and the demo stay fast. This package re-exports its modules' public names.
"""

from __future__ import annotations

from heartbeat.data.synth.dataset_b import NOISY_FRACTION, NOISY_LEVEL, NOISY_SUBLABEL, write_dataset_b
from heartbeat.data.synth.layouts import (
    CIRCOR_LOCATIONS, FOLDERS_GROUP_REGEX, LAYOUT_SAMPLE_RATES, LAYOUT_SOUNDS, layout_sound, write_layout,
)
from heartbeat.data.synth.sound import CLASSES, HEART_RATE_BPM, MURMUR_BAND_HZ, SAMPLE_RATE, heartbeat_signal

__all__ = [
    "CIRCOR_LOCATIONS", "CLASSES", "FOLDERS_GROUP_REGEX", "HEART_RATE_BPM", "LAYOUT_SAMPLE_RATES", "LAYOUT_SOUNDS",
    "MURMUR_BAND_HZ", "NOISY_FRACTION", "NOISY_LEVEL", "NOISY_SUBLABEL", "SAMPLE_RATE", "heartbeat_signal",
    "layout_sound", "write_dataset_b", "write_layout",
]
