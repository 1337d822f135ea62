"""Tests of the shapes-world generator.

The checks here are written independently of the generator: boxes are
checked against raw pixel colours, and referring expressions, counting and
VQA questions are parsed from their text and evaluated over the objects with
the documented spatial semantics (box centres, strict comparison).
"""

import json
import re

import numpy as np
import pytest

from locca.data.shapes import ShapesWorld

SHAPE_NOUNS = {
    "circle": "circle", "square": "square", "triangle": "triangle", "star": "star",
    "diamond": "diamond", "circles": "circle", "squares": "square", "triangles": "triangle",
    "stars": "star", "diamonds": "diamond", "shape": None, "shapes": None,
}  # fmt: skip
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
SIZES = ("small", "medium", "large")
RELS = ("left of", "right of", "above", "below")
EXTS = ("leftmost", "rightmost", "topmost", "bottommost")
RGB = {
    "red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 70, 225),
    "yellow": (240, 215, 20), "purple": (140, 40, 185), "orange": (250, 125, 15),
}  # fmt: skip

N_SCENES = 120


@pytest.fixture(scope="module")
def scenes64():
    w = ShapesWorld(resolution=64, seed=7)
    return [w.scene(i) for i in range(N_SCENES)]


@pytest.fixture(scope="module")
def scenes224():
    w = ShapesWorld(resolution=224, seed=3)
    return [w.scene(i) for i in range(20)]


# ----------------------------------------------------------------- an independent parser


def centre(o):
    y0, x0, y1, x1 = o.box
    return (x0 + x1) / 2, (y0 + y1) / 2


def holds(o, anchor, rel, margin=0.0):
    """o rel anchor, comparing box centres; ``margin`` > 0 demands a clear gap, < 0 is
    lenient (counts near-ties as holding)."""
    (ox, oy), (ax, ay) = centre(o), centre(anchor)
    d = {"left of": ax - ox, "right of": ox - ax, "above": ay - oy, "below": oy - ay}[rel]
    return d > margin


def parse_np(words):
    """['small', 'red', 'circle'] -> predicate dict; raises on anything unexpected."""
    pred = {}
    words = list(words)
    assert words, "empty noun phrase"
    noun = words.pop()
    assert noun in SHAPE_NOUNS, f"unexpected noun {noun!r}"
    if SHAPE_NOUNS[noun]:
        pred["shape"] = SHAPE_NOUNS[noun]
    for w in words:
        if w in COLOURS:
            pred["colour"] = w
        elif w in SIZES:
            pred["size"] = w
        else:
            raise AssertionError(f"unexpected word {w!r} in {words}")
    return pred


def filt(objs, pred):
    return [i for i, o in enumerate(objs) if all(getattr(o, k) == v for k, v in pred.items())]


def split_rel(text):
    for rel in RELS:
        key = f" {rel} the "
        if key in text:
            a, b = text.split(key, 1)
            return a, rel, b
    return text, None, None


def resolve(objs, phrase, margin=0.0):
    """Indices of objects a definite phrase (without leading 'the') refers to.

    With ``margin`` < 0 relations and extremes are lenient (near-ties included)."""
    m = re.fullmatch(r"shape with the word (\w+)", phrase)
    if m:
        return [i for i, o in enumerate(objs) if o.word == m.group(1)]
    head, rel, anchor_text = split_rel(phrase)
    words = head.split()
    ext = None
    if words and words[0] in EXTS:
        ext = words.pop(0)
    cands = filt(objs, parse_np(words))
    if rel is not None:
        anchors = resolve(objs, anchor_text, margin)
        assert len(anchors) == 1, f"anchor {anchor_text!r} is not unique"
        a = anchors[0]
        cands = [i for i in cands if i != a and holds(objs[i], objs[a], rel, margin)]
    if ext is not None:
        if not cands:
            return []
        axis = 0 if ext in ("leftmost", "rightmost") else 1
        sign = 1 if ext in ("leftmost", "topmost") else -1
        vals = [sign * centre(objs[i])[axis] for i in cands]
        best = min(vals)
        cands = [i for i, v in zip(cands, vals) if v <= best + max(0.0, -margin)]
    return cands


def the(objs, text, margin=0.0):
    assert text.startswith("the "), text
    return resolve(objs, text[4:], margin)


# ----------------------------------------------------------------- tests


def test_determinism_same_seed_identical_bytes():
    a, b = ShapesWorld(64, seed=11), ShapesWorld(64, seed=11)
    for i in (0, 5, 17):
        sa, sb = a.scene(i), b.scene(i)
        assert sa.image.tobytes() == sb.image.tobytes()
        assert json.dumps(sa.annotations(), sort_keys=True) == json.dumps(
            sb.annotations(), sort_keys=True
        )
    # Order independence: scene(5) does not depend on what was generated before.
    fresh = ShapesWorld(64, seed=11).scene(5)
    assert fresh.image.tobytes() == a.scene(5).image.tobytes()


