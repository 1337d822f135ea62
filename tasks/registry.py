"""Task registration helpers: output features, data directories, metrics.

A leaf of the tasks package: the task modules import it, it imports none of them
(`tasks/__init__.py` calls each module's `register()`).

Registration never touches the disk: sources parse their files when a dataset
is requested, and the vocabulary is built on first use.

Data directories (official datasets), resolved when the data is read:
  1. an explicit `data_dir=` given to a task factory,
  2. `set_data_dir(dataset, path)` / `data_dir_override(...)` (entry points
     bind these from gin, e.g. `DATA_DIR`),
  3. `$LOCCA_DATA_DIR/<dataset>`.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import seqio
import tensorflow as tf

from locca.boxes import BoxCodec
from locca.vocab import task_vocabulary
from tasks import preprocessors as prep
from tasks.resumable import ResumableMixture, ResumableTask

DATA_DIR_ENV = "LOCCA_DATA_DIR"
_DATA_DIRS: dict[str, str] = {}


# ------------------------------------------------------------------ data dirs


def set_data_dir(dataset: str, path: str | None) -> None:
    """Overrides where `dataset` (e.g. "coco", "vqav2", "refcoco") lives."""
    if path is None:
        _DATA_DIRS.pop(dataset, None)
    else:
        _DATA_DIRS[dataset] = os.fspath(path)


@contextlib.contextmanager
def data_dir_override(**dirs: str):
    """`with data_dir_override(vqav2="/tmp/x"): ...` (restores on exit)."""
    old = {k: _DATA_DIRS.get(k) for k in dirs}
    try:
        for k, v in dirs.items():
            set_data_dir(k, v)
        yield
    finally:
        for k, v in old.items():
            set_data_dir(k, v)


def image_dir_override(dataset: str) -> str | None:
    """`set_data_dir("<dataset>_images", path)` if given (image folders root)."""
    return _DATA_DIRS.get(f"{dataset}_images")


def resolve_data_dir(dataset: str, data_dir: str | None = None) -> str:
    """The directory holding `dataset`'s official files (see module doc)."""
    if data_dir:
        return os.fspath(data_dir)
    if dataset in _DATA_DIRS:
        return _DATA_DIRS[dataset]
    root = os.environ.get(DATA_DIR_ENV)
    if root:
        return os.path.join(root, dataset)
    raise FileNotFoundError(
        f"no data directory for dataset '{dataset}': pass data_dir=, call "
        f"tasks.registry.set_data_dir('{dataset}', PATH), or set ${DATA_DIR_ENV} "
        f"(then ${DATA_DIR_ENV}/{dataset} is used)"
    )


# ------------------------------------------------------------------ features


def output_features(vocab: seqio.Vocabulary | None = None) -> dict[str, seqio.Feature]:
    """image (uint8 [H, W, 3]) + inputs/targets (token ids, EOS appended)."""
    vocab = vocab or task_vocabulary()
    return {
        "image": seqio.ContinuousFeature(dtype=tf.uint8, rank=3),
        "inputs": seqio.Feature(vocabulary=vocab, add_eos=True),
        "targets": seqio.Feature(vocabulary=vocab, add_eos=True),
    }


def pretrain_output_features(vocab: seqio.Vocabulary | None = None) -> dict[str, seqio.Feature]:
    """image + LocCa targets cap / aref / gcap (token ids, EOS appended)."""
    vocab = vocab or task_vocabulary()
    feats = {"image": seqio.ContinuousFeature(dtype=tf.uint8, rank=3)}
    for k in ("cap", "aref", "gcap"):
        feats[k] = seqio.Feature(vocabulary=vocab, add_eos=True)
    return feats


def text_preprocessors(image_size: int, format_fn) -> list:
    """The standard chain: image + prompt/target formatting + tokenisation.

    Random choices (reference sampling) run after the cache placeholder so that
    each epoch samples afresh (seqio repeats before post-cache preprocessing)."""
    return [
        seqio.CacheDatasetPlaceholder(),
        prep.load_image(image_size),
        format_fn,
        seqio.preprocessors.tokenize,
        seqio.preprocessors.append_eos_after_trim,
    ]


# ------------------------------------------------------------------ metrics


def lazy_metric(module: str, fn: str) -> Callable:
    """A metric fn imported from `tasks.metrics.<module>` when first called, so
    tasks register before (or without) the metrics package being complete."""

    def _metric(targets, predictions):
        try:
            mod = importlib.import_module(f"tasks.metrics.{module}")
            f = getattr(mod, fn)
        except (ImportError, AttributeError) as e:
            raise NotImplementedError(
                f"metric tasks.metrics.{module}.{fn} is not available ({e})"
            ) from e
        return f(targets, predictions)

    _metric.__name__ = f"{module}_{fn}"
    _metric.__qualname__ = _metric.__name__
    return _metric


def _as_str(x) -> str:
    if isinstance(x, bytes):  # model output may be invalid UTF-8: never raise on it
        return x.decode("utf-8", errors="replace")
    return str(x)


