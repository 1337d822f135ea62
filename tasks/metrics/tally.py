"""TallyQA counting accuracy: exact match of the predicted count.

A prediction is read as a count by :func:`parse_count`: ``strip``, lower-case,
trailing ``.``/``!``/``?`` removed; then either a decimal integer (``"2"``,
``"02"``) or a number word ``zero``..``twenty`` (``"none"`` and ``"no"`` also
mean 0). Anything else is unreadable and counts as wrong. Integers are taken
as they are. Accuracies are percentages, overall and for the ``simple`` /
``complex`` subsets (``issimple`` true / false).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from locca import stats

__all__ = ["parse_count", "tally_accuracy", "tally_report"]

_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty"
).split()
_COUNT_WORDS = {w: i for i, w in enumerate(_WORDS)} | {"none": 0, "no": 0}
_DIGITS = re.compile(r"\d+")


def parse_count(prediction: Any) -> int | None:
    """Prediction (str or int) -> non-negative int count, or None if unreadable."""
    if isinstance(prediction, bool):
        return None
    if isinstance(prediction, int):
        return prediction if prediction >= 0 else None
    if not isinstance(prediction, str):
        return None
    text = prediction.strip().lower().rstrip(".!?").strip()
    if _DIGITS.fullmatch(text):
        return int(text)
    return _COUNT_WORDS.get(text)


def tally_report(
    answers: Sequence[int],
    predictions: Sequence[Any],
    issimple: Sequence[bool | None] | None = None,
) -> dict[str, Any]:
    """Accuracy (%) overall and, where ``issimple`` is known, on simple/complex.

    Returns ``{"overall", "num_questions", "num_unparsed"[, "simple",
    "num_simple", "complex", "num_complex"]}``; a prediction of ``None`` is
    wrong (use it for missing predictions).
    """
    if len(answers) != len(predictions):
        raise ValueError(f"{len(answers)} answers but {len(predictions)} predictions")
    if not answers:
        raise ValueError("no questions to score")
    if issimple is None:
        issimple = [None] * len(answers)
    correct, unparsed = [], 0
    for gt, pred in zip(answers, predictions):
        count = parse_count(pred)
        unparsed += pred is not None and count is None
        correct.append(count is not None and count == int(gt))
    out: dict[str, Any] = {
        "overall": 100.0 * sum(correct) / len(correct),
        "num_questions": len(correct),
        "num_unparsed": unparsed,
    }
    for name, flag in (("simple", True), ("complex", False)):
        sub = [c for c, s in zip(correct, issimple) if s is flag]
        if sub:
            out[name] = 100.0 * sum(sub) / len(sub)
            out[f"num_{name}"] = len(sub)
    return out


def tally_accuracy(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
    """seqio metric: ``{"tally_accuracy": %[, "tally_simple", "tally_complex"]}``,
    each with its 95% Wilson interval (``{name}_low``, ``{name}_high``, %).

    Targets are counts (int, ``"2"``, ``"two"``) or dicts with ``"answer"`` (a
    count) or ``"answers"`` (references, the first is the count) and optionally
    ``"issimple"`` (tasks.registry.text_postprocessor).
    """
    answers, simple = [], []
    for i, t in enumerate(targets):
        s = None
        if isinstance(t, Mapping):
            s = t.get("issimple")
            t = t["answer"] if "answer" in t else (t["answers"][0] if t["answers"] else None)
        count = parse_count(t)
        if count is None:
            raise ValueError(f"target #{i} is not a count: {t!r}")
        answers.append(count)
        simple.append(None if s is None else bool(s))
    rep = tally_report(answers, predictions, simple)
    out = {}
    for name, n_key in (("overall", "num_questions"), ("simple", "num_simple"),
                        ("complex", "num_complex")):  # fmt: skip
        if name in rep:
            key = "tally_accuracy" if name == "overall" else f"tally_{name}"
            low, high = stats.proportion_ci(round(rep[name] / 100 * rep[n_key]), rep[n_key])
            out.update({key: rep[name], f"{key}_low": 100 * low, f"{key}_high": 100 * high})
    return out
