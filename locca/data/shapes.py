"""The shapes world: a deterministic, seeded generator of small annotated scenes.

``ShapesWorld(resolution=64, seed=0).scene(index)`` depends only on
``(seed, index)`` (``np.random.default_rng([seed, index])``). A scene is an
RGB uint8 image [H, W, 3] of 1-6 non-overlapping objects (5 shapes x 6
colours x 3 sizes) on a noisy grey background, some large circles/squares
carrying a rendered word, plus everything known about it: a caption, each
object's box (normalised ``[ymin, xmin, ymax, xmax]`` from the drawn pixels'
extent) and description, referring expressions that single out one object,
VQA questions with ten human-style answers, TallyQA-style counting questions,
TextVQA/ST-VQA-style reading questions and OK-VQA-style knowledge questions.

Spatial semantics (used by every relation and extreme): object centres are
the centres of their boxes; "A left of B" means ``cx(A) < cx(B)``, "A above
B" means ``cy(A) < cy(B)``; "the leftmost X" is the X with the smallest
``cx``. The generator only emits a relation, extreme or count when every
object involved is at least ``margin`` (normalised) away from the decision
boundary, so humans and the plain definition agree.

Command line (locca/data/__main__.py): ``python -m locca.data export --format F
--out DIR --num_images N --seed S [--split train|val|test] [--resolution R]``;
``python -m locca.data show --index K`` prints one scene's annotations.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import random
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from locca.data import render
from locca.data.render import COLOUR_NAMES, COLOURS, SHAPES, SIZES

# Three-letter words fit large squares at 64 px; longer ones appear at higher resolutions.
WORDS = (
    "cat", "dog", "sun", "box", "car", "bus", "egg", "hat", "key", "pen", "cup", "toy",
    "owl", "moon", "fish", "tree", "stop", "open", "cake", "boat", "milk", "rain",
)  # fmt: skip
NUMBER_WORDS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
    "nine", "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen",
)  # fmt: skip
RELATIONS = ("left of", "right of", "above", "below")
EXTREMES = ("leftmost", "rightmost", "topmost", "bottommost")
GENERIC_NOUN = "shape"

# Human answer noise: synonyms (accepted variants) and plausible confusions.
COLOUR_SYNONYMS = {
    "purple": ["violet"], "red": ["dark red"], "green": ["dark green"],
    "blue": ["dark blue"], "yellow": ["gold"], "orange": ["dark orange"],
}  # fmt: skip
COLOUR_CONFUSIONS = {"red": ["orange"], "orange": ["red", "yellow"], "yellow": ["orange"],
                     "green": ["blue"], "blue": ["purple"], "purple": ["blue"]}  # fmt: skip
SHAPE_SYNONYMS = {
    "circle": ["round", "oval"], "square": ["rectangle", "box"],
    "triangle": ["triangular"], "star": ["stars"], "diamond": ["rhombus"],
}  # fmt: skip
SHAPE_CONFUSIONS = {"circle": ["square"], "square": ["diamond"], "triangle": ["star"],
                    "star": ["triangle"], "diamond": ["square", "triangle"]}  # fmt: skip
SIDES = {"triangle": 3, "square": 4, "diamond": 4}
FRUITS = {"red": ["apple", "strawberry", "cherry"], "yellow": ["banana", "lemon"],
          "orange": ["orange", "tangerine"], "green": ["lime", "apple", "pear"],
          "purple": ["grape", "plum"], "blue": ["blueberry"]}  # fmt: skip


@dataclasses.dataclass
class Object:
    """One drawn object. ``box`` is normalised [ymin, xmin, ymax, xmax] of its pixels."""

    shape: str
    colour: str
    size: str
    box: list[float]
    description: str
    word: str | None = None
    bbox_px: list[int] = dataclasses.field(default_factory=list)  # [x, y, w, h] pixels
    area_px: int = 0  # number of object pixels (including any text on it)
    polygon: list[float] = dataclasses.field(default_factory=list)  # [x1, y1, ...] pixels

    @property
    def cx(self) -> float:
        return (self.box[1] + self.box[3]) / 2.0

    @property
    def cy(self) -> float:
        return (self.box[0] + self.box[2]) / 2.0


@dataclasses.dataclass
class RefExp:
    text: str
    object_index: int
    box: list[float]
    kind: str  # "attribute" | "extreme" | "relation" | "word"


@dataclasses.dataclass
class Question:
    """VQAv2-style question: ten human answers with realistic disagreement."""

    question: str
    answers: list[str]
    answer_type: str  # "yes/no" | "number" | "other"
    question_type: str  # VQAv2-style prefix, e.g. "how many", "what color is the"
    multiple_choice_answer: str
    answer_confidences: list[str]  # ten of "yes" | "maybe" | "no"


@dataclasses.dataclass
class CountQ:
    question: str
    answer: int
    issimple: bool


@dataclasses.dataclass
class TextQ:
    """TextVQA (ten ``answers``) / ST-VQA (variable ``short_answers``) analogue."""

    question: str
    answers: list[str]
    short_answers: list[str]
    object_index: int


@dataclasses.dataclass
class KnowledgeQ:
    """OK-VQA analogue; ``question_type`` is an OK-VQA category ("one".."ten"/"other")."""

    question: str
    answers: list[str]
    answer_type: str
    question_type: str


@dataclasses.dataclass
class Scene:
    index: int
    image: np.ndarray  # uint8 [H, W, 3]
    caption: str  # the main caption (== captions[0])
    captions: list[str]  # five captions, COCO style
    objects: list[Object]
    refexps: list[RefExp]
    vqa: list[Question]
    counting: list[CountQ]
    text_questions: list[TextQ]
    knowledge: list[KnowledgeQ]
    background: str

    def annotations(self) -> dict:
        """Everything but the image, as plain JSON-serialisable types."""
        d = dataclasses.asdict(self)
        del d["image"]
        return d


# --------------------------------------------------------------------------- phrases


def _desc(attrs: dict, plural: bool = False, noun: str = GENERIC_NOUN) -> str:
    """'small red circle' from a subset of {size, colour, shape} (canonical order)."""
    parts = [attrs[k] for k in ("size", "colour") if k in attrs]
    if "shape" in attrs:
        parts.append(render.SHAPE_PLURALS[attrs["shape"]] if plural else attrs["shape"])
    else:
        parts.append(noun + "s" if plural else noun)
    return " ".join(parts)


def _attrs(o: Object, keys: Sequence[str]) -> dict:
    return {k: getattr(o, k) for k in keys}


@functools.lru_cache(maxsize=4096)
def _fitting_words(shape: str, d: int) -> tuple[tuple[str, int], ...]:
    """(word, scale) for the words legible inside ``shape`` of side d pixels."""
    out = []
    for w in WORDS:
        scale = render.fit_text_scale(w, shape, d)
        if scale is not None:
            out.append((w, scale))
    return tuple(out)


class _Objs(list):
    """The objects of one scene plus a memo of derived facts (pure functions of the objects)."""

    def __init__(self, items):
        super().__init__(items)
        self.memo: dict = {}


def _memoised(kind: str):
    """Memoise a pure method ``f(self, objs, i, exclude)`` on ``objs.memo`` (when present)."""

    def deco(f):
        def wrapper(self, objs, i, exclude=None):
            memo = getattr(objs, "memo", None)
            if memo is None:
                return f(self, objs, i, exclude)
            key = (kind, i, exclude)
            if key not in memo:
                memo[key] = f(self, objs, i, exclude)
            return memo[key]

        wrapper.__doc__ = f.__doc__
        return wrapper

    return deco


def _matches(objs: Sequence[Object], attrs: dict) -> list[int]:
    """Indices of the objects having all the given attribute values (do not mutate)."""
    memo = getattr(objs, "memo", None)
    key = tuple(attrs.items())
    if memo is not None and key in memo:
        return memo[key]
    out = [i for i, o in enumerate(objs) if all(getattr(o, k) == v for k, v in key)]
    if memo is not None:
        memo[key] = out
    return out


_SUBSETS = (
    ("shape",), ("colour",), ("colour", "shape"), ("size", "shape"), ("size",),
    ("size", "colour"), ("size", "colour", "shape"),
)  # fmt: skip


_SUBSETS0 = ((),) + _SUBSETS


def _signed_values(objs: Sequence[Object]) -> dict[str, list[float]]:
    """Per relation/extreme name, each object's coordinate signed so that "o rel a" is
    ``v[a] - v[o] > 0`` and "the <extreme>" minimises ``v`` (memoised per scene)."""
    memo = getattr(objs, "memo", None)
    if memo is not None and "sv" in memo:
        return memo["sv"]
    out = {}
    for name in RELATIONS + EXTREMES:
        s = _rel_sign(name)
        out[name] = [s * _rel_value(o, name) for o in objs]
    if memo is not None:
        memo["sv"] = out
    return out


def _rel_value(o: Object, rel: str) -> float:
    return o.cx if rel in ("left of", "right of", "leftmost", "rightmost") else o.cy


def _rel_sign(rel: str) -> float:
    """+1 when the relation holds for smaller coordinates (left/above)."""
    return 1.0 if rel in ("left of", "above", "leftmost", "topmost") else -1.0


def _relation(o: Object, anchor: Object, rel: str, margin: float) -> bool:
    """o rel anchor with ``margin`` (positive: clearly holds; negative: lenient)."""
    s = _rel_sign(rel)
    return s * (_rel_value(anchor, rel) - _rel_value(o, rel)) > margin


def _join(items: Sequence[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def _a(phrase: str) -> str:
    """Indefinite article: 'an orange star', 'a red circle'."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _num(n: int) -> str:
    return NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else str(n)


