"""Score VQA results against official annotation files (VQAv2, OK-VQA).

    python -m tasks.vqa_eval --questions v2_OpenEnded_mscoco_val2014_questions.json \\
        --annotations v2_mscoco_val2014_annotations.json --results results.json \\
        [--per_question] [--allow_missing]

Files (see ../shared/FORMATS.md):
  * questions: ``{"questions": [{question_id, image_id, question}, ...]}``
    (optional; when given, every annotated question must be in it).
  * annotations: ``{"annotations": [{question_id, question_type, answer_type,
    answers: [{answer, ...} x 10]}, ...]}``. OK-VQA files work too: only the
    ``answer`` field of each answer is scored (not ``raw_answer``).
    TextVQA ``TextVQA_0.5.1_{train,val}.json`` (``{"data": [{question_id,
    answers: [10 x str]}]}``) is scored the same way (no per-type breakdown).
  * results: ``[{"question_id": int, "answer": str}, ...]`` (test-server format).

Prints JSON ``{"overall", "perAnswerType", "perQuestionType"[, "perQuestion"],
"num_questions", "num_missing"}`` with accuracies in percent rounded to two
decimals exactly as the official ``vqaEval.py`` (see tasks/metrics/vqa.py).
Predictions for unknown question ids are an error; missing predictions are an
error unless ``--allow_missing`` (then they score 0 and are counted).
Exit status 2 on bad input, with a message naming the file and record.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from tasks.metrics.files import (
    MetricInputError,
    check_missing,
    index_predictions,
    load_json,
    records_list,
    require,
)
from tasks.metrics.vqa import evaluate_vqa

ANN_FORMAT = 'VQA annotations JSON {"annotations": [{question_id, question_type, answer_type, answers: [{answer}]}]}'  # noqa: E501
TEXTVQA_FORMAT = 'TextVQA JSON {"data": [{question_id: int, answers: [10 x str]}]}'
QUES_FORMAT = 'VQA questions JSON {"questions": [{question_id, image_id, question}]}'
RES_FORMAT = 'VQA results JSON [{"question_id": int, "answer": str}]'


def _textvqa_annotations(path, data) -> list[dict[str, Any]]:
    """TextVQA records -> VQA-style annotations (answers as dicts; no question types)."""
    out = []
    for i, rec in enumerate(records_list(data, path, "data", TEXTVQA_FORMAT)):
        kw = dict(id_field="question_id", index=i)
        qid = require(rec, "question_id", path, types=int, **kw)
        if isinstance(rec, dict) and "answers" not in rec:
            raise MetricInputError(
                f"{path}: record with question_id={qid}: missing required field 'answers' "
                "(the TextVQA test file has none: submit test results to the server)"
            )
        answers = require(rec, "answers", path, types=list, **kw)
        if not all(isinstance(a, str) for a in answers):
            raise MetricInputError(
                f"{path}: record with question_id={qid}: 'answers' must be a list of strings"
            )
        out.append(
            {
                "question_id": qid,
                "answers": [{"answer": a, "answer_id": j + 1} for j, a in enumerate(answers)],
                "question_type": None,
                "answer_type": None,
            }
        )
    return out


def load_annotations(path) -> list[dict[str, Any]]:
    """Validated annotation records (file order); TextVQA files are converted."""
    data = load_json(path, ANN_FORMAT)
    textvqa = isinstance(data, dict) and "annotations" not in data and "data" in data
    if textvqa:
        anns = _textvqa_annotations(path, data)
    else:
        anns = records_list(data, path, "annotations", ANN_FORMAT)
    seen = set()
    for i, ann in enumerate(anns):
        kw = dict(id_field="question_id", index=i)
        qid = require(ann, "question_id", path, types=int, **kw)
        if qid in seen:
            raise MetricInputError(f"{path}: duplicate question_id {qid} in annotations")
        seen.add(qid)
        if not textvqa:  # TextVQA has no question/answer types
            require(ann, "question_type", path, types=str, **kw)
            require(ann, "answer_type", path, types=str, **kw)
        answers = require(ann, "answers", path, types=list, **kw)
        if not answers:
            raise MetricInputError(f"{path}: record with question_id={qid}: empty 'answers'")
        for a in answers:
            if not isinstance(a, dict):
                raise MetricInputError(
                    f"{path}: record with question_id={qid}: each answer must be an object "
                    f'{{"answer": str, ...}}, got {a!r}'
                )
            if not isinstance(a.get("answer"), str):
                raise MetricInputError(
                    f"{path}: record with question_id={qid}: answer {a!r} lacks a string "
                    "field 'answer'"
                )
    return anns


def load_question_ids(path) -> set[int]:
    qs = records_list(load_json(path, QUES_FORMAT), path, "questions", QUES_FORMAT)
    return {require(q, "question_id", path, index=i, types=int) for i, q in enumerate(qs)}


def load_results(path) -> dict[int, str]:
    res = records_list(load_json(path, RES_FORMAT), path, None, RES_FORMAT)
    return index_predictions(res, path, id_field="question_id", value_field="answer")


def run(
    annotations: str,
    results: str,
    questions: str | None = None,
    *,
    per_question: bool = False,
    allow_missing: bool = False,
) -> dict[str, Any]:
    anns = load_annotations(annotations)
    if questions is not None:
        qids = load_question_ids(questions)
        unknown = [a["question_id"] for a in anns if a["question_id"] not in qids]
        if unknown:
            raise MetricInputError(
                f"{questions}: {len(unknown)} annotated question_ids are not in the questions "
                f"file, e.g. {unknown[:10]} (annotations: {annotations})"
            )
    preds = load_results(results)
    missing = check_missing(
        [a["question_id"] for a in anns], preds, results, allow_missing=allow_missing
    )
    report = evaluate_vqa(anns, preds, missing=missing)
    if per_question:
        report["perQuestion"] = {str(k): v for k, v in report["perQuestion"].items()}
    else:
        del report["perQuestion"]
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--questions", help="questions JSON (optional, for validation)")
    p.add_argument("--annotations", required=True, help="annotations JSON")
    p.add_argument("--results", required=True, help="results JSON [{question_id, answer}]")
    p.add_argument("--per_question", action="store_true", help="include every question")
    p.add_argument("--allow_missing", action="store_true", help="score missing ids as wrong")
    args = p.parse_args(argv)
    try:
        report = run(
            args.annotations,
            args.results,
            args.questions,
            per_question=args.per_question,
            allow_missing=args.allow_missing,
        )
    except MetricInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    from locca import cli

    sys.exit(cli.run(main))
