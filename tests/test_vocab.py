"""locca.vocab: location tokens, round trips, determinism, extend, cache."""

import hashlib
import os
import subprocess
import sys

import pytest
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from locca import vocab as V

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(**kw):
    pp = os.pathsep.join([REPO] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    return dict(os.environ, PYTHONPATH=pp, TF_CPP_MIN_LOG_LEVEL="3", **kw)


CORPUS = [
    "a small red circle next to a large blue square",
    "what colour is the triangle on the left?",
    "how many stars are there",
    "the medium green star with the word cat",
] * 5


def _sp(data: bytes) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_proto=data)


@pytest.fixture(scope="module")
def default_vocab():
    return V.default_vocabulary()


def test_ids_t5_convention(default_vocab):
    sp = default_vocab.tokenizer
    assert (sp.pad_id(), sp.eos_id(), sp.unk_id()) == (0, 1, 2)
    assert sp.bos_id() == -1
    assert default_vocab.eos_id == 1


def test_location_tokens_are_single_ids(default_vocab):
    sp = default_vocab.tokenizer
    ids = V.loc_token_ids(default_vocab)
    assert len(set(ids)) == 1024
    for i in (0, 1, 7, 500, 999, 1023):
        tok = V.loc_token(i)
        assert sp.encode(tok) == [ids[i]] or sp.encode(tok) == [sp.piece_to_id("▁"), ids[i]]
        # inside text, glued to neighbours, each location token is one id
        got = sp.encode(f"x{tok}{V.loc_token(3)}y", out_type=str)
        assert tok in got and V.loc_token(3) in got
    mask = sp.piece_to_id(V.MASK_TOKEN)
    assert mask != sp.unk_id() and sp.encode(V.MASK_TOKEN, out_type=str)[-1] == V.MASK_TOKEN
    assert default_vocab.decode([ids[12], ids[1023]]) == "<loc0012><loc1023>"


def test_caption_round_trip(default_vocab):
    from locca.data.shapes import ShapesWorld

    world = ShapesWorld(resolution=64, seed=123)  # a seed the corpus never saw
    texts = []
    for i in range(30):
        s = world.scene(i)
        texts += [s.caption] + [r.text for r in s.refexps] + [q.question for q in s.vqa]
    texts += ["12 40 300 499", "ARef : small red circle : 0 1 2 3"]
    for t in texts:
        ids = default_vocab.encode(t)
        assert default_vocab.tokenizer.unk_id() not in ids, t
        assert default_vocab.decode(ids) == t


def test_training_is_deterministic():
    a = V.train_model(CORPUS, vocab_size=60)
    b = V.train_model(list(CORPUS), vocab_size=60)
    assert hashlib.sha256(a).digest() == hashlib.sha256(b).digest()
    c = V.train_model(CORPUS + ["another sentence entirely"], vocab_size=60)
    assert c != a


def test_cli_train_and_extend(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS) + "\n")
    out = tmp_path / "v.model"
    V.main(["train", "--out", str(out), "--corpus", str(corpus), "--vocab_size", "60"])
    sp = _sp(out.read_bytes())
    assert sp.encode("<loc0042>", out_type=str)[-1] == "<loc0042>"
    assert sp.piece_to_id("<loc0000>") == 3
    # byte-identical on a second run, in a fresh process
    out2 = tmp_path / "v2.model"
    subprocess.run(
        [sys.executable, "-m", "locca.vocab", "train", "--out", str(out2), "--corpus",
         str(corpus), "--vocab_size", "60"],
        check=True, capture_output=True, env=_env(), cwd=REPO,
    )  # fmt: skip
    assert out.read_bytes() == out2.read_bytes()


def test_extend_keeps_original_ids(tmp_path):
    # A "T5-like" model without location tokens.
    import io

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=buf, vocab_size=50, hard_vocab_limit=False,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, num_threads=1, minloglevel=2,
    )  # fmt: skip
    base = tmp_path / "t5.model"
    base.write_bytes(buf.getvalue())
    out = tmp_path / "t5_loc.model"
    V.main(["extend", "--model", str(base), "--out", str(out)])
    old, new = _sp(base.read_bytes()), _sp(out.read_bytes())
    n = old.get_piece_size()
    assert new.get_piece_size() == n + 1025
    assert [old.id_to_piece(i) for i in range(n)] == [new.id_to_piece(i) for i in range(n)]
    assert new.piece_to_id("<loc0000>") == n and new.piece_to_id("<loc1023>") == n + 1023
    assert new.piece_to_id(V.MASK_TOKEN) == n + 1024
    text = "a small red circle"
    assert old.encode(text) == new.encode(text)
    assert new.encode("<loc0005>", out_type=str)[-1] == "<loc0005>"
    m = sentencepiece_model_pb2.ModelProto()
    m.ParseFromString(out.read_bytes())
    assert m.pieces[n].type == sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED
    # extending twice adds nothing
    assert V.extend_model(out.read_bytes()) == out.read_bytes()


def test_cli_missing_model_names_path(tmp_path):
    with pytest.raises(SystemExit, match="nope.model"):
        V.main(["extend", "--model", str(tmp_path / "nope.model"), "--out", str(tmp_path / "o")])


def test_default_vocabulary_concurrent_build(tmp_path):
    """Two processes building the default vocabulary into an empty cache at once
    both succeed and agree; only the final file remains (no temporaries)."""
    code = "from locca import vocab; print(vocab.default_vocabulary_path())"
    env = _env(LOCCA_CACHE=str(tmp_path))
    procs = [
        subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, cwd=REPO)
        for _ in range(2)
    ]
    paths = [p.communicate(timeout=300)[0].decode().strip().splitlines()[-1] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert paths[0] == paths[1]
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(paths[0])]
    # equal to the model this process uses (same recipe -> same bytes)
    with open(paths[0], "rb") as f:
        assert f.read() == V.default_vocabulary().sp_model


def test_registration_does_not_build(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCCA_CACHE", str(tmp_path / "empty"))
    v = V.lazy_vocabulary(V.default_vocabulary_path)
    assert v == V.default_vocabulary()
    assert not (tmp_path / "empty").exists()
    import pickle

    assert pickle.loads(pickle.dumps(v)) == v  # picklable (gin deep-copies vocabularies)


def test_task_vocabulary_env_override(tmp_path, monkeypatch):
    data = V.train_model(CORPUS, vocab_size=60)
    (tmp_path / "mine.model").write_bytes(data)
    monkeypatch.setenv(V.VOCAB_ENV, str(tmp_path / "mine.model"))
    v = V.lazy_vocabulary(V.task_vocabulary_path)  # a fresh, unresolved instance
    assert v.sp_model == data and v.vocab_size == _sp(data).get_piece_size()
    monkeypatch.setenv(V.VOCAB_ENV, str(tmp_path / "missing.model"))
    with pytest.raises(FileNotFoundError, match="missing.model"):
        V.lazy_vocabulary(V.task_vocabulary_path).load_model()