# --------------------------------------------------------------------------- world


class ShapesWorld:
    """Deterministic generator of annotated shape scenes.

    Args:
      resolution: image side in pixels (square images).
      seed: world seed; ``scene(i)`` depends only on (seed, i).
      min_objects, max_objects: number of objects requested per scene (fewer
        are kept when rejection sampling cannot place them).
      word_prob: probability that a large enough circle/square carries a word.
      margin: normalised distance that spatial relations must clear.
      num_vqa: VQA questions per scene (at most).
    """

    def __init__(
        self,
        resolution: int = 64,
        seed: int = 0,
        *,
        min_objects: int = 1,
        max_objects: int = 6,
        word_prob: float = 0.8,
        margin: float = 0.05,
        num_vqa: int = 5,
        jpeg_quality: int = 95,
    ):
        if resolution < 32:
            raise ValueError(f"resolution must be >= 32 pixels, got {resolution}")
        if not 1 <= min_objects <= max_objects:
            raise ValueError(
                f"need 1 <= min_objects <= max_objects, got {min_objects}, {max_objects}"
            )
        self.resolution = int(resolution)
        self.seed = int(seed)
        self.min_objects = min_objects
        self.max_objects = max_objects
        self.word_prob = word_prob
        self.margin = margin
        self.num_vqa = num_vqa
        self.jpeg_quality = jpeg_quality

    def __repr__(self) -> str:
        return f"ShapesWorld(resolution={self.resolution}, seed={self.seed})"

    # ----------------------------------------------------------------- scene
    def _params(self) -> tuple:
        """The constructor's arguments as ``(name, value)`` pairs: everything a scene
        depends on besides its index (the render cache key)."""
        names = ("resolution", "seed", "min_objects", "max_objects", "word_prob", "margin",
                 "num_vqa", "jpeg_quality")  # fmt: skip
        return tuple((n, getattr(self, n)) for n in names)

    def scene(self, index: int) -> Scene:
        """Scene ``index`` (a pure function of the world's parameters and the index).

        Rendering costs ~10 ms; jobs that build several tasks or runs over the same
        world (the demo: 3 encoders x the same splits) read the same scenes again,
        so recent scenes are kept (:func:`_cached_scene`) and each call returns its
        own deep copy.
        """
        if index < 0:
            raise ValueError(f"scene index must be >= 0, got {index}")
        return copy.deepcopy(_cached_scene(self._params(), int(index)))

    def _render_scene(self, index: int) -> Scene:
        rng = np.random.default_rng([self.seed, int(index)])
        img, bg_name = render.background(rng, self.resolution)
        py = random.Random(int(rng.integers(0, 2**62)))
        objects = _Objs(self._place_and_draw(img, py))
        refexps = self._refexps(objects, py)
        captions = self._captions(objects, bg_name, py)
        return Scene(
            index=int(index),
            image=img,
            caption=captions[0],
            captions=captions,
            objects=list(objects),
            refexps=refexps,
            vqa=self._vqa(objects, py),
            counting=self._counting(objects, py),
            text_questions=self._text_questions(objects, py),
            knowledge=self._knowledge(objects, py),
            background=bg_name,
        )

    def scenes(self, start: int, stop: int):
        for i in range(start, stop):
            yield self.scene(i)

    # ----------------------------------------------------------------- drawing
    def _place_and_draw(self, img: np.ndarray, py: random.Random) -> list[Object]:
        R = self.resolution
        n = py.randint(self.min_objects, self.max_objects)
        placed: list[tuple[int, int, int]] = []  # (x0, y0, d)
        specs = []
        gap = max(1, R // 32)
        for _ in range(n):
            shape = py.choice(SHAPES)
            colour = py.choice(COLOUR_NAMES)
            wanted = py.choice(SIZES)
            jitter = py.uniform(0.93, 1.07)
            ok = False
            # Rejection sampling; when an object does not fit, try it one size smaller.
            for size in SIZES[: SIZES.index(wanted) + 1][::-1]:
                d = int(round(R * render.SIZE_FRACTION[size] * jitter))
                for _try in range(20):
                    x0 = py.randint(1, R - d - 2)
                    y0 = py.randint(1, R - d - 2)
                    if all(
                        x0 + d + gap <= px
                        or px + pd + gap <= x0
                        or y0 + d + gap <= py_
                        or py_ + pd + gap <= y0
                        for px, py_, pd in placed
                    ):
                        placed.append((x0, y0, d))
                        specs.append((shape, colour, size, x0, y0, d))
                        ok = True
                        break
                if ok:
                    break
        if not specs:  # cannot happen for resolution >= 32, but keep scenes non-empty
            specs.append(("circle", "red", "medium", R // 3, R // 3, int(R * 0.22)))
        pil = Image.fromarray(img)
        objects = []
        for shape, colour, size, x0, y0, d in specs:
            mask = render._shape_mask_cached(shape, d)
            pil.paste(COLOURS[colour], (x0, y0), mask)
            (l, u, r, b), area = render.mask_stats(shape, d)
            word = None
            fitting = _fitting_words(shape, d)
            if fitting and py.random() < self.word_prob:
                word, scale = py.choice(fitting)
                tm = render.text_mask(word, scale)
                tw, th = tm.size
                pil.paste(render.TEXT_FILL[colour], (x0 + (d - tw) // 2, y0 + (d - th) // 2), tm)
            box = [(y0 + u) / R, (x0 + l) / R, (y0 + b) / R, (x0 + r) / R]
            poly = render.shape_polygon(shape, float(x0), float(y0), float(d - 1))
            o = Object(
                shape=shape,
                colour=colour,
                size=size,
                box=box,
                description="",
                word=word,
                bbox_px=[x0 + l, y0 + u, r - l, b - u],
                area_px=area,
                polygon=[round(v, 2) for p in poly for v in p],
            )
            o.description = _desc(_attrs(o, ("size", "colour", "shape")))
            if word is not None:
                o.description += f" with the word {word}"
            objects.append(o)
        img[...] = np.asarray(pil)
        return objects

    # ----------------------------------------------------------------- caption
    def _captions(self, objs: list[Object], bg: str, py: random.Random) -> list[str]:
        """Five holistic captions (COCO has five per image): different templates and orders."""
        groups: dict[tuple[str, str], list[Object]] = {}
        for o in objs:
            groups.setdefault((o.colour, o.shape), []).append(o)
        keys = sorted(groups, key=lambda k: (-len(groups[k]), SHAPES.index(k[1]), k[0]))
        phrases = []
        for k in keys:
            g = groups[k]
            if len(g) == 1:
                o = g[0]
                p = _a(_desc(_attrs(o, ("size", "colour", "shape"))))
                if o.word is not None and py.random() < 0.5:
                    p += f" with the word {o.word}"
            else:
                sizes = {o.size for o in g}
                attrs = {"colour": k[0], "shape": k[1]}
                if len(sizes) == 1:
                    attrs["size"] = g[0].size
                p = _num(len(g)) + " " + _desc(attrs, plural=True)
            phrases.append(p)
        templates = [
            "{b}",
            "a picture of {b}",
            "an image with {b}",
            "{b} on a {bg} background",
            "{there} {b} on a noisy background",
            "a {bg} background with {b}",
        ]
        out = []
        for k, t in enumerate(py.sample(templates, 5)):
            ph = list(phrases)
            if k > 0 and py.random() < 0.5:
                py.shuffle(ph)
            body = _join(ph)
            there = "there is" if body.startswith(("a ", "an ")) else "there are"
            out.append(t.format(b=body, bg=bg, there=there))
        return out

    # ----------------------------------------------------------------- referring
    @_memoised("u")
    def _unique_attr_descs(
        self, objs: list[Object], i: int, exclude: str | None = None
    ) -> list[dict]:
        """Attribute subsets that single out object i (optionally never using ``exclude``)."""
        out = []
        for keys in _SUBSETS:
            if exclude is not None and exclude in keys:
                continue
            a = _attrs(objs[i], keys)
            if _matches(objs, a) == [i]:
                out.append(a)
        return out

    @_memoised("e")
    def _extreme_descs(self, objs: list[Object], i: int, exclude: str | None = None) -> list[tuple]:
        """(extreme, attrs) such that object i is clearly the extreme among matches of attrs."""
        m = self.margin
        sv = _signed_values(objs)
        out = []
        for keys in _SUBSETS0:
            if exclude is not None and exclude in keys:
                continue
            a = _attrs(objs[i], keys)
            group = _matches(objs, a)
            if len(group) < 2:
                continue
            for ext in EXTREMES:
                v = sv[ext]
                vi = v[i] + m
                if all(vi < v[j] for j in group if j != i):
                    out.append((ext, a))
        return out

    @_memoised("R")
    def _relation_all(self, objs: list[Object], i: int, exclude: None = None) -> list[tuple]:
        """(keys, relation, anchor_index) for every attribute subset that, with the relation
        to the anchor, singles out object i (anchors: uniquely describable objects)."""
        m = self.margin
        sv = _signed_values(objs)
        out = []
        for a_idx in range(len(objs)):
            if a_idx == i or not self._unique_attr_descs(objs, a_idx):
                continue
            for rel in RELATIONS:
                v = sv[rel]
                va = v[a_idx]
                if not va - v[i] > m:
                    continue
                for keys in _SUBSETS0:
                    group = _matches(objs, _attrs(objs[i], keys))
                    if all(j == i or j == a_idx or va - v[j] <= -m for j in group):
                        out.append((keys, rel, a_idx))
        return out

    @_memoised("r")
    def _relation_descs(
        self, objs: list[Object], i: int, exclude: str | None = None
    ) -> list[tuple]:
        """(attrs, relation, anchor_index, anchor_attrs) singling out object i, with the
        smallest attribute set (not using ``exclude``) per (anchor, relation)."""
        out = []
        done = set()
        for keys, rel, a_idx in self._relation_all(objs, i):
            if (exclude is not None and exclude in keys) or (rel, a_idx) in done:
                continue
            done.add((rel, a_idx))
            anchor_attrs = self._unique_attr_descs(objs, a_idx)[0]
            out.append((_attrs(objs[i], keys), rel, a_idx, anchor_attrs))
        return out

    def _refexps(self, objs: list[Object], py: random.Random) -> list[RefExp]:
        out = []
        word_counts: dict[str, int] = {}
        for o in objs:
            if o.word is not None:
                word_counts[o.word] = word_counts.get(o.word, 0) + 1
        for i, o in enumerate(objs):
            cands: list[tuple] = [("attribute", a) for a in self._unique_attr_descs(objs, i)[:3]]
            cands += [("extreme", x) for x in self._extreme_descs(objs, i)]
            cands += [("relation", x) for x in self._relation_descs(objs, i)]
            if o.word is not None and word_counts[o.word] == 1:
                cands.append(("word", o.word))
            if not cands:
                continue
            # Up to two expressions per object, preferring different kinds.
            py.shuffle(cands)
            chosen = [cands[0]]
            for c in cands[1:]:
                if c[0] != chosen[0][0]:
                    chosen.append(c)
                    break
            for kind, x in chosen:
                if kind == "attribute":
                    text = "the " + _desc(x)
                elif kind == "extreme":
                    text = f"the {x[0]} {_desc(x[1])}"
                elif kind == "relation":
                    text = f"the {_desc(x[0])} {x[1]} the {_desc(x[3])}"
                else:
                    text = f"the {GENERIC_NOUN} with the word {x}"
                out.append(RefExp(text=text, object_index=i, box=list(o.box), kind=kind))
        return out

    def _unique_ref(
        self, objs: list[Object], i: int, exclude: str, py: random.Random
    ) -> str | None:
        """A phrase ('red circle', 'leftmost shape', 'shape left of the red star') for object i
        that does not mention attribute ``exclude``."""
        u = self._unique_attr_descs(objs, i, exclude)
        e = self._extreme_descs(objs, i, exclude)
        r = self._relation_descs(objs, i, exclude)
        n = len(u) + len(e) + len(r)
        if not n:
            return None
        k = py.randrange(n)
        if k < len(u):
            return _desc(u[k])
        if k < len(u) + len(e):
            ext, a = e[k - len(u)]
            return f"{ext} {_desc(a)}"
        a, rel, _, aa = r[k - len(u) - len(e)]
        return f"{_desc(a)} {rel} the {_desc(aa)}"

    # ----------------------------------------------------------------- answers
    @staticmethod
    def _ten(
        py: random.Random,
        correct: str,
        synonyms: Sequence[str] = (),
        wrong: Sequence[str] = (),
    ) -> tuple[list[str], list[str]]:
        """Ten human answers: mostly ``correct``, some synonyms, a minority wrong."""
        n_wrong = 0
        if wrong:
            r = py.random()
            n_wrong = 0 if r < 0.55 else 1 if r < 0.8 else 2 if r < 0.93 else 3
        n_syn = 0
        if synonyms:
            r = py.random()
            n_syn = 0 if r < 0.5 else 1 if r < 0.8 else 2
        # At least 5 of 10 give the canonical answer, so it is always the majority.
        answers = [py.choice(list(wrong)) for _ in range(n_wrong)]
        answers += [py.choice(list(synonyms)) for _ in range(n_syn)]
        answers += [correct] * (10 - n_wrong - n_syn)
        py.shuffle(answers)
        conf = [
            ("maybe" if py.random() < 0.3 else "yes") if a != correct else
            ("maybe" if py.random() < 0.08 else "yes")
            for a in answers
        ]  # fmt: skip
        return answers, conf

    def _number_answers(self, py: random.Random, n: int):
        wrong = [str(n + 1)] + ([str(n - 1)] if n > 0 else [])
        answers, conf = self._ten(py, str(n), [_num(n)], wrong)
        return answers, conf

    # ----------------------------------------------------------------- VQA
    def _vqa(self, objs: list[Object], py: random.Random) -> list[Question]:
        gens: list[Callable] = [
            self._q_colour, self._q_shape, self._q_exist, self._q_is_colour,
            self._q_relation_yn, self._q_count, self._q_size,
        ]  # fmt: skip
        py.shuffle(gens)
        out: list[Question] = []
        seen = set()
        for g in gens + gens:
            if len(out) >= self.num_vqa:
                break
            q = g(objs, py)
            if q is not None and q.question not in seen:
                seen.add(q.question)
                out.append(q)
        return out

    def _question(self, py, question, qtype, atype, correct, syn=(), wrong=()) -> Question:
        answers, conf = self._ten(py, correct, syn, wrong)
        return Question(question, answers, atype, qtype, correct, conf)

    def _q_colour(self, objs, py):
        i = py.randrange(len(objs))
        ref = self._unique_ref(objs, i, "colour", py)
        if ref is None:
            return None
        c = objs[i].colour
        return self._question(
            py, f"what color is the {ref}?", "what color is the", "other", c,
            COLOUR_SYNONYMS[c], COLOUR_CONFUSIONS[c],
        )  # fmt: skip

    def _q_shape(self, objs, py):
        i = py.randrange(len(objs))
        ref = self._unique_ref(objs, i, "shape", py)
        if ref is None:
            return None
        s = objs[i].shape
        return self._question(
            py, f"what shape is the {ref}?", "what shape is the", "other", s,
            SHAPE_SYNONYMS[s], SHAPE_CONFUSIONS[s],
        )  # fmt: skip

    def _q_size(self, objs, py):
        i = py.randrange(len(objs))
        ref = self._unique_ref(objs, i, "size", py)
        if ref is None:
            return None
        s = objs[i].size
        syn = {"small": ["tiny", "little"], "medium": ["medium sized"], "large": ["big"]}[s]
        wrong = {"small": ["medium"], "medium": ["small", "large"], "large": ["medium"]}[s]
        return self._question(py, f"how big is the {ref}?", "how", "other", s, syn, wrong)

    def _q_exist(self, objs, py):
        if py.random() < 0.5:  # ask about a present combination
            o = py.choice(objs)
            a = {"colour": o.colour, "shape": o.shape}
        else:
            a = {"colour": py.choice(COLOUR_NAMES), "shape": py.choice(SHAPES)}
        yes = bool(_matches(objs, a))
        ans = "yes" if yes else "no"
        return self._question(
            py,
            f"is there {_a(_desc(a))}?",
            "is there a",
            "yes/no",
            ans,
            (),
            ["no" if yes else "yes"],
        )

    def _q_is_colour(self, objs, py):
        i = py.randrange(len(objs))
        ref = self._unique_ref(objs, i, "colour", py)
        if ref is None:
            return None
        c = objs[i].colour if py.random() < 0.5 else py.choice(COLOUR_NAMES)
        ans = "yes" if c == objs[i].colour else "no"
        return self._question(
            py, f"is the {ref} {c}?", "is the", "yes/no", ans, (), ["no" if ans == "yes" else "yes"]
        )

    def _q_relation_yn(self, objs, py):
        if len(objs) < 2:
            return None
        i, j = py.sample(range(len(objs)), 2)
        di, dj = self._unique_attr_descs(objs, i), self._unique_attr_descs(objs, j)
        if not di or not dj:
            return None
        rel = py.choice(RELATIONS)
        m = self.margin
        if _relation(objs[i], objs[j], rel, m):
            ans = "yes"
        elif not _relation(objs[i], objs[j], rel, -m):
            ans = "no"
        else:
            return None
        q = f"is the {_desc(py.choice(di))} {rel} the {_desc(py.choice(dj))}?"
        return self._question(py, q, "is the", "yes/no", ans, (), ["no" if ans == "yes" else "yes"])

    def _q_count(self, objs, py):
        c = self._count_simple(objs, py)
        if c is None:
            return None
        answers, conf = self._number_answers(py, c.answer)
        return Question(c.question, answers, "number", "how many", str(c.answer), conf)

    # ----------------------------------------------------------------- counting
    def _count_simple(self, objs, py) -> CountQ | None:
        keys = py.choice(
            (("shape",), ("colour",), ("size",), ("colour", "shape"), ("size", "shape"))
        )
        if py.random() < 0.75:
            a = _attrs(py.choice(objs), keys)  # usually something present
        else:
            pools = {"shape": SHAPES, "colour": COLOUR_NAMES, "size": SIZES}
            a = {k: py.choice(pools[k]) for k in keys}
        n = len(_matches(objs, a))
        return CountQ(f"how many {_desc(a, plural=True)} are there?", n, True)

    def _count_complex(self, objs, py) -> CountQ | None:
        if len(objs) < 2:
            return None
        a_idx = py.randrange(len(objs))
        descs = self._unique_attr_descs(objs, a_idx)
        if not descs:
            return None
        anchor = py.choice(descs)
        rel = py.choice(RELATIONS)
        keys = py.choice(((), ("shape",), ("colour",), ("size",)))
        side = [o for o in objs if o is not objs[a_idx] and _relation(o, objs[a_idx], rel, 0.0)]
        # Mostly ask about a kind of object that is on the asked side (fewer zero answers).
        a = _attrs(py.choice(side if side and py.random() < 0.75 else objs), keys)
        m = self.margin
        n = 0
        for j in _matches(objs, a):
            if j == a_idx:
                continue
            if _relation(objs[j], objs[a_idx], rel, m):
                n += 1
            elif _relation(objs[j], objs[a_idx], rel, -m):
                return None  # too close to the boundary to count reliably
        return CountQ(f"how many {_desc(a, plural=True)} are {rel} the {_desc(anchor)}?", n, False)

    def _counting(self, objs, py) -> list[CountQ]:
        out: list[CountQ] = []
        seen = set()
        for gen, k in ((self._count_simple, 2), (self._count_complex, 2)):
            for _ in range(k * 2):
                if sum(1 for c in out if c.issimple == (gen == self._count_simple)) >= k:
                    break
                c = gen(objs, py)
                if c is not None and c.question not in seen:
                    seen.add(c.question)
                    out.append(c)
        return out

    # ----------------------------------------------------------------- text reading
    def _text_questions(self, objs, py) -> list[TextQ]:
        out = []
        worded = [i for i, o in enumerate(objs) if o.word is not None]
        for i in worded:
            w = objs[i].word
            if len(worded) == 1 and py.random() < 0.4:
                q = py.choice(("what word is written in the image?", "what does the text say?"))
            else:
                ref = self._unique_ref(objs, i, "word", py)
                if ref is None:
                    continue
                q = f"what word is written on the {ref}?"
            typo = w[:-1] + ("a" if w[-1] != "a" else "e")
            answers, _ = self._ten(py, w, [w.upper(), w.capitalize()], [typo, "unanswerable"])
            short = [w] + ([w.upper()] if py.random() < 0.3 else [])
            out.append(TextQ(q, answers, short, i))
        return out

    # ----------------------------------------------------------------- knowledge
    def _knowledge(self, objs, py) -> list[KnowledgeQ]:
        out = []
        order = list(range(len(objs)))
        py.shuffle(order)
        for i in order[:2]:
            o = objs[i]
            ref = self._unique_ref(objs, i, "shape", py)
            if py.random() < 0.5 and ref is not None:
                if o.shape in SIDES:
                    n = SIDES[o.shape]
                    q = f"how many sides does the {ref} have?"
                    answers, _ = self._ten(py, str(n), [_num(n)], [str(n + 1)])
                elif o.shape == "star":
                    q = f"how many points does the {ref} have?"
                    answers, _ = self._ten(py, "5", ["five"], ["6", "10"])
                else:
                    q = f"how many corners does the {ref} have?"
                    answers, _ = self._ten(py, "0", ["none", "zero"], ["1"])
                out.append(KnowledgeQ(q, answers, "number", "nine"))
            else:
                ref = self._unique_ref(objs, i, "colour", py)
                if ref is None:
                    continue
                fruits = FRUITS[o.colour]
                q = f"what fruit has the same color as the {ref}?"
                wrong = [f for f in ("banana", "cherry", "grape") if f not in fruits][:1]
                answers, _ = self._ten(py, fruits[0], fruits[1:], wrong)
                out.append(KnowledgeQ(q, answers, "other", "five"))
        return out


def scene_to_jpeg(scene: Scene, quality: int = 95) -> bytes:
    """JPEG bytes of the scene image (deterministic for a given libjpeg)."""
    import io

    buf = io.BytesIO()
    Image.fromarray(scene.image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@functools.lru_cache(maxsize=4096)  # ~25 KB a 64 px scene: ~100 MB at most
def _cached_scene(params: tuple, index: int) -> Scene:
    """The rendered scene of a world with these ``ShapesWorld._params()``."""
    return ShapesWorld(**dict(params))._render_scene(index)
