"""VQA accuracy exactly as the official evaluator (GT-Vision-Lab/VQA ``vqaEval.py``).

Own implementation of the official logic, quirks included, because published
numbers are computed with it:

* Human answers and the prediction get ``\\n``/``\\t`` -> space and ``strip()``.
* Only when the (stripped) human answers are **not all identical** are the
  human answers and the prediction normalised (punctuation, then number
  words/articles/contractions). When all ten agree the prediction must match
  them character for character (no lower-casing either).
* Punctuation: for each symbol in ``_PUNCT``: if the symbol is next to a space
  in the *original* text, or the original text has a comma between two digits
  anywhere, the symbol is deleted, otherwise replaced by a space. Then periods
  not followed by a digit are deleted -- at most 32 of them, because the
  official code passes ``re.UNICODE`` (== 32) as ``re.sub``'s *count*
  argument. (The official period regex ``(?!<=\\d)(\\.)(?!\\d)`` has a typo'd
  look-behind that is really a look-ahead; reproduced as is.)
* Digits/articles: lower-case, split on whitespace, number words
  ``none``/``zero``..``ten`` -> digits, drop ``a``/``an``/``the``, then the
  contractions table (some keys are capitalised and so never match after
  lower-casing -- as upstream).
* Leave-one-out: for each human answer record, count the *other* records whose
  answer equals the prediction; score ``min(1, count / 3)``; average the ten.
  "Other" means "not equal as a whole record" (the official code compares the
  answer dicts), which matters only when two records are identical dicts.
* Per question ``round(100 * acc, 2)``; overall / per type
  ``round(100 * sum(accs) / n, 2)`` with sums in annotation-file order.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from locca import stats

__all__ = [
    "process_punctuation",
    "process_digit_article",
    "normalize_answer",
    "question_accuracy",
    "vqa_per_example",
    "vqa_accuracy",
    "evaluate_vqa",
]

_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}  # fmt: skip
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_ARTICLES = frozenset({"a", "an", "the"})
_PUNCT = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
    ",", "?", "!",
)  # fmt: skip
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")
_PERIOD_STRIP_COUNT = int(re.UNICODE)  # upstream passes re.UNICODE (32) as `count`


def process_punctuation(text: str) -> str:
    """The official ``processPunctuation`` (see module docstring)."""
    out = text
    comma_between_digits = _COMMA_STRIP.search(text) is not None
    for p in _PUNCT:
        if (p + " " in text or " " + p in text) or comma_between_digits:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, count=_PERIOD_STRIP_COUNT)


def process_digit_article(text: str) -> str:
    """The official ``processDigitArticle``: lower, number words, articles, contractions."""
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


def _clean_whitespace(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def normalize_answer(text: str) -> str:
    """Full normalisation (whitespace, punctuation, digits/articles/contractions).

    The official evaluator applies this only to questions whose human answers
    disagree; :func:`question_accuracy` handles that condition.
    """
    return process_digit_article(process_punctuation(_clean_whitespace(text)))


def _as_records(answers: Sequence[Any]) -> list[dict]:
    """Human answers as records: annotation dicts as given, strings with their index."""
    recs = []
    for i, a in enumerate(answers):
        if isinstance(a, Mapping):
            recs.append(dict(a))
        elif isinstance(a, str):
            recs.append({"answer": a, "answer_id": i})
        else:
            raise TypeError(f"human answer #{i} must be a str or an answer dict, got {a!r}")
    return recs


def question_accuracy(answers: Sequence[Any], prediction: str) -> float:
    """Official VQA accuracy of one prediction, in [0, 1] (unrounded).

    Args:
      answers: the human answers, either strings or the annotation file's
        answer dicts (``{"answer": ..., "answer_id": ..., ...}``).
      prediction: the model's answer.
    """
    recs = _as_records(answers)
    if not recs:
        raise ValueError("no human answers")
    for r in recs:
        r["answer"] = _clean_whitespace(r["answer"])
    pred = _clean_whitespace(prediction)
    if len({r["answer"] for r in recs}) > 1:
        for r in recs:
            r["answer"] = process_digit_article(process_punctuation(r["answer"]))
        pred = process_digit_article(process_punctuation(pred))
    accs = []
    for r in recs:
        matches = sum(1 for o in recs if o != r and o["answer"] == pred)
        accs.append(min(1, float(matches) / 3))
    return float(sum(accs)) / len(accs)


def vqa_per_example(targets: Sequence[Any], predictions: Sequence[str]) -> list[float]:
    """Each question's accuracy (x100, unrounded); targets as in :func:`vqa_accuracy`."""
    if len(targets) != len(predictions):
        raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")
    if not targets:
        raise ValueError("no examples to score")
    return [
        100.0 * question_accuracy(t["answers"] if isinstance(t, Mapping) else t, p)
        for t, p in zip(targets, predictions)
    ]


def vqa_accuracy(targets: Sequence[Any], predictions: Sequence[str]) -> dict[str, float]:
    """seqio metric: ``{"vqa_accuracy": 100 * mean accuracy, "vqa_accuracy_low",
    "vqa_accuracy_high"}`` (unrounded; the normal 95% interval of the mean of
    the per-question accuracies, ``locca.stats.mean_ci``).

    Each target is the list of human answers (strings or answer dicts) or a
    dict with an ``"answers"`` list; predictions are answer strings.
    """
    mean, low, high = stats.mean_ci(vqa_per_example(targets, predictions))
    return {"vqa_accuracy": mean, "vqa_accuracy_low": low, "vqa_accuracy_high": high}


def evaluate_vqa(
    annotations: Sequence[Mapping[str, Any]],
    predictions: Mapping[int, str],
    *,
    missing: Sequence[int] = (),
    ndigits: int = 2,
) -> dict[str, Any]:
    """Official-style report over annotation records (in file order).

    Args:
      annotations: records with ``question_id``, ``answers``, ``question_type``,
        ``answer_type`` (validated by the caller; a type of None is left out
        of the per-type breakdown).
      predictions: question_id -> answer string.
      missing: question ids without a prediction; scored 0 and counted.

    Returns:
      ``{"overall", "perAnswerType", "perQuestionType", "perQuestion",
      "num_questions", "num_missing"}``; accuracies in percent rounded as the
      official code rounds them.
    """
    missing_set = set(missing)
    acc_all: list[float] = []
    by_qtype: dict[str, list[float]] = {}
    by_atype: dict[str, list[float]] = {}
    per_question: dict[int, float] = {}
    for ann in annotations:
        qid = ann["question_id"]
        if qid in missing_set:
            acc = 0.0
        else:
            acc = question_accuracy(ann["answers"], predictions[qid])
        acc_all.append(acc)
        if ann.get("question_type") is not None:
            by_qtype.setdefault(ann["question_type"], []).append(acc)
        if ann.get("answer_type") is not None:
            by_atype.setdefault(ann["answer_type"], []).append(acc)
        per_question[qid] = round(100 * acc, ndigits)

    def avg(xs: list[float]) -> float:
        return round(100 * float(sum(xs)) / len(xs), ndigits)

    return {
        "overall": avg(acc_all),
        "perAnswerType": {k: avg(v) for k, v in by_atype.items()},
        "perQuestionType": {k: avg(v) for k, v in by_qtype.items()},
        "perQuestion": per_question,
        "num_questions": len(acc_all),
        "num_missing": len(missing_set),
    }
