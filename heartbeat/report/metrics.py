"""Recording-level classification figures, each beside the majority-class baseline.

Only numpy is imported here: the predict command imports this module and must start fast.
Every returned value is a plain Python int/float/str/list/dict/None, so results go
straight to JSON. Ratios that are undefined (0/0) are None, never NaN.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def combine_windows(window_probabilities: np.ndarray) -> np.ndarray:
    """A recording is cut into several image windows; its class probabilities are the mean
    of its windows' (shape (n_windows, n_classes) -> (n_classes,)).

    The one rule used by the report, cross-validation and predict.
    """
    probabilities = np.asarray(window_probabilities, dtype=float)
    if probabilities.ndim != 2:
        raise ValueError(
            f"window probabilities must have shape (n_windows, n_classes), got shape {probabilities.shape}"
        )
    if probabilities.shape[0] == 0:
        raise ValueError("a recording needs at least one window to combine")
    return probabilities.mean(axis=0)


def classification_metrics(
    y_true: Sequence[str],
    y_pred: Sequence[str],
    classes: Sequence[str],
    *,
    majority_class: str,
    positive_classes: Sequence[str] | None = None,
    normal_class: str | None = "normal",
) -> dict:
    """Figures for one prediction per recording, and the same figures for the constant
    prediction `majority_class` on the same recordings.

    Per-class precision (recall) is None for a class never predicted (absent from y_true);
    F1 is 0 in those cases (sklearn's zero_division=0), so macro-F1 is a mean over all
    `classes`. Balanced accuracy is the mean recall over the classes present in y_true.
    "Heart problem" is any class in `positive_classes` (default: every class other than
    `normal_class`): predicting murmur for an extrastole still counts as detecting a problem.
    With `normal_class` None and no `positive_classes` (data without a normal class) there is
    nothing to compare against, and "heart_problem" is None in both the model's and the baseline's figures.
    """
    classes = _check_classes(classes)
    class_index = {name: i for i, name in enumerate(classes)}
    true_idx = _encode("y_true", y_true, class_index)
    pred_idx = _encode("y_pred", y_pred, class_index)
    if len(true_idx) != len(pred_idx):
        raise ValueError(f"y_true has {len(true_idx)} labels but y_pred has {len(pred_idx)}")
    if majority_class not in class_index:
        raise ValueError(f"majority_class {majority_class!r} is not one of the classes {classes}")
    is_positive_class = _positive_class_mask(classes, positive_classes, normal_class)

    n_classes = len(classes)
    confusion = _confusion_matrix(true_idx, pred_idx, n_classes)
    model = _summary_figures(confusion, is_positive_class)

    baseline_pred = np.full_like(true_idx, class_index[majority_class])
    baseline = _summary_figures(_confusion_matrix(true_idx, baseline_pred, n_classes), is_positive_class)

    return {
        "n_recordings": int(len(true_idx)),
        "error_rate": model["error_rate"],
        "accuracy": model["accuracy"],
        "balanced_accuracy": model["balanced_accuracy"],
        "macro_f1": model["macro_f1"],
        "per_class": _per_class(confusion, classes),
        "confusion_matrix": {"classes": list(classes), "matrix": confusion.tolist()},
        "heart_problem": model["heart_problem"],
        "majority_baseline_accuracy": baseline["accuracy"],
        "majority_baseline": {"class": majority_class, **baseline},
    }


def summarise_folds(values: Sequence[float]) -> dict:
    """Mean, sample std (ddof=1; 0.0 for one value) and a 95% t-interval over fold values.

    ci95 = mean ± t_{0.975, n-1} · std / sqrt(n); [mean, mean] for a single fold.
    """
    fold_values = [float(v) for v in values]
    if not fold_values:
        raise ValueError("summarise_folds needs at least one fold value")
    if not all(math.isfinite(v) for v in fold_values):
        raise ValueError(f"fold values must be finite numbers, got {fold_values}")
    n = len(fold_values)
    mean = float(np.mean(fold_values))
    if n == 1:
        return {"mean": mean, "std": 0.0, "ci95": [mean, mean], "n": 1, "values": fold_values}
    std = float(np.std(fold_values, ddof=1))
    half_width = student_t_critical_value(n - 1, confidence=0.95) * std / math.sqrt(n)
    return {
        "mean": mean,
        "std": std,
        "ci95": [mean - half_width, mean + half_width],
        "n": n,
        "values": fold_values,
    }


def student_t_critical_value(df: int, confidence: float = 0.95) -> float:
    """Two-sided critical value t with P(|T| <= t) = confidence for Student's t with integer df.

    Uses the closed form of the t distribution for integer degrees of freedom
    (Abramowitz & Stegun 26.7.3-4), solved by bisection: exact to float precision,
    without scipy.
    """
    if int(df) != df or df < 1:
        raise ValueError(f"degrees of freedom must be a positive integer, got {df}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    df = int(df)
    # Bisect on theta = arctan(t / sqrt(df)) in (0, pi/2): the mass is increasing in theta.
    low, high = 0.0, math.pi / 2
    for _ in range(200):
        middle = (low + high) / 2
        if _t_central_mass(middle, df) < confidence:
            low = middle
        else:
            high = middle
        if high - low < 1e-15:
            break
    return math.sqrt(df) * math.tan((low + high) / 2)


def _t_central_mass(theta: float, df: int) -> float:
    """P(|T| <= sqrt(df)·tan(theta)) for Student's t with integer df (A&S 26.7.3-4)."""
    cos_sq = math.cos(theta) ** 2
    if df % 2 == 1:
        if df == 1:
            return 2 * theta / math.pi
        term = math.cos(theta)
        total = term
        for k in range(1, (df - 3) // 2 + 1):
            term *= cos_sq * (2 * k) / (2 * k + 1)
            total += term
        return 2 / math.pi * (theta + math.sin(theta) * total)
    term = 1.0
    total = term
    for k in range(1, (df - 2) // 2 + 1):
        term *= cos_sq * (2 * k - 1) / (2 * k)
        total += term
    return math.sin(theta) * total


def _check_classes(classes: Sequence[str]) -> list[str]:
    if isinstance(classes, str):
        raise ValueError(f"classes must be a list of class names, not the string {classes!r}")
    names = [str(name) for name in classes]
    if not names:
        raise ValueError("classes is empty")
    if len(set(names)) != len(names):
        raise ValueError(f"classes has duplicate names: {names}")
    return names


def _encode(what: str, labels: Sequence[str], class_index: dict[str, int]) -> np.ndarray:
    if isinstance(labels, str):
        raise ValueError(f"{what} must be a sequence of class names, not the string {labels!r}")
    names = [str(label) for label in labels]
    if not names:
        raise ValueError(f"{what} is empty: there are no recordings to score")
    unknown = sorted(set(names) - class_index.keys())
    if unknown:
        raise ValueError(f"{what} has labels that are not in classes {list(class_index)}: {unknown}")
    return np.array([class_index[name] for name in names], dtype=np.int64)


def _positive_class_mask(
    classes: list[str], positive_classes: Sequence[str] | None, normal_class: str | None
) -> np.ndarray | None:
    """Which classes are a heart problem; None when there is no normal class to compare against."""
    if positive_classes is None and normal_class is None:
        return None
    if positive_classes is None:
        if normal_class not in classes:
            raise ValueError(
                f"normal_class {normal_class!r} is not one of the classes {classes}; "
                "pass positive_classes to say which classes are a heart problem"
            )
        positives = {name for name in classes if name != normal_class}
    else:
        if isinstance(positive_classes, str):
            positive_classes = [positive_classes]
        positives = {str(name) for name in positive_classes}
        unknown = sorted(positives - set(classes))
        if unknown:
            raise ValueError(f"positive_classes {unknown} are not in classes {classes}")
    if not positives:
        raise ValueError("there must be at least one heart-problem (positive) class")
    return np.array([name in positives for name in classes])


def _confusion_matrix(true_idx: np.ndarray, pred_idx: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts with rows = true class, columns = predicted class."""
    return np.bincount(true_idx * n_classes + pred_idx, minlength=n_classes * n_classes).reshape(
        n_classes, n_classes
    )


def _ratio(numerator, denominator) -> float | None:
    return None if denominator == 0 else float(numerator) / float(denominator)


def _per_class_counts(confusion: np.ndarray):
    true_positive = np.diag(confusion)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    return true_positive, support, predicted


def _f1(true_positive: int, support: int, predicted: int) -> float:
    # 2TP / (2TP + FP + FN) = 2TP / (support + predicted); 0 when undefined, as sklearn's zero_division=0.
    denominator = support + predicted
    return 0.0 if denominator == 0 else 2.0 * true_positive / denominator


def _per_class(confusion: np.ndarray, classes: list[str]) -> dict:
    true_positive, support, predicted = _per_class_counts(confusion)
    return {
        name: {
            "precision": _ratio(true_positive[i], predicted[i]),
            "recall": _ratio(true_positive[i], support[i]),
            "f1": _f1(int(true_positive[i]), int(support[i]), int(predicted[i])),
            "support": int(support[i]),
        }
        for i, name in enumerate(classes)
    }


def _summary_figures(confusion: np.ndarray, is_positive_class: np.ndarray) -> dict:
    n = int(confusion.sum())
    true_positive, support, predicted = _per_class_counts(confusion)
    accuracy = float(true_positive.sum()) / n
    present = support > 0
    recalls = true_positive[present] / support[present]
    f1_scores = [_f1(int(tp), int(s), int(p)) for tp, s, p in zip(true_positive, support, predicted)]
    return {
        "accuracy": accuracy,
        "error_rate": 1.0 - accuracy,
        "balanced_accuracy": float(recalls.mean()),
        "macro_f1": float(np.mean(f1_scores)),
        "heart_problem": None if is_positive_class is None else _heart_problem(confusion, is_positive_class),
    }


def _heart_problem(confusion: np.ndarray, is_positive_class: np.ndarray) -> dict:
    """Heart problem (any positive class) vs normal, from the multi-class confusion matrix."""
    positive_rows = confusion[is_positive_class]
    negative_rows = confusion[~is_positive_class]
    n_positive = int(positive_rows.sum())
    n_negative = int(negative_rows.sum())
    detected = int(positive_rows[:, is_positive_class].sum())
    cleared = int(negative_rows[:, ~is_positive_class].sum())
    sensitivity = _ratio(detected, n_positive)
    specificity = _ratio(cleared, n_negative)
    youden = None if sensitivity is None or specificity is None else sensitivity + specificity - 1.0
    return {
        "sensitivity": sensitivity,
        "specificity": specificity,
        "youden": youden,
        "n_positive": n_positive,
        "n_negative": n_negative,
    }