def test_different_seeds_and_indices_differ():
    s0, s1 = ShapesWorld(64, seed=0).scene(0), ShapesWorld(64, seed=1).scene(0)
    assert s0.image.tobytes() != s1.image.tobytes()
    w = ShapesWorld(64, seed=0)
    assert w.scene(1).image.tobytes() != w.scene(2).image.tobytes()


def test_scene_structure(scenes64):
    for s in scenes64:
        assert s.image.dtype == np.uint8 and s.image.shape == (64, 64, 3)
        assert 1 <= len(s.objects) <= 6
        assert isinstance(s.caption, str) and s.caption
        for o in s.objects:
            y0, x0, y1, x1 = o.box
            assert 0 <= y0 < y1 <= 1 and 0 <= x0 < x1 <= 1
            assert o.description.startswith(f"{o.size} {o.colour} {o.shape}")
        for q in s.vqa:
            assert len(q.answers) == 10 and q.answer_type in ("yes/no", "number", "other")
            assert len(q.answer_confidences) == 10
        for q in s.knowledge:
            assert len(q.answers) == 10
        for q in s.text_questions:
            assert len(q.answers) == 10 and 1 <= len(q.short_answers)


def test_variety(scenes64):
    objs = [o for s in scenes64 for o in s.objects]
    assert {o.shape for o in objs} == {"circle", "square", "triangle", "star", "diamond"}
    assert {o.colour for o in objs} == set(COLOURS)
    assert {o.size for o in objs} == set(SIZES)
    assert {len(s.objects) for s in scenes64} >= {1, 2, 3, 4, 5}
    assert sum(o.word is not None for o in objs) >= 5
    assert len({s.caption.split(" ")[0] for s in scenes64}) >= 3  # template variety
    kinds = {r.kind for s in scenes64 for r in s.refexps}
    assert kinds == {"attribute", "extreme", "relation", "word"}


def _check_boxes(scene):
    img = scene.image.astype(np.int32)
    H, W, _ = img.shape
    for colour, rgb in RGB.items():
        exact = np.all(img == np.array(rgb), axis=-1)  # [H, W]
        covered = np.zeros((H, W), bool)
        for o in scene.objects:
            if o.colour != colour:
                continue
            y0, x0, y1, x1 = (
                round(o.box[0] * H),
                round(o.box[1] * W),
                round(o.box[2] * H),
                round(o.box[3] * W),
            )
            covered[y0:y1, x0:x1] = True
            inside = exact[y0:y1, x0:x1]
            assert inside.sum() >= 0.3 * inside.size, f"{o.description}: colour missing in box"
            ys, xs = np.nonzero(inside)
            # The box is the tight extent of the object's pixels.
            assert (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1) == (
                0, 0, y1 - y0, x1 - x0,
            ), f"{o.description}: box not tight"  # fmt: skip
        assert exact[~covered].sum() == 0, f"{colour} pixels outside all {colour} boxes"


def test_boxes_agree_with_pixels(scenes64, scenes224):
    for s in scenes64 + scenes224:
        _check_boxes(s)


def test_background_never_uses_object_colours(scenes64):
    for s in scenes64[:10]:
        img = s.image.astype(np.int32)
        spread = img.max(-1) - img.min(-1)
        # Saturated pixels exist only inside object boxes.
        mask = spread > 60
        for o in s.objects:
            y0, x0, y1, x1 = (round(v * 64) for v in o.box)
            mask[y0:y1, x0:x1] = False
        assert not mask.any()


def test_refexps_unique(scenes64, scenes224):
    n = 0
    for s in scenes64 + scenes224:
        for r in s.refexps:
            got = the(s.objects, r.text)
            assert got == [r.object_index], f"scene {s.index}: {r.text!r} -> {got}"
            # Robust: still unique when near-ties count as both, or when relations must
            # hold with a clear gap (4% of the image), so humans would agree.
            for m in (-0.04, 0.04):
                got = the(s.objects, r.text, m)
                assert got == [r.object_index], f"scene {s.index}: {r.text!r} @{m} -> {got}"
            assert r.box == s.objects[r.object_index].box
            n += 1
    assert n > 100


def test_counting_consistent(scenes64):
    n_simple = n_complex = 0
    for s in scenes64:
        for c in s.counting:
            m = re.fullmatch(r"how many (.+) are there\?", c.question)
            if m:
                got = len(filt(s.objects, parse_np(m.group(1).split())))
                assert c.issimple
                n_simple += 1
            else:
                m = re.fullmatch(r"how many (.+?) are (left of|right of|above|below) the (.+)\?",
                                 c.question)  # fmt: skip
                assert m, c.question
                anchors = resolve(s.objects, m.group(3))
                assert len(anchors) == 1
                a = anchors[0]
                counts = {
                    sum(
                        1
                        for i in filt(s.objects, parse_np(m.group(1).split()))
                        if i != a and holds(s.objects[i], s.objects[a], m.group(2), margin)
                    )
                    for margin in (-0.04, 0.0, 0.04)
                }
                assert len(counts) == 1, f"count depends on near-ties: {c.question}"
                got = counts.pop()
                assert not c.issimple
                n_complex += 1
            assert got == c.answer, (s.index, c)
    assert n_simple > 30 and n_complex > 10


