"""Caption metrics through the COCO caption toolkit (pycocoevalcap).

CIDEr here is CIDEr-D exactly as ``pycocoevalcap`` computes it for the COCO
leaderboard: both references and candidates are tokenised by the Stanford
PTBTokenizer (Java, ``-preserveLines -lowerCase``, punctuation removed), then
``Cider()`` (n = 4, sigma = 6, document frequencies from the references of the
evaluated set). Scores are reported x100 as in papers. BLEU-4 and ROUGE-L come
from the same toolkit on the same tokens (also x100). METEOR and SPICE are not
computed (slow, extra Java dependencies).
"""

from __future__ import annotations

import contextlib
import shutil
import sys
from collections.abc import Mapping, Sequence

from locca import stats

__all__ = [
    "JavaNotFoundError",
    "require_java",
    "tokenize",
    "caption_scores",
    "cider",
    "cider_per_example",
]

_JAVA_HELP = (
    "`java` was not found on PATH; pycocoevalcap's PTBTokenizer (needed for CIDEr) runs the "
    "Stanford CoreNLP jar with Java. Install a Java runtime, e.g. "
    "`apt-get install default-jre-headless` (Debian/Ubuntu) or `conda install openjdk`, "
    "and make sure `java -version` works."
)


_LINE_BREAKS = {ord(c): " " for c in "\r\x0b\x0c\x85\u2028\u2029"}


class JavaNotFoundError(RuntimeError):
    """Raised when the Java runtime needed by the PTB tokenizer is missing."""


def require_java() -> str:
    """Path of the ``java`` executable, or JavaNotFoundError explaining how to install it."""
    java = shutil.which("java")
    if java is None:
        raise JavaNotFoundError(_JAVA_HELP)
    return java


def tokenize(captions: Mapping[object, Sequence[str]]) -> dict[object, list[str]]:
    """PTB-tokenise ``{key: [caption, ...]}`` with pycocoevalcap's tokenizer (Java)."""
    require_java()
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    # Java would also break lines at these; upstream then misaligns captions and tokens.
    data = {
        k: [{"caption": c.translate(_LINE_BREAKS)} for c in caps] for k, caps in captions.items()
    }
    with contextlib.redirect_stdout(sys.stderr):
        return PTBTokenizer().tokenize(data)


def caption_scores(
    references: Mapping[object, Sequence[str]],
    candidates: Mapping[object, str],
    *,
    bleu_rouge: bool = True,
    empty_candidates: Sequence[object] = (),
    per_example: bool = False,
) -> dict[str, float]:
    """Corpus scores of one candidate per key against its references (x100).

    Args:
      references: key -> raw reference captions (at least one each).
      candidates: key -> raw candidate caption; keys must equal the reference
        keys minus ``empty_candidates``.
      bleu_rouge: also compute BLEU-4 and ROUGE-L.
      empty_candidates: keys scored with an empty candidate (missing
        predictions); their references still count in the document frequencies.
      per_example: also return ``"cider_per_example"``, each key's CIDEr-D
        (x100, in the order of ``references``) with the document frequencies
        of the whole set; their mean is the corpus CIDEr (pycocoevalcap's
        score is that mean).

    Returns:
      ``{"cider": ..., "bleu4": ..., "rouge_l": ...}`` (the last two only when
      ``bleu_rouge``), each 100 x the pycocoevalcap score.
    """
    if not references:
        raise ValueError("no captions to score")
    empty = set(empty_candidates)
    if set(candidates) | empty != set(references) or set(candidates) & empty:
        raise ValueError("candidate keys (plus empty_candidates) must equal reference keys")
    for k, refs in references.items():
        if len(refs) == 0:
            raise ValueError(f"no reference captions for {k!r}")
    from pycocoevalcap.cider.cider import Cider

    # One Java run for both sides (COCOEvalCap runs two): the tokenizer works line by
    # line, so the tokens are the same and the JVM starts once.
    both = {("ref", k): list(v) for k, v in references.items()}
    both.update({("cand", k): [c] for k, c in candidates.items()})
    tokens = tokenize(both)
    gts = {k: tokens[("ref", k)] for k in references}
    res = {k: [""] if k in empty else tokens[("cand", k)] for k in references}
    with contextlib.redirect_stdout(sys.stderr):
        corpus, per_key = Cider().compute_score(gts, res)
        out = {"cider": 100.0 * float(corpus)}
        if per_example:
            # pycocoevalcap scores the keys of gts in its own (insertion) order.
            out["cider_per_example"] = [100.0 * float(v) for v in per_key]
        if bleu_rouge:
            from pycocoevalcap.bleu.bleu import Bleu
            from pycocoevalcap.rouge.rouge import Rouge

            bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
            out["bleu4"] = 100.0 * float(bleu[3])
            out["rouge_l"] = 100.0 * float(Rouge().compute_score(gts, res)[0])
    return out


def _references(target) -> list[str]:
    if isinstance(target, Mapping):
        target = target["answers"]
    return [target] if isinstance(target, str) else list(target)


def cider_per_example(targets: Sequence, predictions: Sequence[str]) -> list[float]:
    """Each example's CIDEr-D (x100), document frequencies from all ``targets``;
    the mean is :func:`cider`. Targets as in :func:`cider`."""
    if len(targets) != len(predictions):
        raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")
    refs = {i: _references(t) for i, t in enumerate(targets)}
    cands = dict(enumerate(predictions))
    return caption_scores(refs, cands, bleu_rouge=False, per_example=True)["cider_per_example"]


def cider(targets: Sequence, predictions: Sequence[str]) -> dict[str, float]:
    """seqio metric: ``{"cider": 100 * CIDEr-D, "cider_low", "cider_high"}`` over the
    evaluated set, with the normal 95% interval of the mean of the per-example
    scores (``locca.stats.mean_ci``; document frequencies held at the evaluated
    set's, so the interval is the evaluation sample's noise, not training noise).

    Each target is a list of reference captions, one caption, or a dict with an
    ``"answers"`` list of references (tasks.registry.text_postprocessor).
    """
    scores = cider_per_example(targets, predictions)
    mean, low, high = stats.mean_ci(scores)
    return {"cider": mean, "cider_low": low, "cider_high": high}
