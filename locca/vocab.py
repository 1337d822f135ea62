"""SentencePiece vocabularies with location tokens.

Conventions (T5): id 0 = pad (also the decoder BOS), 1 = eos, 2 = unk.
Location tokens `<loc0000>`..`<loc1023>` (PaliGemma style, 1024 bins) and a
mask token `<mask>` (CapPa parallel prediction) are user-defined pieces, so
each tokenises to exactly one id wherever it appears.

Command line:
  python -m locca.vocab train --out PATH [--vocab_size N] [--corpus FILE]
  python -m locca.vocab extend --model T5.model --out PATH

`default_vocabulary()` returns the shapes-world vocabulary, trained on first
use into `$LOCCA_CACHE` (default `~/.cache/locca`). Training is deterministic
(single thread, fixed seed, no input shuffling): the same corpus gives a
byte-identical model file.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import logging
import os
import pathlib
import tempfile
from collections.abc import Callable, Iterable, Sequence

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
NUM_LOC_TOKENS = 1024
MASK_TOKEN = "<mask>"
# Number of ordinary (learned) pieces of the default shapes vocabulary.
DEFAULT_VOCAB_SIZE = 1000
# Scenes of the shapes world whose text forms the default corpus.
DEFAULT_CORPUS_SCENES = 200
DEFAULT_RESOLUTION = 64
_CORPUS_VERSION = "v1"  # bump when the corpus recipe changes

log = logging.getLogger(__name__)


def loc_token(i: int) -> str:
    """The location token for bin `i` (0..1023): `<loc0042>`."""
    return f"<loc{i:04d}>"


def special_pieces() -> list[str]:
    """User-defined pieces appended to every locca vocabulary, in id order."""
    return [loc_token(i) for i in range(NUM_LOC_TOKENS)] + [MASK_TOKEN]


def cache_dir() -> pathlib.Path:
    """`$LOCCA_CACHE`, default `~/.cache/locca`."""
    return pathlib.Path(os.environ.get("LOCCA_CACHE", "~/.cache/locca")).expanduser()


# ------------------------------------------------------------------ corpus


def shapes_corpus(num_scenes: int = DEFAULT_CORPUS_SCENES, seed: int = 0) -> list[str]:
    """Text of the shapes world: captions, descriptions, questions, answers,
    referring expressions, rendered words; plus the integers 0..999 (boxes as
    text). Deterministic in (num_scenes, seed)."""
    from locca.data.shapes import ShapesWorld  # local: the vocab has no hard dep on it

    world = ShapesWorld(resolution=DEFAULT_RESOLUTION, seed=seed)
    lines: list[str] = []
    for i in range(num_scenes):
        s = world.scene(i)
        lines.extend(getattr(s, "captions", [s.caption]))
        for o in s.objects:
            lines.append(o.description)
            if getattr(o, "word", None):
                lines.append(o.word)
        for r in s.refexps:
            lines.append(r.text)
        for q in (
            list(s.vqa) + list(getattr(s, "text_questions", [])) + list(getattr(s, "knowledge", []))
        ):
            lines.append(q.question)
            lines.extend(str(a) for a in q.answers)
        for c in s.counting:
            lines.append(c.question)
            lines.append(str(c.answer))
    return [ln.strip() for ln in lines if ln and ln.strip()]


def _generic_lines() -> list[str]:
    """Lines every locca vocabulary should cover: numbers, prompts, task words."""
    lines = [" ".join(str(n) for n in range(k, min(k + 10, 1000))) for k in range(0, 1000, 10)]
    lines += ["caption en", "answer en", "locate en", "ARef :", "GCap :"] * 100  # prompts
    lines += [
        "yes no",
        "zero one two three four five six seven eight nine ten",
        "A B C D E F G H I J K L M N O P Q R S T U V W X Y Z",
        "a b c d e f g h i j k l m n o p q r s t u v w x y z",
        ". , ? ! ' \" : ; - ( ) / & % + = # @ _",
    ]
    return lines


# ------------------------------------------------------------------ training


def train_model(
    lines: Sequence[str],
    *,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    seed: int = 0,
    model_type: str = "bpe",
) -> bytes:
    """Trains a SentencePiece model and returns its serialized proto.

    `vocab_size` counts the learned pieces; the final vocabulary also holds
    pad/eos/unk, the 1025 special pieces (ids 3..1027) and 256 byte-fallback
    pieces (so no text maps to unk). The size is a soft
    limit (a small corpus yields fewer pieces rather than an error).
    Deterministic: one thread, fixed seed, no sentence sampling/shuffling.
    The corpus is extended with the integers 0..999 (boxes written as text)
    and the task prompts.
    """
    lines = [ln for ln in lines if ln] + _generic_lines()
    spm.set_random_generator_seed(seed)
    specials = special_pieces()
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=out,
        model_type=model_type,
        # BPE needs room for every character; ask at least that many pieces.
        vocab_size=max(vocab_size, len(set("".join(lines))) + 1) + 3 + len(specials) + 256,
        hard_vocab_limit=False,
        user_defined_symbols=specials,
        pad_id=PAD_ID,
        eos_id=EOS_ID,
        unk_id=UNK_ID,
        bos_id=-1,
        pad_piece="<pad>",
        eos_piece="</s>",
        unk_piece="<unk>",
        character_coverage=1.0,
        byte_fallback=True,  # any other character -> UTF-8 byte pieces, never unk
        num_threads=1,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        max_sentence_length=4192,
        minloglevel=2,
    )
    return out.getvalue()


def extend_model(model_proto: bytes, pieces: Iterable[str] | None = None) -> bytes:
    """Appends user-defined pieces (default: location tokens + mask) to an
    existing SentencePiece model; existing pieces keep their ids. Pieces that
    already exist are not duplicated."""
    m = sentencepiece_model_pb2.ModelProto()
    m.ParseFromString(model_proto)
    existing = {p.piece for p in m.pieces}
    for piece in special_pieces() if pieces is None else pieces:
        if piece in existing:
            continue
        new = m.pieces.add()
        new.piece = piece
        new.score = 0.0
        new.type = sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED
        existing.add(piece)
    return m.SerializeToString(deterministic=True)


def _atomic_write(path: pathlib.Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)  # atomic on POSIX; concurrent writers write equal bytes
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def make_vocabulary(model_path: str | os.PathLike):
    """seqio.SentencePieceVocabulary over an existing model file."""
    import seqio

    return seqio.SentencePieceVocabulary(str(model_path), extra_ids=0)


def _recipe_digest() -> str:
    """Hash of everything the default vocabulary depends on: this file and the
    shapes-world sources (cheap: no scene is generated to check the cache)."""
    import locca.data.render as render_mod
    import locca.data.shapes as shapes_mod

    h = hashlib.sha256()
    h.update(f"{_CORPUS_VERSION}:{DEFAULT_VOCAB_SIZE}:{DEFAULT_CORPUS_SCENES}".encode())
    for mod in (shapes_mod, render_mod):
        h.update(pathlib.Path(mod.__file__).read_bytes())
    h.update(pathlib.Path(__file__).read_bytes())
    return h.hexdigest()[:16]


def default_vocabulary_path() -> pathlib.Path:
    """Path of the cached default shapes vocabulary (building it if absent).

    Safe under concurrent processes: each builder writes a temporary file and
    renames it into place; builders produce identical bytes."""
    path = cache_dir() / f"shapes_spm_{DEFAULT_VOCAB_SIZE}_{_recipe_digest()}.model"
    if not path.exists():
        log.info("training the default shapes vocabulary into %s", path)
        _atomic_write(path, train_model(shapes_corpus(), vocab_size=DEFAULT_VOCAB_SIZE))
    return path


@functools.cache
def _lazy_vocabulary_class():
    """Defined on first use so that `import locca.vocab` (and its CLI) does not
    import seqio/TensorFlow."""
    import seqio

    class LazySentencePieceVocabulary(seqio.SentencePieceVocabulary):
        """A SentencePieceVocabulary whose model file is located (and, for the
        default, built) only when first needed: registering tasks touches no
        disk. `resolver` is a module-level function returning the model path."""

        def __init__(self, resolver):
            self._resolver = resolver
            super().__init__("", extra_ids=0)

        def _resolve(self) -> str:
            if not self._sentencepiece_model_file:
                self._sentencepiece_model_file = str(self._resolver())
            return self._sentencepiece_model_file

        @property
        def sentencepiece_model_file(self) -> str:
            return self._resolve()

        def _model_context(self):
            self._resolve()
            return super()._model_context()

        def __eq__(self, other):
            if isinstance(other, LazySentencePieceVocabulary) and other._resolver is self._resolver:
                return True  # same recipe, same bytes
            if isinstance(other, seqio.SentencePieceVocabulary):
                return self.sp_model == other.sp_model
            return False

        def __hash__(self):
            return hash(self._resolver)

        def __reduce__(self):  # picklable although the class is created at run time
            return (lazy_vocabulary, (self._resolver,))

        def __str__(self) -> str:
            return f"lazy SentencePieceVocabulary({self._resolver.__name__})"

    return LazySentencePieceVocabulary


def lazy_vocabulary(resolver: Callable[[], os.PathLike | str]):
    """A seqio.SentencePieceVocabulary over the model file `resolver()` returns,
    resolved at first use (`resolver` must be a module-level function)."""
    return _lazy_vocabulary_class()(resolver)


@functools.cache
def default_vocabulary():
    """The shapes-world vocabulary with location tokens (a seqio
    SentencePieceVocabulary; one shared instance; trained into the cache on
    first use, deterministic)."""
    return lazy_vocabulary(default_vocabulary_path)


VOCAB_ENV = "LOCCA_VOCAB"


def task_vocabulary_path() -> pathlib.Path:
    """`$LOCCA_VOCAB` (e.g. a T5 model extended with `extend`) if set, else the
    default shapes vocabulary."""
    path = os.environ.get(VOCAB_ENV)
    if path:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"${VOCAB_ENV}={path}: file not found (expected a .model)")
        return pathlib.Path(path)
    return default_vocabulary_path()


@functools.cache
def task_vocabulary():
    """The vocabulary of the registered seqio tasks: `$LOCCA_VOCAB` when set
    (read at first use), else `default_vocabulary()`'s model."""
    return lazy_vocabulary(task_vocabulary_path)


