"""big_vision ``.npz`` checkpoints: load, save, and load into our ViT.

Format: one ``np.savez`` archive whose keys are the parameter paths joined with
"/" (``Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel``). bfloat16 arrays
are stored by numpy as 2-byte void (``|V2``) and are recovered here as
``ml_dtypes.bfloat16``. A path may carry a ``:subtree`` suffix
(``siglip.npz:img``) that selects the keys under ``img/`` with that prefix
removed. Pickles are never loaded (``allow_pickle=False``).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from typing import Any

import ml_dtypes
import numpy as np

SEP = "/"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


# ----------------------------------------------------------------------------- trees


def flatten(tree: Mapping, sep: str = SEP, prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"a/b/c": leaf}. Empty sub-dicts are dropped."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, sep, name))
        else:
            flat[name] = value
    return flat


def unflatten(flat: Mapping[str, Any], sep: str = SEP) -> dict:
    """{"a/b/c": leaf} -> nested dict; inverse of :func:`flatten`."""
    tree: dict = {}
    for name, value in flat.items():
        *parents, leaf = name.split(sep)
        node = tree
        for p in parents:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise ValueError(f"key {name!r}: {p!r} is both a leaf and a subtree")
            node = child
        if leaf in node:
            raise ValueError(f"key {name!r}: {leaf!r} is both a leaf and a subtree")
        node[leaf] = value
    return tree


def _unbox(tree):
    """Strips flax axis metadata (nn.Partitioned) if present."""
    try:
        from flax.core import meta

        return meta.unbox(tree)
    except ImportError:  # pragma: no cover
        return tree


# ----------------------------------------------------------------------------- paths


def split_subtree(path: str | os.PathLike) -> tuple[str, str | None]:
    """ "ckpt.npz:img" -> ("ckpt.npz", "img"); "ckpt.npz" -> ("ckpt.npz", None)."""
    path = os.fspath(path)
    if ":" in path and not os.path.exists(path):
        file, sub = path.rsplit(":", 1)
        if file and sub and os.sep not in sub:
            return file, sub.strip(SEP)
    return path, None


def _refuse_pickle(file: str) -> None:
    if file.lower().endswith(_PICKLE_SUFFIXES):
        raise ValueError(
            f"{file}: refusing to load a pickle-based checkpoint (.bin/.pt/...): pickles can "
            "run arbitrary code. Convert it to safetensors (e.g. save_pretrained("
            "safe_serialization=True)) or to a big_vision .npz and load that instead."
        )


# ----------------------------------------------------------------------------- npz io


def _fix_dtype(arr: np.ndarray) -> np.ndarray:
    """numpy stores bfloat16 as 2-byte void; view it back as ml_dtypes.bfloat16."""
    if arr.dtype.kind == "V" and arr.dtype.itemsize == 2 and arr.dtype.names is None:
        return arr.view(ml_dtypes.bfloat16)
    return arr


def load_npz_flat(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Flat {"a/b": array} from ``file.npz[:subtree]``; subtree prefix removed."""
    file, sub = split_subtree(path)
    _refuse_pickle(file)
    if not os.path.exists(file):
        raise FileNotFoundError(f"{file}: no such checkpoint file")
    with np.load(file, allow_pickle=False) as data:
        flat = {}
        for k in data.files:
            try:
                flat[k] = _fix_dtype(data[k])
            except ValueError as e:  # an object array: numpy would have to unpickle it
                raise ValueError(
                    f"{file}: array {k!r} holds pickled Python objects ({e}); refusing to "
                    "unpickle (it can run arbitrary code): a checkpoint npz holds numeric "
                    "arrays only"
                ) from None
    if sub is not None:
        prefix = sub + SEP
        selected = {k[len(prefix) :]: v for k, v in flat.items() if k.startswith(prefix)}
        if not selected:
            tops = sorted({k.split(SEP, 1)[0] for k in flat})
            raise KeyError(f"{file}: no keys under subtree {sub!r}; top-level names: {tops}")
        flat = selected
    return flat


