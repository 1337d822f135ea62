"""Score TallyQA results (counting accuracy, overall / simple / complex).

    python -m tasks.tally_eval --annotations test.json --results results.json [--allow_missing]

Files (see ../shared/FORMATS.md):
  * annotations: TallyQA ``test.json`` / ``train.json``: a JSON array of
    ``{question_id: int, answer: int, issimple: bool (optional), image, ...}``.
  * results: ``[{"question_id": int, "answer": str | int}, ...]``; answers are
    read as counts by tasks/metrics/tally.py (``"2"``, ``"two"``, ``"none"``).

Prints JSON ``{"overall", "simple", "complex", "num_questions", "num_simple",
"num_complex", "num_unparsed", "num_missing"}`` (accuracies in percent;
simple/complex only when the file has ``issimple``). Missing predictions are an
error unless ``--allow_missing`` (scored wrong and counted). Exit 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys

from tasks.metrics.files import (
    MetricInputError,
    check_missing,
    index_predictions,
    load_json,
    records_list,
    require,
)
from tasks.metrics.tally import tally_report

ANN_FORMAT = "TallyQA JSON array [{question_id: int, answer: int, issimple: bool}]"
RES_FORMAT = 'results JSON [{"question_id": int, "answer": str | int}]'


def load_annotations(path) -> dict[int, tuple[int, bool | None]]:
    """question_id -> (answer, issimple or None), in file order."""
    recs = records_list(load_json(path, ANN_FORMAT), path, None, ANN_FORMAT)
    out: dict[int, tuple[int, bool | None]] = {}
    for i, rec in enumerate(recs):
        kw = dict(id_field="question_id", index=i)
        qid = require(rec, "question_id", path, types=int, **kw)
        answer = require(rec, "answer", path, types=int, **kw)
        simple = rec.get("issimple")
        if simple is not None and not isinstance(simple, bool):
            raise MetricInputError(
                f"{path}: record with question_id={qid}: 'issimple' must be true/false, "
                f"got {simple!r}"
            )
        if qid in out:
            raise MetricInputError(f"{path}: duplicate question_id {qid}")
        out[qid] = (answer, simple)
    return out


def run(annotations: str, results: str, *, allow_missing: bool = False) -> dict:
    gts = load_annotations(annotations)
    preds = index_predictions(
        records_list(load_json(results, RES_FORMAT), results, None, RES_FORMAT),
        results,
        id_field="question_id",
        value_field="answer",
        value_types=(str, int),
    )
    missing = check_missing(gts, preds, results, allow_missing=allow_missing)
    qids = list(gts)
    rep = tally_report(
        [gts[q][0] for q in qids], [preds.get(q) for q in qids], [gts[q][1] for q in qids]
    )
    rep["num_missing"] = len(missing)
    return rep


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--annotations", required=True, help="TallyQA test.json / train.json")
    p.add_argument("--results", required=True, help="results JSON [{question_id, answer}]")
    p.add_argument("--allow_missing", action="store_true", help="score missing ids as wrong")
    args = p.parse_args(argv)
    try:
        report = run(args.annotations, args.results, allow_missing=args.allow_missing)
    except MetricInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    from locca import cli

    sys.exit(cli.run(main))
