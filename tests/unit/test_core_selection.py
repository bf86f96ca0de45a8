"""Tests of act.core.selection: the paper's "Pro Max" choice of annotator and criticizer."""

from __future__ import annotations

import numpy as np
import pytest

from act.core.metrics import accuracy_interval
from act.core.selection import ModelAccuracy, pro_max


def _answers_with_accuracy(y_true: np.ndarray, n_correct: int) -> np.ndarray:
    answers = y_true.copy()
    answers[n_correct:] = "wrong"
    return answers


def test_pro_max_picks_best_as_annotator_and_second_as_criticizer() -> None:
    y_true = np.array(["cat", "dog", "bird"] * 100, dtype=object)
    candidates = {
        "gemini": _answers_with_accuracy(y_true, 210),
        "gpt4o": _answers_with_accuracy(y_true, 290),
        "claude": _answers_with_accuracy(y_true, 250),
        "llava": _answers_with_accuracy(y_true, 120),
    }
    selection = pro_max(candidates, y_true)
    assert (selection.annotator, selection.criticizer) == ("gpt4o", "claude")
    assert [model.name for model in selection.ranking] == ["gpt4o", "claude", "gemini", "llava"]
    assert [model.accuracy for model in selection.ranking] == pytest.approx(
        [290 / 300, 250 / 300, 210 / 300, 120 / 300]
    )
    assert selection.top_two_indistinguishable is False


def test_ranking_reports_the_wilson_interval_of_each_model() -> None:
    y_true = np.arange(20)
    answers = np.where(np.arange(20) < 15, y_true, -1)
    selection = pro_max({"a": answers, "b": y_true}, y_true, alpha=0.1)
    expected = accuracy_interval(answers, y_true, alpha=0.1)
    assert selection.ranking[1] == ModelAccuracy(
        name="a", accuracy=0.75, lower=expected.lower, upper=expected.upper, n=20
    )
    assert selection.alpha == 0.1


def test_close_models_on_a_small_set_are_flagged_indistinguishable() -> None:
    y_true = np.array([0, 1] * 10)
    selection = pro_max(
        {
            "m1": np.where(np.arange(20) < 17, y_true, 9),
            "m2": np.where(np.arange(20) < 16, y_true, 9),
        },
        y_true,
    )
    assert selection.annotator == "m1"
    assert selection.top_two_indistinguishable is True


def test_ties_are_broken_by_name_whatever_the_mapping_order() -> None:
    y_true = [1, 2, 3, 4]
    same = [1, 2, 3, 0]
    for candidates in (
        {"zeta": same, "alpha": same, "mid": same},
        {"mid": same, "alpha": same, "zeta": same},
    ):
        selection = pro_max(candidates, y_true)
        assert [model.name for model in selection.ranking] == ["alpha", "mid", "zeta"]


def test_missing_answer_counts_as_wrong() -> None:
    y_true = ["a", "b", "c", "d"]
    selection = pro_max({"silent": [None, None, None, None], "some": ["a", None, "c", "x"]}, y_true)
    assert selection.annotator == "some"
    assert selection.ranking[0].accuracy == 0.5
    assert selection.ranking[1].accuracy == 0.0


@pytest.mark.parametrize("candidates", [{}, {"only": [1, 2]}])
def test_fewer_than_two_candidates_is_rejected(candidates: dict) -> None:
    with pytest.raises(ValueError, match=r"at least two candidate models.*cross-criticism"):
        pro_max(candidates, [1, 2])


def test_empty_evaluation_set_is_rejected() -> None:
    with pytest.raises(ValueError, match="y_true is empty"):
        pro_max({"a": [], "b": []}, [])


def test_mismatched_lengths_name_the_candidate() -> None:
    with pytest.raises(ValueError, match=r"candidate 'b': .*y_pred has 2, y_true has 3"):
        pro_max({"a": [1, 2, 3], "b": [1, 2]}, [1, 2, 3])


def test_bad_alpha_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"alpha must lie in \(0, 1\)"):
        pro_max({"a": [1], "b": [1]}, [1], alpha=1.0)
