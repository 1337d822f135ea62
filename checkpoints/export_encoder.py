r"""Exports the encoder of a LocCa pretraining run as a big_vision npz.

    python -m checkpoints.export_encoder --model_dir DIR --out encoder.npz [--step N]

Reads ``DIR/checkpoints/<step>/state`` (the latest step by default; orbax,
written by ``locca.training``), takes ``params["encoder"]`` (big_vision ViT
parameter names) and writes it with ``checkpoints.bv_npz.save_npz``
(``/``-joined keys, atomic). Beside it, ``encoder.json`` holds the ViT
config (``vit.Model`` keyword arguments, from ``DIR/model_config.json``),
the input resolution, the pixel range and the source run/step; transfer
reads it when its encoder gin file gives no ``vit_config``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from checkpoints import bv_npz

MODEL_CONFIG_FILE = "model_config.json"  # written by transfer.pretrain


def _steps(ckpt_dir: str) -> list[int]:
    if not os.path.isdir(ckpt_dir):
        return []
    return sorted(int(d) for d in os.listdir(ckpt_dir) if re.fullmatch(r"\d+", d))


def read_params(model_dir: str, step: int | None = None) -> tuple[dict, int]:
    """The trainable params (numpy nested dict) of checkpoint ``step`` (default latest)."""
    import orbax.checkpoint as ocp

    ckpt_dir = os.path.join(os.path.abspath(model_dir), "checkpoints")
    steps = _steps(ckpt_dir)
    if not steps:
        raise FileNotFoundError(f"{ckpt_dir}: no checkpoint step directories (expected <step>/)")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise FileNotFoundError(f"{ckpt_dir}: no step {step}; available: {steps}")
    path = os.path.join(ckpt_dir, str(step), "state")
    with ocp.StandardCheckpointer() as ckptr:
        meta = ckptr.metadata(path)
        tree = getattr(meta, "item_metadata", meta)
        tree = getattr(tree, "tree", tree)
        import jax

        abstract = jax.tree.map(
            lambda m: np.zeros(m.shape, m.dtype) if hasattr(m, "shape") else m, dict(tree)
        )
        state = ckptr.restore(path, abstract)
    if "params" not in state:
        raise ValueError(f"{path}: checkpoint has no 'params' (keys: {sorted(state)})")
    params = state["params"]
    return _to_numpy(params), int(step)


def _to_numpy(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _to_numpy(v) for k, v in tree.items()}
    return np.asarray(tree)


def read_model_config(model_dir: str) -> dict:
    path = os.path.join(model_dir, MODEL_CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path}: missing (written by transfer.pretrain at the start of a run)"
        )
    with open(path) as f:
        cfg = json.load(f)
    if "vit_config" not in cfg:
        raise ValueError(f"{path}: expected a 'vit_config' entry, got keys {sorted(cfg)}")
    return cfg


def export_encoder(model_dir: str, out: str, step: int | None = None) -> dict:
    """Writes ``out`` (npz) and its sidecar JSON; returns the sidecar dict."""
    params, step = read_params(model_dir, step)
    if "encoder" not in params:
        raise ValueError(
            f"{model_dir} step {step}: params have no 'encoder' (keys {sorted(params)})"
        )
    cfg = read_model_config(model_dir)
    vit_config = {k: v for k, v in cfg["vit_config"].items() if k != "num_classes"}
    bv_npz.save_npz(out, params["encoder"])
    sidecar = {
        "format": "big_vision ViT npz ('/'-joined parameter names)",
        "vit_config": vit_config,
        "resolution": cfg.get("image_size"),
        "value_range": [-1.0, 1.0],
        "source": {"model_dir": os.path.abspath(model_dir), "step": step},
        "num_params": int(
            sum(np.prod(v.shape) for v in bv_npz.flatten(params["encoder"]).values())
        ),
    }
    bv_npz.save_sidecar(out, sidecar)
    return sidecar


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model_dir", required=True, help="a transfer.pretrain model_dir")
    ap.add_argument("--out", required=True, help="output .npz (a .json sidecar is written beside)")
    ap.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    args = ap.parse_args(argv)
    side = export_encoder(args.model_dir, args.out, args.step)
    print(
        f"wrote {args.out} ({side['num_params']:,} encoder params, step {side['source']['step']})"
    )


if __name__ == "__main__":
    from locca import cli

    cli.run(main)
