"""heartbeat.report.metrics checked against scikit-learn / scipy and small hand-worked examples."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    recall_score,
)

from heartbeat.report.metrics import (
    classification_metrics,
    combine_windows,
    student_t_critical_value,
    summarise_folds,
)

CLASSES = ["extrastole", "murmur", "normal"]
HEART_PROBLEM = {"extrastole", "murmur"}


def _random_case(seed: int):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    # Vary the class mix so that some cases lack a class in y_true or never predict one.
    true_p = rng.dirichlet(np.ones(len(CLASSES)) * 0.7)
    pred_p = rng.dirichlet(np.ones(len(CLASSES)) * 0.7)
    y_true = rng.choice(CLASSES, size=n, p=true_p).tolist()
    # Mostly correct predictions, the rest drawn from their own mix.
    correct = rng.random(n) < rng.uniform(0, 1)
    y_pred = np.where(correct, y_true, rng.choice(CLASSES, size=n, p=pred_p)).tolist()
    return y_true, y_pred


FIXED_CASES = {
    "extrastole never predicted": (
        ["extrastole", "extrastole", "murmur", "murmur", "normal", "normal", "normal", "normal"],
        ["normal", "murmur", "murmur", "normal", "normal", "normal", "murmur", "normal"],
    ),
    "extrastole absent from y_true": (
        ["murmur", "murmur", "normal", "normal", "normal"],
        ["extrastole", "murmur", "normal", "extrastole", "normal"],
    ),
    "only normal in y_true": (["normal"] * 4, ["normal", "murmur", "normal", "extrastole"]),
    "perfect": (["extrastole", "murmur", "normal"], ["extrastole", "murmur", "normal"]),
    "single recording": (["murmur"], ["normal"]),
}
CASES = [pytest.param(*case, id=name) for name, case in FIXED_CASES.items()] + [
    pytest.param(*_random_case(seed), id=f"random-{seed}") for seed in range(25)
]


def _sklearn_figures(y_true, y_pred):
    with warnings.catch_warnings():
        # sklearn warns when y_pred holds a class absent from y_true; the figure is still defined.
        warnings.simplefilter("ignore")
        balanced = balanced_accuracy_score(y_true, y_pred)
    accuracy = accuracy_score(y_true, y_pred)
    return {
        "accuracy": accuracy,
        "error_rate": 1 - accuracy,
        "balanced_accuracy": balanced,
        "macro_f1": f1_score(y_true, y_pred, average="macro", labels=CLASSES, zero_division=0),
    }


def _sklearn_heart_problem(y_true, y_pred):
    true_problem = np.array([label in HEART_PROBLEM for label in y_true])
    pred_problem = np.array([label in HEART_PROBLEM for label in y_pred])
    sensitivity = recall_score(true_problem, pred_problem, pos_label=True, zero_division=np.nan)
    specificity = recall_score(true_problem, pred_problem, pos_label=False, zero_division=np.nan)
    return sensitivity, specificity, int(true_problem.sum()), int((~true_problem).sum())


def _approx_or_none(value, expected):
    """None in our output stands for sklearn's NaN (an undefined ratio)."""
    if expected is None or (isinstance(expected, float) and math.isnan(expected)):
        return value is None
    return value == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("y_true, y_pred", CASES)
def test_figures_match_sklearn(y_true, y_pred):
    result = classification_metrics(y_true, y_pred, CLASSES, majority_class="normal")
    for key, expected in _sklearn_figures(y_true, y_pred).items():
        assert result[key] == pytest.approx(expected, abs=1e-12), key
    assert result["n_recordings"] == len(y_true)

    matrix = np.array(result["confusion_matrix"]["matrix"])
    np.testing.assert_array_equal(matrix, confusion_matrix(y_true, y_pred, labels=CLASSES))
    assert matrix.sum() == result["n_recordings"]
    assert result["confusion_matrix"]["classes"] == CLASSES


