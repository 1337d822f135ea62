"""ANLS (Average Normalized Levenshtein Similarity), the ST-VQA metric.

As the Robust Reading Competition's evaluation script: both strings are
normalised (``strip``, lower-case, runs of whitespace -> one space); per
reference ``NL = levenshtein(pred, ref) / max(len(pred), len(ref))`` (0 when
both are empty, lengths in Unicode code points); the reference scores
``1 - NL`` when ``NL < 0.5`` and 0 otherwise (NL exactly 0.5 scores 0); a
question scores the max over its references; ANLS is the mean over questions,
a fraction in [0, 1] (the leaderboard's unit, not x100).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from locca import stats

__all__ = ["normalize", "levenshtein", "normalized_levenshtein", "anls_score", "anls"]

THRESHOLD = 0.5


def normalize(text: str) -> str:
    """Strip, lower-case and collapse whitespace runs to a single space."""
    return " ".join(text.strip().lower().split())


def levenshtein(a: str, b: str) -> int:
    """Edit distance (unit-cost insert/delete/substitute) between two strings."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        cur = [i]
        for j, cb in enumerate(b, start=1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def normalized_levenshtein(pred: str, ref: str) -> float:
    """NL on already-normalised strings; 0 when both are empty."""
    longest = max(len(pred), len(ref))
    return 0.0 if longest == 0 else levenshtein(pred, ref) / longest


def anls_score(prediction: str, references: Sequence[str], threshold: float = THRESHOLD) -> float:
    """One question's score in [0, 1]: max over references of thresholded 1 - NL."""
    if isinstance(references, str):
        references = [references]
    if len(references) == 0:
        raise ValueError("no reference answers")
    pred = normalize(prediction)
    best = 0.0
    for ref in references:
        nl = normalized_levenshtein(pred, normalize(ref))
        best = max(best, 1.0 - nl if nl < threshold else 0.0)
    return best


def anls(targets: Sequence, predictions: Sequence[str]) -> dict[str, float]:
    """seqio metric: ``{"anls": mean score in [0, 1], "anls_low", "anls_high"}``
    (the normal 95% interval of the mean of the per-question scores).

    Each target is the list of reference answers, one answer string, or a dict
    with an ``"answers"`` list (tasks.registry.text_postprocessor).
    """
    if len(targets) != len(predictions):
        raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")
    if not targets:
        raise ValueError("no examples to score")
    scores = [
        anls_score(p, t["answers"] if isinstance(t, Mapping) else t)
        for t, p in zip(targets, predictions)
    ]
    mean, low, high = stats.mean_ci(scores)
    return {"anls": float(sum(scores)) / len(scores), "anls_low": low, "anls_high": high}
