"""Checks our models against reference directories produced by upstream code.

    python -m checkpoints.verify DIR [--rtol R]

Directory kinds (``detect_kind``):

* ``bv_vit``: big_vision ViT -- ``config.json`` with ``model_config``,
  ``params.npz`` (flat big_vision keys) and ``io.npz`` (``image`` plus the
  reference outputs, e.g. ``encoded``, ``pre_logits``, ``logits``).
* ``hf_t5``: Hugging Face T5 -- ``config.json`` with ``model_type`` "t5" and
  ``*.safetensors``; handled by ``checkpoints.hf_t5.verify_dir(dir)`` (owned by
  the T5 module; must return an exit code or a bool).
* ``hf_siglip``: Hugging Face SigLIP vision tower with reference outputs
  (``checkpoints.hf_siglip.verify_dir``).
* ``hf_clip``: Hugging Face CLIP vision tower (``model_type`` "clip" or
  "clip_vision_model") with reference outputs (``checkpoints.hf_clip.verify_dir``).

Errors printed per output: ``max_abs = max|ours - ref|`` and
``max_rel = max_abs / max|ref|`` (norm-wise relative error, robust to
reference entries near zero). Exit status 0 only if every ``max_rel <= rtol``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable, Mapping

import numpy as np

DEFAULT_RTOL = {"bv_vit": 1e-5, "hf_t5": 1e-4, "hf_siglip": 1e-5, "hf_clip": 1e-5}


def compare(ours: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(max abs error, max abs error / max |ref|) in float64."""
    ours = np.asarray(ours, np.float64)
    ref = np.asarray(ref, np.float64)
    if ours.shape != ref.shape:
        raise ValueError(f"shape mismatch: ours {ours.shape} vs reference {ref.shape}")
    max_abs = float(np.max(np.abs(ours - ref))) if ref.size else 0.0
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    return max_abs, (max_abs / scale if scale > 0 else max_abs)


def report(name: str, errors: Mapping[str, tuple[float, float]], rtol: float) -> bool:
    """Prints one line per output; True if all are within ``rtol``."""
    ok = True
    for key, (max_abs, max_rel) in errors.items():
        good = max_rel <= rtol
        ok &= good
        print(
            f"{name}: {key:<12s} max_abs={max_abs:.3e} max_rel={max_rel:.3e} "
            f"{'OK' if good else 'FAIL'} (rtol {rtol:g})"
        )
    return ok


def _read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def detect_kind(directory: str) -> str:
    """Returns the key of ``VERIFIERS`` that handles ``directory``."""
    cfg_path = os.path.join(directory, "config.json")
    files = set(os.listdir(directory)) if os.path.isdir(directory) else set()
    if not files:
        raise ValueError(f"{directory}: not a directory or empty")
    cfg = _read_json(cfg_path) if "config.json" in files else {}
    if "params.npz" in files and "model_config" in cfg:
        return "bv_vit"
    has_st = any(f.endswith(".safetensors") for f in files)
    model_type = str(cfg.get("model_type", ""))
    if has_st and model_type in ("t5", "mt5", "umt5"):
        return "hf_t5"
    if has_st and model_type.startswith("siglip"):
        return "hf_siglip"
    if has_st and model_type.startswith("clip"):
        return "hf_clip"
    raise ValueError(
        f"{directory}: unknown reference directory; expected config.json with model_config + "
        "params.npz + io.npz (big_vision ViT), or config.json with model_type t5/siglip/clip + "
        f"*.safetensors (Hugging Face). Found files {sorted(files)}"
    )


def run_bv_vit(directory: str) -> dict[str, tuple[float, float]]:
    """Loads the big_vision ViT in ``directory``; errors for each output in io.npz."""
    import jax
    import jax.numpy as jnp

    from checkpoints import bv_npz
    from locca.models import vit

    cfg = _read_json(os.path.join(directory, "config.json"))
    model_config = dict(cfg["model_config"])
    model = vit.Model(**model_config)
    with np.load(os.path.join(directory, "io.npz"), allow_pickle=False) as f:
        io = {k: f[k] for k in f.files}
    if "image" not in io:
        raise ValueError(f"{directory}/io.npz: expected an 'image' array, found {sorted(io)}")
    image = jnp.asarray(io["image"], jnp.float32)
    init = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), image))["params"]
    init = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), bv_npz._unbox(init))
    params = bv_npz.load_vit_params(init, os.path.join(directory, "params.npz"), model_config)
    _, out = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))(params, image)
    errors = {}
    for key, ref in io.items():
        if key == "image":
            continue
        if key not in out:
            raise ValueError(f"{directory}/io.npz: reference output {key!r} not produced by ViT")
        errors[key] = compare(np.asarray(out[key]), ref)
    return errors


def verify_bv_vit(directory: str, rtol: float | None = None) -> bool:
    rtol = DEFAULT_RTOL["bv_vit"] if rtol is None else rtol
    return report(os.path.basename(os.path.normpath(directory)), run_bv_vit(directory), rtol)


def _delegate(module: str, kind: str) -> Callable[..., bool]:
    """Verifier implemented in another module as ``verify_dir(dir)``."""

    def verify(directory: str, rtol: float | None = None) -> bool:
        try:
            mod = importlib.import_module(module)
        except ImportError as e:
            raise SystemExit(
                f"{directory}: a {kind} directory needs {module}.verify_dir, "
                f"but {module} cannot be imported ({e})"
            ) from e
        fn = getattr(mod, "verify_dir", None)
        if fn is None:
            raise SystemExit(f"{directory}: {module} has no verify_dir(dir) function yet")
        result = fn(directory) if rtol is None else _call_with_rtol(fn, directory, rtol)
        return (
            result == 0
            if isinstance(result, int) and not isinstance(result, bool)
            else bool(result)
        )

    return verify


def _call_with_rtol(fn, directory, rtol):
    try:
        return fn(directory, rtol=rtol)
    except TypeError:
        return fn(directory)


# Dispatch table: directory kind -> verifier(directory, rtol=None) -> bool.
VERIFIERS: dict[str, Callable[..., bool]] = {
    "bv_vit": verify_bv_vit,
    "hf_t5": _delegate("checkpoints.hf_t5", "Hugging Face T5"),
    "hf_siglip": _delegate("checkpoints.hf_siglip", "Hugging Face SigLIP"),
    "hf_clip": _delegate("checkpoints.hf_clip", "Hugging Face CLIP"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("directory")
    parser.add_argument("--rtol", type=float, default=None, help="max norm-wise relative error")
    parser.add_argument("--kind", choices=sorted(VERIFIERS), default=None)
    args = parser.parse_args(argv)
    kind = args.kind or detect_kind(args.directory)
    print(f"{args.directory}: kind {kind}")
    ok = VERIFIERS[kind](args.directory, rtol=args.rtol)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    from locca import cli

    sys.exit(cli.run(main))