def _majority(answers):
    vals, counts = np.unique(answers, return_counts=True)
    return vals[np.argmax(counts)], counts.max()


def test_vqa_answers_consistent(scenes64):
    seen_types = set()
    disagreement = 0
    for s in scenes64:
        objs = s.objects
        for q in s.vqa:
            seen_types.add(q.question_type)
            maj, cnt = _majority(q.answers)
            assert maj == q.multiple_choice_answer and cnt >= 4, q
            disagreement += cnt < 10
            t = q.question
            if m := re.fullmatch(r"what color is the (.+)\?", t):
                (i,) = resolve(objs, m.group(1))
                assert objs[i].colour == maj
            elif m := re.fullmatch(r"what shape is the (.+)\?", t):
                (i,) = resolve(objs, m.group(1))
                assert objs[i].shape == maj
            elif m := re.fullmatch(r"how big is the (.+)\?", t):
                (i,) = resolve(objs, m.group(1))
                assert objs[i].size == maj
            elif m := re.fullmatch(r"is there an? (.+)\?", t):
                assert maj == ("yes" if filt(objs, parse_np(m.group(1).split())) else "no")
            elif m := re.fullmatch(r"how many (.+) are there\?", t):
                assert q.answer_type == "number"
                assert int(maj) == len(filt(objs, parse_np(m.group(1).split())))
            elif m := re.fullmatch(r"is the (.+) (red|green|blue|yellow|purple|orange)\?", t):
                (i,) = resolve(objs, m.group(1))
                assert maj == ("yes" if objs[i].colour == m.group(2) else "no")
            elif m := re.fullmatch(r"is the (.+?) (left of|right of|above|below) the (.+)\?", t):
                (i,) = resolve(objs, m.group(1))
                (j,) = resolve(objs, m.group(3))
                assert maj == ("yes" if holds(objs[i], objs[j], m.group(2)) else "no")
            else:
                raise AssertionError(f"unparsed question {t!r}")
    assert {"what color is the", "how many", "is there a", "is the"} <= seen_types
    assert disagreement > 0  # realistic human disagreement exists


def test_text_and_knowledge_questions(scenes64, scenes224):
    n_text = 0
    for s in scenes64 + scenes224:
        for q in s.text_questions:
            word = s.objects[q.object_index].word
            assert word is not None and _majority(q.answers)[0] == word
            assert q.short_answers[0] == word
            if m := re.fullmatch(r"what word is written on the (.+)\?", q.question):
                assert resolve(s.objects, m.group(1)) == [q.object_index]
            n_text += 1
        for q in s.knowledge:
            maj = _majority(q.answers)[0]
            if m := re.fullmatch(r"how many sides does the (.+) have\?", q.question):
                (i,) = resolve(s.objects, m.group(1))
                assert int(maj) == {"triangle": 3, "square": 4, "diamond": 4}[s.objects[i].shape]
            elif m := re.fullmatch(r"what fruit has the same color as the (.+)\?", q.question):
                (i,) = resolve(s.objects, m.group(1))
                assert q.question_type == "five" and maj
    assert n_text >= 5


def test_works_at_224(scenes224):
    s = scenes224[0]
    assert s.image.shape == (224, 224, 3)
    assert any(o.word for sc in scenes224 for o in sc.objects if o.size == "medium")


def test_bad_arguments():
    with pytest.raises(ValueError, match="resolution"):
        ShapesWorld(resolution=8)
    with pytest.raises(ValueError, match="index"):
        ShapesWorld().scene(-1)


def test_words_drawn_inside_their_objects(scenes64, scenes224):
    n = 0
    for s in scenes64 + scenes224:
        img = s.image.astype(np.int32)
        H = img.shape[0]
        # Text is pure black or white; the background stays in [48, 210].
        text = np.all(img == 0, -1) | np.all(img == 255, -1)
        allowed = np.zeros(text.shape, bool)
        for o in s.objects:
            y0, x0, y1, x1 = (round(v * H) for v in o.box)
            inside = text[y0:y1, x0:x1].sum()
            if o.word is None:
                assert inside == 0, f"text on an object without a word: {o.description}"
            else:
                assert inside > 0, f"word {o.word!r} not drawn on {o.description}"
                allowed[y0:y1, x0:x1] = True
                n += 1
        assert not (text & ~allowed).any(), f"scene {s.index}: text outside worded objects"
    assert n >= 10