def load_npz(path: str | os.PathLike) -> dict:
    """Nested dict of numpy arrays from ``file.npz`` or ``file.npz:subtree``."""
    return unflatten(load_npz_flat(path))


def save_npz(path: str | os.PathLike, tree: Mapping) -> None:
    """Writes a (nested or flat) tree as a big_vision npz, atomically.

    The archive is written to a temporary file in the same directory and moved
    into place with ``os.replace``, so readers never see a partial file.
    """
    path = os.fspath(path)
    flat = {k: np.asarray(v) for k, v in flatten(_unbox(dict(tree))).items()}
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".npz", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **flat)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_sidecar(npz_path: str | os.PathLike, sidecar: Mapping) -> str:
    """Writes ``sidecar`` as ``X.json`` beside ``X.npz`` atomically; returns its path.

    The sidecar describes an exported encoder (ViT config, resolution, pixel
    range); ``transfer.encoder`` reads it when its gin gives no ``vit_config``.
    """
    side = re.sub(r"\.npz$", "", os.fspath(npz_path)) + ".json"
    tmp = side + ".tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(dict(sidecar), f, indent=2, sort_keys=True)
        os.replace(tmp, side)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return side


# ----------------------------------------------------------------------------- ViT loading


def is_two_tower(flat: Mapping[str, Any]) -> bool:
    tops = {k.split(SEP, 1)[0] for k in flat}
    return {"img", "txt"} <= tops


def resample_posemb(old: np.ndarray, new_shape: tuple[int, ...]) -> np.ndarray:
    """Bilinearly resizes a square grid of position embeddings [1, g*g, D].

    Same numerics as big_vision's ``resample_posemb`` (``scipy.ndimage.zoom``,
    order 1). A leading extra (cls) token, present when the old length is
    g*g + 1, is kept unchanged when ``new_shape`` also has one.
    """
    import scipy.ndimage

    old = np.asarray(old)
    if tuple(old.shape) == tuple(new_shape):
        return old
    n_old, n_new, d = old.shape[1], new_shape[1], old.shape[2]
    if d != new_shape[2]:
        raise ValueError(f"pos_embedding width {d} != model width {new_shape[2]}")

    def grid(n):
        g = int(round(np.sqrt(n)))
        return (g, 0) if g * g == n else (int(round(np.sqrt(n - 1))), 1)

    gs_old, extra_old = grid(n_old)
    gs_new, extra_new = grid(n_new)
    if gs_old * gs_old + extra_old != n_old or gs_new * gs_new + extra_new != n_new:
        raise ValueError(
            f"pos_embedding lengths {n_old} -> {n_new} are not square grids (+1 cls token)"
        )
    tok, body = old[:, :extra_old], old[:, extra_old:]
    g = body.reshape(gs_old, gs_old, d).astype(np.float32)
    g = scipy.ndimage.zoom(g, (gs_new / gs_old, gs_new / gs_old, 1), order=1)
    body = g.reshape(1, gs_new * gs_new, d).astype(old.dtype)
    if extra_new:
        if not extra_old:
            raise ValueError("model expects an extra posemb token that the checkpoint lacks")
        return np.concatenate([tok, body], axis=1)
    return body


_BLOCK_RE = re.compile(r"^Transformer/encoderblock_(\d+)/(.*)$")
_SCAN_PREFIX = "Transformer/encoderblock/"


