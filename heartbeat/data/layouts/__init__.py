"""Dataset layouts: read any supported heart-sound collection into one kind of record.

Each public collection lays out its files and labels its own way. One reader per layout turns
a data folder into a list of `Recording`s (path, label or None, group, source, the layout's own
extra columns), so the stages need not know which collection they run on:

- pascal-b       PASCAL 2011 Dataset B: `set_b.csv` + `set_b/`, read by heartbeat.data.dataset
                 (the download's name quirks, the patient id from the file name). Group: patient.
- pascal-a       PASCAL 2011 Dataset A (iStethoscope, 44.1 kHz): `set_a.csv` + `set_a/`; names
                 matched exactly. Group: the recording (no patient is given).
- physionet2016  PhysioNet/CinC 2016: `training-a/` ... `training-f/`, each with a header-less
                 `REFERENCE.csv` (`a0001,-1`: -1 normal, 1 abnormal) and `a0001.wav` (2 kHz).
                 Group: the recording; the subset letter is kept (leave-one-source-out splits).
- circor2022     CirCor DigiScope (PhysioNet 2022): `training_data.csv` (one row per patient) +
                 `training_data/<id>_<location>[_<n>].wav` (4 kHz). Label per recording:
                 present / absent / unknown (`circor_label`). Group: the patient.
- folders        `DIR/<class>/**/*.wav`, as fastai's and Keras's from-folder loaders. Group: the
                 recording, or the patient a `group_regex` reads from the file name.
- csv            `DIR/labels.csv` with the header `file,label[,patient]` (more columns are kept as
                 extra). Group: the patient column, else the recording.

Every reader collects all the problems it finds and raises one LayoutError naming the file and
each problem. A reader only reads: it never writes, and it never returns a path that leaves the
data folder (`..`, absolute paths, symbolic links pointing out are refused). Hidden files and
folders (`.DS_Store`, macOS's `._name.wav` copies, `.ipynb_checkpoints/`) are not recordings
and are skipped wherever a reader lists a folder.

One module per job: base (records, LayoutError, shared checks), pascal, physionet, circor, generic
(folders, csv), labels (--label-map), read (detect_format, read_recordings). This package re-exports
their public names. Only the standard library and heartbeat.data.dataset are imported: the stages and
predict import this package, and must stay quick to start.
"""

from __future__ import annotations

from heartbeat.data.layouts.base import (
    AUDIO_SUFFIX, FORMATS, LayoutError, LayoutResult, Recording, first_label_problem, label_problem,
)
from heartbeat.data.layouts.circor import (
    CIRCOR_AUDIO, CIRCOR_COLUMNS, CIRCOR_CSV, CIRCOR_MURMUR, circor_label, read_circor2022,
)
from heartbeat.data.layouts.generic import (
    LABELS_COLUMNS, LABELS_CSV, PATIENT_COLUMN, compile_group_regex, read_csv, read_folders,
)
from heartbeat.data.layouts.labels import (
    DROP, apply_label_map, case_clashes, check_label_map, normal_class, parse_label_map,
)
from heartbeat.data.layouts.pascal import PASCAL_A_AUDIO, PASCAL_A_CLASSES, PASCAL_A_CSV, read_pascal_a, read_pascal_b
from heartbeat.data.layouts.physionet import PHYSIONET_LABELS, PHYSIONET_REFERENCE, read_physionet2016
from heartbeat.data.layouts.read import READERS, detect_format, read_recordings

__all__ = [
    "AUDIO_SUFFIX", "CIRCOR_AUDIO", "CIRCOR_COLUMNS", "CIRCOR_CSV", "CIRCOR_MURMUR", "DROP", "FORMATS",
    "LABELS_COLUMNS", "LABELS_CSV", "LayoutError", "LayoutResult", "PASCAL_A_AUDIO", "PASCAL_A_CLASSES",
    "PASCAL_A_CSV", "PATIENT_COLUMN", "PHYSIONET_LABELS", "PHYSIONET_REFERENCE", "READERS", "Recording",
    "apply_label_map", "case_clashes", "check_label_map", "circor_label", "compile_group_regex", "detect_format",
    "first_label_problem", "label_problem", "normal_class", "parse_label_map", "read_circor2022", "read_csv",
    "read_folders", "read_pascal_a", "read_pascal_b", "read_physionet2016", "read_recordings",
]