def loc_token_ids(vocab) -> list[int]:
    """Ids of `<loc0000>`..`<loc1023>` in `vocab` (each must be one piece)."""
    sp = vocab.tokenizer
    ids = [sp.piece_to_id(loc_token(i)) for i in range(NUM_LOC_TOKENS)]
    if any(i == sp.unk_id() for i in ids):
        raise ValueError(f"{vocab.sentencepiece_model_file}: vocabulary lacks location tokens")
    return ids


# ------------------------------------------------------------------ CLI


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m locca.vocab", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train a SentencePiece model with location tokens")
    t.add_argument("--out", required=True)
    t.add_argument("--vocab_size", type=int, default=DEFAULT_VOCAB_SIZE)
    t.add_argument("--corpus", help="text file, one sentence per line (default: shapes world)")
    t.add_argument("--seed", type=int, default=0)
    e = sub.add_parser("extend", help="append location tokens to an existing model")
    e.add_argument("--model", required=True)
    e.add_argument("--out", required=True)
    a = p.parse_args(argv)
    if a.cmd == "train":
        if a.corpus:
            if not os.path.exists(a.corpus):
                raise SystemExit(f"{a.corpus}: corpus not found (expected a text file)")
            with open(a.corpus, encoding="utf-8") as f:
                lines = [ln.strip() for ln in f if ln.strip()]
        else:
            lines = shapes_corpus()
        data = train_model(lines, vocab_size=a.vocab_size, seed=a.seed)
    else:
        if not os.path.exists(a.model):
            raise SystemExit(f"{a.model}: model not found (expected a SentencePiece .model)")
        with open(a.model, "rb") as f:
            data = extend_model(f.read())
    _atomic_write(pathlib.Path(a.out), data)
    sp = spm.SentencePieceProcessor(model_proto=data)
    print(f"wrote {a.out}: {sp.get_piece_size()} pieces")


if __name__ == "__main__":
    main()