@pytest.mark.parametrize("y_true, y_pred", CASES)
def test_per_class_matches_sklearn(y_true, y_pred):
    result = classification_metrics(y_true, y_pred, CLASSES, majority_class="normal")
    precision, recall, _, support = precision_recall_fscore_support(
        y_true, y_pred, labels=CLASSES, zero_division=np.nan
    )
    _, _, f1, _ = precision_recall_fscore_support(y_true, y_pred, labels=CLASSES, zero_division=0)
    assert list(result["per_class"]) == CLASSES
    for i, name in enumerate(CLASSES):
        row = result["per_class"][name]
        assert _approx_or_none(row["precision"], float(precision[i])), (name, "precision")
        assert _approx_or_none(row["recall"], float(recall[i])), (name, "recall")
        assert row["f1"] == pytest.approx(f1[i], abs=1e-12), (name, "f1")
        assert row["support"] == support[i]


@pytest.mark.parametrize("y_true, y_pred", CASES)
def test_heart_problem_matches_binary_recall(y_true, y_pred):
    heart = classification_metrics(y_true, y_pred, CLASSES, majority_class="normal")["heart_problem"]
    sensitivity, specificity, n_positive, n_negative = _sklearn_heart_problem(y_true, y_pred)
    assert _approx_or_none(heart["sensitivity"], sensitivity)
    assert _approx_or_none(heart["specificity"], specificity)
    assert (heart["n_positive"], heart["n_negative"]) == (n_positive, n_negative)
    if heart["sensitivity"] is None or heart["specificity"] is None:
        assert heart["youden"] is None
    else:
        assert heart["youden"] == pytest.approx(sensitivity + specificity - 1, abs=1e-12)


@pytest.mark.parametrize("majority_class", CLASSES)
@pytest.mark.parametrize("y_true, y_pred", CASES[:8])
def test_majority_baseline_is_the_constant_prediction(y_true, y_pred, majority_class):
    result = classification_metrics(y_true, y_pred, CLASSES, majority_class=majority_class)
    constant = [majority_class] * len(y_true)
    baseline = result["majority_baseline"]
    assert baseline["class"] == majority_class
    for key, expected in _sklearn_figures(y_true, constant).items():
        assert baseline[key] == pytest.approx(expected, abs=1e-12), key
    assert result["majority_baseline_accuracy"] == pytest.approx(accuracy_score(y_true, constant))

    sensitivity, specificity, n_positive, n_negative = _sklearn_heart_problem(y_true, constant)
    assert _approx_or_none(baseline["heart_problem"]["sensitivity"], sensitivity)
    assert _approx_or_none(baseline["heart_problem"]["specificity"], specificity)
    assert baseline["heart_problem"]["n_positive"] == n_positive
    assert baseline["heart_problem"]["n_negative"] == n_negative
    assert set(baseline["heart_problem"]) == set(result["heart_problem"])


def test_heart_problem_hand_checked():
    y_true = ["murmur", "extrastole", "normal", "normal", "normal", "murmur"]
    y_pred = ["extrastole", "normal", "normal", "murmur", "normal", "murmur"]
    result = classification_metrics(y_true, y_pred, CLASSES, majority_class="normal")
    heart = result["heart_problem"]
    # Problems: recordings 0, 1, 5; detected 0 (murmur called extrastole still counts) and 5.
    assert heart["n_positive"] == 3 and heart["n_negative"] == 3
    assert heart["sensitivity"] == pytest.approx(2 / 3)
    # Normals: recordings 2, 3, 4; cleared 2 and 4.
    assert heart["specificity"] == pytest.approx(2 / 3)
    assert heart["youden"] == pytest.approx(1 / 3)
    # Always "normal" finds no problem and clears every normal.
    baseline_heart = result["majority_baseline"]["heart_problem"]
    assert baseline_heart["sensitivity"] == 0.0
    assert baseline_heart["specificity"] == 1.0
    assert baseline_heart["youden"] == 0.0
    assert result["majority_baseline"]["accuracy"] == pytest.approx(3 / 6)