def text_postprocessor(output, example=None, is_target=False):
    """Predictions -> stripped string; targets -> dict of the example's
    references and metadata (answers, id, issimple, question_type, ...)."""
    if not is_target:
        return _as_str(output).strip()
    ex = example or {}
    out = {"answers": [_as_str(r) for r in ex.get("references", [])]}
    for k in ("id", "question_id", "question_type", "answer_type", "question"):
        if k in ex:
            v = ex[k]
            out[k] = _as_str(v) if isinstance(v, bytes) else (v.item() if hasattr(v, "item") else v)
    if "issimple" in ex:  # TallyQA: 1 simple, 0 complex, -1 unknown -> True / False / None
        v = int(ex["issimple"])
        out["issimple"] = None if v < 0 else bool(v)
    return out


def rec_postprocessor_factory(encoding="text", num_bins=None, order="yxyx"):
    """REC: predictions -> box (np [4] or None) via BoxCodec.decode; targets ->
    {"box": ground-truth box, "expression", "id"}."""
    codec = BoxCodec(encoding=encoding, num_bins=num_bins, order=order)

    def _post(output, example=None, is_target=False):
        if not is_target:
            return codec.decode(_as_str(output))
        ex = example or {}
        return {
            "box": [float(v) for v in ex["box"]],
            "expression": _as_str(ex.get("expression", b"")),
            "id": _as_str(ex.get("id", b"")),
        }

    return _post


# ------------------------------------------------------------------ registry


_TASK_CONFIGS: dict[str, Any] = {}
_MIXTURE_CONFIGS: dict[str, Any] = {}


def describe(value: Any) -> Any:
    """A comparable, printable form of a registration parameter.

    Plain values and containers map to themselves (paths as strings, tuples as
    lists, mappings with sorted keys); a SentencePiece vocabulary to its class,
    model file and extra ids (without loading it); a ``functools.partial`` to its
    function and arguments; any other object to its type and identity (equal
    only to itself: a parameter we cannot compare is never assumed equal)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {str(k): describe(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [describe(v) for v in value]
    if isinstance(value, seqio.SentencePieceVocabulary):
        state = vars(value)
        return {
            "vocabulary": type(value).__qualname__,
            "model": describe(state.get("_sentencepiece_model_file")),
            "extra_ids": state.get("_extra_ids"),
        }
    if isinstance(value, functools.partial):
        return {"partial": describe(value.func), "args": describe(value.args),
                "keywords": describe(value.keywords)}  # fmt: skip
    if (
        callable(value)
        and hasattr(value, "__qualname__")
        and not getattr(value, "__closure__", None)
    ):
        return f"{getattr(value, '__module__', '?')}.{value.__qualname__}"  # no captured state
    return f"<{type(value).__qualname__} at {id(value):#x}>"


def _config_diff(old: Any, new: Any) -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return "; ".join(
            f"{k}: registered {old.get(k, '<absent>')!r}, now {new.get(k, '<absent>')!r}"
            for k in keys
            if old.get(k, "<absent>") != new.get(k, "<absent>")
        )
    return f"registered {old!r}, now {new!r}"


def _check_same(kind: str, name: str, known: dict[str, Any], config: Any, seqio_registry) -> bool:
    """True when `name` is registered with `config` already; raises ValueError
    when it is registered with another configuration, or in `seqio_registry` by
    other code (so that its configuration cannot be compared)."""
    if name not in known:
        if name in seqio_registry.names():
            raise ValueError(
                f"seqio {kind} {name!r} was registered outside tasks.registry.add_{kind}; "
                "its configuration cannot be compared: use another name"
            )
        return False
    if known[name] != config:
        raise ValueError(
            f"seqio {kind} {name!r} is already registered with another configuration "
            f"({_config_diff(known[name], config)}): give this configuration its own "
            f"{kind} name (a name is one dataset; reusing it would silently return the "
            "first registration's data)"
        )
    return True


def add_task(name: str, *, config: Mapping[str, Any], **kwargs) -> seqio.Task:
    """seqio.TaskRegistry.add, idempotent for equal configurations.

    config: every parameter that defines the task's data (the factory's
    arguments: sizes, resolution, box encoding, data directories...). Registering
    `name` again with an equal config returns the registered task; with a
    different one it raises ValueError naming the differing keys, as does a name
    that other code registered directly with seqio. kwargs go to
    seqio.TaskRegistry.add.

    The task is a `tasks.resumable.ResumableTask`: its training stream can
    start at any example (O(1) resume; see that module)."""
    config = describe(dict(config))
    if _check_same("task", name, _TASK_CONFIGS, config, seqio.TaskRegistry):
        return seqio.TaskRegistry.get(name)
    kwargs.setdefault("shuffle_buffer_size", 1000)
    kwargs.setdefault("task_cls", ResumableTask)  # training streams that start anywhere
    task = seqio.TaskRegistry.add(name, **kwargs)
    _TASK_CONFIGS[name] = config
    return task


def add_mixture(name: str, tasks: Sequence[str | tuple[str, float]], default_rate=1.0):
    """seqio.MixtureRegistry.add (a ResumableMixture), idempotent for the same
    tasks and rates; raises ValueError when `name` holds another mixture."""
    config = describe({"tasks": list(tasks), "default_rate": default_rate})
    if _check_same("mixture", name, _MIXTURE_CONFIGS, config, seqio.MixtureRegistry):
        return seqio.MixtureRegistry.get(name)
    mixture = seqio.MixtureRegistry.add(
        name, list(tasks), default_rate=default_rate, mixture_cls=ResumableMixture
    )
    _MIXTURE_CONFIGS[name] = config
    return mixture
