"""Score ST-VQA (task 3) results with ANLS.

    python -m tasks.anls_eval --annotations train_task_3.json --results results.json
        [--allow_missing] [--per_question]

Files (see ../shared/FORMATS.md):
  * annotations: ``{"data": [{question_id: int, question, answers: [str], ...}]}``
    (``train_task_3.json`` or a held-out part of it; ``test_task_3.json`` has
    no answers -- submit those to the RRC server, see tasks/exports.py).
  * results: ``[{"question_id": int, "answer": str}, ...]``.

Prints JSON ``{"anls", "num_questions", "num_missing"[, "perQuestion"]}``; ANLS
is a fraction in [0, 1] (see tasks/metrics/anls.py). Missing predictions are
an error unless ``--allow_missing`` (then they score 0 and are counted).
Exit status 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys

from tasks.metrics.anls import anls_score
from tasks.metrics.files import (
    MetricInputError,
    check_missing,
    index_predictions,
    load_json,
    records_list,
    require,
)

ANN_FORMAT = 'ST-VQA JSON {"data": [{question_id: int, answers: [str]}]}'
RES_FORMAT = 'results JSON [{"question_id": int, "answer": str}]'


def load_references(path) -> dict[int, list[str]]:
    """question_id -> reference answers, in file order."""
    data = records_list(load_json(path, ANN_FORMAT), path, "data", ANN_FORMAT)
    refs: dict[int, list[str]] = {}
    for i, rec in enumerate(data):
        kw = dict(id_field="question_id", index=i)
        qid = require(rec, "question_id", path, types=int, **kw)
        if not (isinstance(rec, dict) and "answers" in rec):
            raise MetricInputError(
                f"{path}: record with question_id={qid}: missing required field 'answers' "
                "(test_task_3.json has no answers: submit test results to the server)"
            )
        answers = require(rec, "answers", path, types=list, **kw)
        if not answers or not all(isinstance(a, str) for a in answers):
            raise MetricInputError(
                f"{path}: record with question_id={qid}: 'answers' must be a non-empty list "
                f"of strings, got {answers!r}"
            )
        if qid in refs:
            raise MetricInputError(f"{path}: duplicate question_id {qid}")
        refs[qid] = answers
    return refs


def run(annotations: str, results: str, *, allow_missing=False, per_question=False) -> dict:
    refs = load_references(annotations)
    preds = index_predictions(
        records_list(load_json(results, RES_FORMAT), results, None, RES_FORMAT),
        results,
        id_field="question_id",
        value_field="answer",
    )
    missing = set(check_missing(refs, preds, results, allow_missing=allow_missing))
    scores = {q: 0.0 if q in missing else anls_score(preds[q], r) for q, r in refs.items()}
    if not scores:
        raise MetricInputError(f"{annotations}: no questions")
    out = {
        "anls": float(sum(scores.values())) / len(scores),
        "num_questions": len(scores),
        "num_missing": len(missing),
    }
    if per_question:
        out["perQuestion"] = {str(q): s for q, s in scores.items()}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--annotations", required=True, help="ST-VQA task 3 JSON with answers")
    p.add_argument("--results", required=True, help="results JSON [{question_id, answer}]")
    p.add_argument("--allow_missing", action="store_true", help="score missing ids as 0")
    p.add_argument("--per_question", action="store_true", help="include every question")
    args = p.parse_args(argv)
    try:
        report = run(
            args.annotations,
            args.results,
            allow_missing=args.allow_missing,
            per_question=args.per_question,
        )
    except MetricInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    from locca import cli

    sys.exit(cli.run(main))