def test_heart_problem_undefined_ratios_are_none():
    result = classification_metrics(["normal", "normal"], ["murmur", "normal"], CLASSES, majority_class="normal")
    heart = result["heart_problem"]
    assert heart["sensitivity"] is None
    assert heart["specificity"] == pytest.approx(0.5)
    assert heart["youden"] is None
    assert heart["n_positive"] == 0


def test_positive_classes_can_be_chosen():
    y_true = ["murmur", "extrastole", "normal", "murmur"]
    y_pred = ["murmur", "murmur", "normal", "normal"]
    heart = classification_metrics(
        y_true, y_pred, CLASSES, majority_class="normal", positive_classes=["murmur"]
    )["heart_problem"]
    # Positives: the two murmurs, one detected. Negatives: extrastole (called murmur) and normal.
    assert heart["n_positive"] == 2 and heart["n_negative"] == 2
    assert heart["sensitivity"] == pytest.approx(0.5)
    assert heart["specificity"] == pytest.approx(0.5)


def test_without_a_normal_class_there_are_no_heart_problem_figures():
    classes = ["absent", "present", "unknown"]  # CirCor's murmur labels: nothing is "normal"
    y_true, y_pred = ["absent", "present", "unknown", "absent"], ["absent", "absent", "unknown", "present"]
    result = classification_metrics(y_true, y_pred, classes, majority_class="absent", normal_class=None)
    assert result["heart_problem"] is None and result["majority_baseline"]["heart_problem"] is None
    assert result["accuracy"] == pytest.approx(0.5) and result["balanced_accuracy"] == pytest.approx((0.5 + 0 + 1) / 3)
    with pytest.raises(ValueError, match="normal_class 'normal' is not one of the classes"):
        classification_metrics(y_true, y_pred, classes, majority_class="absent")  # the default still needs one
    chosen = classification_metrics(y_true, y_pred, classes, majority_class="absent", normal_class=None,
                                    positive_classes=["present"])["heart_problem"]
    assert (chosen["n_positive"], chosen["sensitivity"]) == (1, 0.0)  # positive classes still choose


def test_balanced_accuracy_ignores_classes_absent_from_y_true():
    # extrastole is predicted but never true: the mean recall is over murmur and normal only.
    result = classification_metrics(
        ["murmur", "murmur", "normal", "normal"], ["extrastole", "murmur", "normal", "normal"],
        CLASSES, majority_class="normal",
    )
    assert result["balanced_accuracy"] == pytest.approx((0.5 + 1.0) / 2)
    assert result["per_class"]["extrastole"]["recall"] is None
    assert result["per_class"]["extrastole"]["precision"] == 0.0


def _assert_plain_json(value, where="result"):
    if isinstance(value, dict):
        for key, item in value.items():
            assert type(key) is str, where
            _assert_plain_json(item, f"{where}[{key!r}]")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _assert_plain_json(item, f"{where}[{i}]")
    else:
        # Exact types: numpy scalars subclass float/int would slip past isinstance.
        assert type(value) in (str, int, float, bool, type(None)), f"{where} is {type(value).__name__}"
        if type(value) is float:
            assert math.isfinite(value), where


@pytest.mark.parametrize("y_true, y_pred", CASES[:8])
def test_result_is_plain_json(y_true, y_pred):
    result = classification_metrics(np.array(y_true), np.array(y_pred), CLASSES, majority_class="normal")
    _assert_plain_json(result)
    assert json.loads(json.dumps(result, allow_nan=False)) == result
    required = {
        "n_recordings", "error_rate", "accuracy", "balanced_accuracy", "macro_f1", "per_class",
        "confusion_matrix", "heart_problem", "majority_baseline_accuracy", "majority_baseline",
    }
    assert required <= set(result)
    assert {"sensitivity", "specificity", "youden", "n_positive", "n_negative"} <= set(result["heart_problem"])
    assert {"class", "accuracy", "error_rate", "balanced_accuracy", "macro_f1", "heart_problem"} <= set(
        result["majority_baseline"]
    )


