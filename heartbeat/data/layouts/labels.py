"""Labels across layouts: --label-map (parse, check, apply), classes differing only in case, the normal class."""

from __future__ import annotations

import dataclasses

from heartbeat.data.layouts.base import LayoutError, Recording, label_problem

DROP = "drop"  # --label-map's word for "remove recordings of this label"


def parse_label_map(text: str) -> dict[str, str | None]:
    """`--label-map` text `old=new,old2=drop` -> {"old": "new", "old2": None}; None means drop.

    Malformed text raises LayoutError naming --label-map and every bad entry.
    """
    problems: list[str] = []
    mapping: dict[str, str | None] = {}
    entries = [entry.strip() for entry in text.split(",")]
    for entry in entries:
        old, separator, new = (part.strip() for part in entry.partition("="))
        if not separator or "=" in new or not old or not new:
            problems.append(f"{entry!r} is not old=new or old={DROP}")
        elif old in mapping:
            problems.append(f"{old!r} is mapped twice")
        elif new != DROP and new.lower() == DROP:  # a class called DROP is surely a mistyped drop
            problems.append(f"{entry!r}: write {DROP!r} in lowercase to drop a label ({new!r} would be a class)")
        elif new != DROP and label_problem(new):
            problems.append(label_problem(new))
        else:
            mapping[old] = None if new == DROP else new
    if problems:
        raise LayoutError(f"--label-map: {'; '.join(problems)}")
    return mapping


def check_label_map(mapping: dict[str, str | None], labels, where, noun: str = "recording") -> None:
    """LayoutError if the map names a label that `labels` (of `where`) lack: a typo would silently change nothing."""
    labels = sorted(set(labels))
    unknown = sorted(set(mapping) - set(labels))
    if unknown:
        raise LayoutError(f"--label-map: {where} has no {noun} labelled {', '.join(unknown)} "
                          f"(its labels: {', '.join(labels) or 'none'})")


def apply_label_map(recordings: list[Recording], mapping: dict[str, str | None]) -> list[Recording]:
    """Recordings with their labels renamed by `mapping`; those mapped to None are left out."""
    mapped = []
    for recording in recordings:
        if recording.label is None or recording.label not in mapping:
            mapped.append(recording)
        elif mapping[recording.label] is not None:
            mapped.append(dataclasses.replace(recording, label=mapping[recording.label]))
    return mapped


def case_clashes(classes: list[str], where) -> list[str]:
    """One warning line per group of classes that differ only in case (`Murmur`, `murmur`): likely one class.

    They stay distinct classes (a label is case-sensitive); --label-map can merge them.
    """
    by_folded: dict[str, list[str]] = {}
    for name in classes:
        by_folded.setdefault(name.casefold(), []).append(name)
    return [f"{where}: labels {', '.join(repr(name) for name in sorted(names))} differ only in case; they stay "
            f"separate classes (merge them with --label-map {sorted(names)[1]}={sorted(names)[0]})"
            for names in by_folded.values() if len(names) > 1]


def normal_class(classes: list[str]) -> str | None:
    """The class the heart-problem figures compare against: "normal" if the data has it."""
    return "normal" if "normal" in classes else None
