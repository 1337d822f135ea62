"""CIDEr through pycocoevalcap: parity with calling the toolkit directly."""

import shutil

import numpy as np
import pytest

from tasks.metrics import captions

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="java not on PATH")

REFS = [
    ["A dog runs across the grass.", "a brown dog running on a lawn", "Dog, running!"],
    ["Two cats sleep on a red bed.", "cats sleeping on a bed", "two cats lying down"],
]
PREDS = ["a dog running on the grass", "two cats on a bed"]


def _direct(refs, preds):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tok = PTBTokenizer()
    gts = tok.tokenize({i: [{"caption": c} for c in r] for i, r in enumerate(refs)})
    res = tok.tokenize({i: [{"caption": p}] for i, p in enumerate(preds)})
    return (
        Cider().compute_score(gts, res)[0],
        Bleu(4).compute_score(gts, res, verbose=0)[0][3],
        Rouge().compute_score(gts, res)[0],
    )


@needs_java
def test_cider_equals_pycocoevalcap_directly():
    cid, bleu4, rouge = _direct(REFS, PREDS)
    assert captions.cider(REFS, PREDS)["cider"] == pytest.approx(100 * cid, rel=1e-12)
    full = captions.caption_scores(dict(enumerate(REFS)), dict(enumerate(PREDS)))
    assert full["cider"] == pytest.approx(100 * cid, rel=1e-12)
    assert full["bleu4"] == pytest.approx(100 * bleu4, rel=1e-12)
    assert full["rouge_l"] == pytest.approx(100 * rouge, rel=1e-12)
    # a worse caption scores lower
    assert captions.cider(REFS, ["a cat", "a dog"])["cider"] < full["cider"]


@needs_java
def test_tokenizer_lowercases_and_strips_punctuation():
    out = captions.tokenize({7: ["A Dog, running.", ""]})
    assert out == {7: ["a dog running", ""]}


@needs_java
def test_empty_candidates_score_zero_but_keep_document_frequencies():
    refs = {1: ["a dog runs fast"], 2: ["a cat sits still"], 3: ["a bird flies high"]}
    cands = {1: "a dog runs fast", 3: "a bird flies high"}
    with_empty = captions.caption_scores(refs, cands, empty_candidates=[2])
    both = captions.caption_scores(refs, {**cands, 2: ""})
    assert with_empty["cider"] == pytest.approx(both["cider"])
    perfect = captions.caption_scores(refs, {**cands, 2: "a cat sits still"})
    # the empty caption scores 0, the other two are perfect: 2/3 of the all-perfect mean
    assert with_empty["cider"] == pytest.approx(perfect["cider"] * 2 / 3)
    assert with_empty["rouge_l"] == pytest.approx(200 / 3)
    # one image alone: every n-gram is in every reference set, idf 0, CIDEr 0 (as upstream)
    assert captions.cider([["a dog runs fast"]], ["a dog runs fast"])["cider"] == 0.0


THREE_REFS = [
    ["a dog runs on the grass", "a brown dog running"],
    ["two cats sleep on a bed", "cats sleeping on a red bed"],
    ["a bird flies over the sea", "a white bird flying"],
    ["a man rides a bike", "a person riding a bicycle"],
]


@needs_java
def test_per_example_cider_is_pycocoevalcaps_per_image_score_in_target_order():
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    preds = ["a man rides a bike", "a dog", "cats on a bed", "a bird flies over the sea"]
    tok = PTBTokenizer()
    gts = tok.tokenize({i: [{"caption": c} for c in r] for i, r in enumerate(THREE_REFS)})
    res = tok.tokenize({i: [{"caption": p}] for i, p in enumerate(preds)})
    corpus, per_image = Cider().compute_score(gts, res)
    got = captions.cider_per_example(THREE_REFS, preds)
    assert got == pytest.approx([100 * float(v) for v in per_image], rel=1e-12)
    # the last caption is one of its references and the second is nearly empty
    assert max(got) == got[3] and min(got) == got[1]
    out = captions.cider(THREE_REFS, preds)
    assert out["cider"] == pytest.approx(100 * corpus, rel=1e-12)
    sd = float(np.std(got, ddof=1))
    half = 1.959963984540054 * sd / np.sqrt(len(got))
    assert out["cider_low"] == pytest.approx(out["cider"] - half, rel=1e-9)
    assert out["cider_high"] == pytest.approx(out["cider"] + half, rel=1e-9)


def test_missing_java_message(monkeypatch):
    monkeypatch.setattr(captions.shutil, "which", lambda name: None)
    with pytest.raises(captions.JavaNotFoundError, match="apt-get install default-jre-headless"):
        captions.cider(REFS, PREDS)


def test_mismatched_lengths():
    with pytest.raises(ValueError, match="targets"):
        captions.cider(REFS, PREDS[:1])


@needs_java
def test_odd_line_breaks_do_not_shift_captions():
    out = captions.tokenize({1: ["a\rb", "c\u2028d"], 2: ["e f"]})
    assert out == {1: ["a b", "c d"], 2: ["e f"]}