@pytest.mark.parametrize(
    "y_true, y_pred, kwargs, message",
    [
        ([], [], {}, "empty"),
        (["normal", "murmur"], ["normal"], {}, "y_pred has 1"),
        (["normal", "artifact"], ["normal", "normal"], {}, "artifact"),
        (["normal", "normal"], ["normal", "Normal"], {}, "Normal"),
        (["normal"], ["normal"], {"majority_class": "artifact"}, "majority_class"),
        (["normal"], ["normal"], {"classes": ["normal", "normal", "murmur"]}, "duplicate"),
        ("normal", "normal", {}, "string"),
        (["normal"], ["normal"], {"classes": ["murmur", "extrastole"]}, "not in classes"),
        (["normal"], ["normal"], {"positive_classes": ["artifact"]}, "artifact"),
        (["murmur"], ["murmur"], {"classes": ["murmur", "extrastole"], "majority_class": "murmur"}, "normal_class"),
    ],
)
def test_bad_input_raises(y_true, y_pred, kwargs, message):
    arguments = {"classes": CLASSES, "majority_class": "normal", **kwargs}
    classes = arguments.pop("classes")
    with pytest.raises(ValueError, match=message):
        classification_metrics(y_true, y_pred, classes, **arguments)


def test_combine_windows_is_the_mean():
    rng = np.random.default_rng(3)
    windows = rng.dirichlet(np.ones(3), size=7)
    combined = combine_windows(windows)
    assert combined.shape == (3,)
    np.testing.assert_allclose(combined, windows.sum(axis=0) / 7)
    np.testing.assert_allclose(combine_windows(windows[:1]), windows[0])
    assert combine_windows([[0.2, 0.8], [0.4, 0.6]]).tolist() == pytest.approx([0.3, 0.7])


@pytest.mark.parametrize("bad", [np.zeros((0, 3)), np.zeros(3), np.zeros((2, 3, 1))])
def test_combine_windows_rejects_bad_shapes(bad):
    with pytest.raises(ValueError):
        combine_windows(bad)


@pytest.mark.parametrize(
    "values",
    [[0.31, 0.25, 0.29, 0.40, 0.22], [0.1, 0.2], [0.5, 0.5, 0.5], list(np.random.default_rng(1).random(12))],
)
def test_summarise_folds_matches_numpy_and_scipy(values):
    summary = summarise_folds(values)
    n = len(values)
    assert summary["n"] == n
    assert summary["values"] == pytest.approx(values)
    assert summary["mean"] == pytest.approx(np.mean(values))
    assert summary["std"] == pytest.approx(np.std(values, ddof=1))
    if summary["std"] > 0:
        low, high = stats.t.interval(0.95, n - 1, loc=np.mean(values), scale=stats.sem(values))
    else:
        low = high = np.mean(values)
    assert summary["ci95"] == pytest.approx([low, high], abs=1e-10)
    _assert_plain_json(summary)


def test_summarise_single_fold():
    summary = summarise_folds([0.3])
    assert summary == {"mean": 0.3, "std": 0.0, "ci95": [0.3, 0.3], "n": 1, "values": [0.3]}


@pytest.mark.parametrize("bad", [[], [0.1, float("nan")], [0.2, None]])
def test_summarise_folds_rejects_bad_values(bad):
    with pytest.raises((ValueError, TypeError)):
        summarise_folds(bad)


@pytest.mark.parametrize("df", [*range(1, 41), 59, 99, 250, 1000])
@pytest.mark.parametrize("confidence", [0.95, 0.9, 0.99])
def test_student_t_critical_value_matches_scipy(df, confidence):
    expected = stats.t.ppf(0.5 + confidence / 2, df)
    assert student_t_critical_value(df, confidence) == pytest.approx(expected, rel=1e-9)


def test_metrics_module_imports_only_light_dependencies():
    code = (
        "import sys, heartbeat.report.metrics; "
        "print(sorted(m for m in ('pandas', 'sklearn', 'matplotlib', 'scipy', 'torch') if m in sys.modules))"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"