def _to_scanned(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """encoderblock_{i}/x (per layer) -> encoderblock/x with a leading depth axis."""
    layers: dict[str, dict[int, np.ndarray]] = {}
    res = {}
    for k, v in flat.items():
        m = _BLOCK_RE.match(k)
        if m:
            layers.setdefault(m.group(2), {})[int(m.group(1))] = v
        else:
            res[k] = v
    for rest, per_layer in layers.items():
        depth = max(per_layer) + 1
        if sorted(per_layer) != list(range(depth)):
            raise ValueError(
                f"encoder layers for {rest!r} are not 0..{depth - 1}: {sorted(per_layer)}"
            )
        res[_SCAN_PREFIX + rest] = np.stack([per_layer[i] for i in range(depth)])
    return res


def _to_unscanned(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """encoderblock/x with depth axis -> encoderblock_{i}/x."""
    res = {}
    for k, v in flat.items():
        if k.startswith(_SCAN_PREFIX):
            rest = k[len(_SCAN_PREFIX) :]
            for i in range(v.shape[0]):
                res[f"Transformer/encoderblock_{i}/{rest}"] = v[i]
        else:
            res[k] = v
    return res


def _fix_old_layouts(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Older big_vision / ViT-paper layouts of the position embedding."""
    flat = dict(flat)
    for old in ("Transformer/posembed_input/pos_embedding", "Transformer/pos_embedding"):
        if old in flat and "pos_embedding" not in flat:
            flat["pos_embedding"] = flat.pop(old)
    return flat


def _describe(names: Iterable[str], limit: int = 20) -> str:
    names = sorted(names)
    head = ", ".join(names[:limit])
    return head + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def load_vit_params(
    init_params: Mapping,
    path: str | os.PathLike,
    model_config: Mapping | None = None,
    dont_load: Iterable[str] = (),
) -> dict:
    """Loads a big_vision ViT npz into the structure of ``init_params``.

    Args:
      init_params: our model's parameters (boxed or plain), giving the target
        names, shapes and dtypes.
      path: ``file.npz`` or ``file.npz:subtree`` (two-tower checkpoints such as
        SigLIP need ``:img``).
      model_config: the ViT keyword arguments (used in messages only).
      dont_load: regexes of flat names kept from ``init_params`` (e.g. "head/.*").

    Returns a plain nested dict of numpy arrays. Learned position embeddings
    are resampled to the model's grid, scanned <-> per-layer layouts are
    converted, and any remaining mismatch raises ValueError naming the
    missing, unexpected and mis-shaped parameters.
    """
    file, sub = split_subtree(path)
    flat = load_npz_flat(path)
    if sub is None and is_two_tower(flat):
        raise ValueError(
            f"{file} is a two-tower checkpoint (top-level img/ and txt/); "
            f"add ':img' to the path to load the image tower, e.g. '{file}:img'"
        )
    target = {k: np.asarray(v) for k, v in flatten(_unbox(dict(init_params))).items()}
    flat = _fix_old_layouts(flat)

    want_scan = any(k.startswith(_SCAN_PREFIX) for k in target)
    have_scan = any(k.startswith(_SCAN_PREFIX) for k in flat)
    if want_scan and not have_scan:
        flat = _to_scanned(flat)
    elif have_scan and not want_scan:
        flat = _to_unscanned(flat)

    patterns = [re.compile(p) for p in dont_load]
    skip = {k for k in target if any(p.fullmatch(k) for p in patterns)}
    if "pos_embedding" in flat and "pos_embedding" in target and "pos_embedding" not in skip:
        flat["pos_embedding"] = resample_posemb(
            flat["pos_embedding"], target["pos_embedding"].shape
        )

    missing = set(target) - set(flat) - skip
    unexpected = set(flat) - set(target)
    misshaped = [
        f"{k}: checkpoint {tuple(flat[k].shape)} vs model {tuple(target[k].shape)}"
        for k in sorted(set(target) & set(flat) - skip)
        if tuple(flat[k].shape) != tuple(target[k].shape)
    ]
    if missing or unexpected or misshaped:
        lines = [f"{path}: checkpoint does not match the ViT {dict(model_config or {})}"]
        if missing:
            lines.append(f"  missing ({len(missing)}): {_describe(missing)}")
        if unexpected:
            lines.append(f"  unexpected ({len(unexpected)}): {_describe(unexpected)}")
        if misshaped:
            lines.append(f"  mis-shaped ({len(misshaped)}): " + "; ".join(misshaped[:20]))
        raise ValueError("\n".join(lines))

    out = {}
    for k, t in target.items():
        out[k] = t if k in skip else np.asarray(flat[k]).astype(t.dtype, copy=False)
    return unflatten(out)
