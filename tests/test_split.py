"""Split invariants: grouped by patient, stratified, complete, seeded; the random protocol is by recording."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from heartbeat.train.split import leaked_patients, make_split


def dataset_like(seed=0, n_patients=165):
    """Recordings shaped like Dataset B: patients with 1-6 recordings, ~69 % normal."""
    rng = np.random.default_rng(seed)
    rows = []
    for patient in range(100, 100 + n_patients):
        label = rng.choice(["normal", "murmur", "extrastole"], p=[0.69, 0.21, 0.10])
        for position in range(rng.integers(1, 7)):
            rows.append({"recording": f"{label}__{patient}_{position}.wav", "patient_id": patient, "label": label})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_patient_split_invariants(seed):
    recordings = dataset_like(seed)
    table = make_split(recordings, "patient", 0.3, seed)
    assert len(table) == len(recordings) and set(table["recording"]) == set(recordings["recording"])
    assert set(table["split"]) == {"train", "valid"}
    assert leaked_patients(table) == 0
    assert table.groupby("patient_id")["split"].nunique().max() == 1
    valid = table[table["split"] == "valid"]
    assert abs(len(valid) / len(table) - 0.3) < 0.05
    for label, group in table.groupby("label"):  # stratified: each class ~30 % in validation
        share = (group["split"] == "valid").mean()
        assert abs(share - 0.3) < 0.1, f"{label}: {share:.2f} of recordings in validation"


def test_same_seed_same_split_other_seed_other_split():
    recordings = dataset_like(7)
    first = make_split(recordings, "patient", 0.3, 11)
    assert first.equals(make_split(recordings, "patient", 0.3, 11))
    assert not first["split"].equals(make_split(recordings, "patient", 0.3, 12)["split"])


def test_random_split_is_by_recording_and_leaks_patients():
    recordings = dataset_like(5)
    table = make_split(recordings, "random", 0.3, 0)
    assert (table["split"] == "valid").sum() == round(0.3 * len(recordings))
    assert leaked_patients(table) > 10  # what the published protocol allows
    assert table.equals(make_split(recordings, "random", 0.3, 0))


def test_unknown_split_is_refused():
    with pytest.raises(ValueError, match="unknown split"):
        make_split(dataset_like(), "fold", 0.3, 0)


def test_leaked_patients_counts_patients_on_both_sides_not_recordings():
    table = pd.DataFrame({
        "patient_id": [1, 1, 2, 3, 3, 4, 4, 4],
        "split": ["train", "valid", "train", "valid", "valid", "train", "valid", "valid"],
    })
    assert leaked_patients(table) == 2  # patients 1 and 4; patient 4's two validation recordings count once
    assert leaked_patients(table[table["patient_id"] != 1]) == 1
    assert leaked_patients(table.assign(split="train")) == 0
