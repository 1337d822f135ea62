"""Prints what is inside a checkpoint file and which ViT it holds.

    python -m checkpoints.inspect PATH [--no-tree]

PATH is a big_vision ``.npz`` (optionally ``file.npz:subtree``) or a
``.safetensors`` file. Only the array headers are read (shapes and dtypes), so
large checkpoints are cheap to inspect. Prints every array's name, shape and
dtype, the parameter count, and -- when the names follow big_vision's ViT
layout (or Hugging Face SigLIP's / CLIP's ``vision_model.*``, converted by name,
with the ``config.json`` beside the file) -- the inferred ViT: width, depth,
mlp_dim, heads, patch, posemb, pooling, pre-norm, head and the resolution
implied by the position-embedding grid times the patch size.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import struct
import sys
import zipfile
from collections.abc import Mapping

import numpy as np

from checkpoints import bv_npz

# safetensors dtype tags -> printable names.
_ST_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
    "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}  # fmt: skip


def _npy_header(f) -> tuple[tuple[int, ...], str]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
    else:
        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    if dtype.kind == "V" and dtype.itemsize == 2 and dtype.names is None:
        return tuple(shape), "bfloat16"
    return tuple(shape), str(dtype)


def read_npz_headers(path: str) -> dict[str, tuple[tuple[int, ...], str]]:
    """{name: (shape, dtype)} of ``file.npz[:subtree]`` without reading the data."""
    file, sub = bv_npz.split_subtree(path)
    bv_npz._refuse_pickle(file)
    out = {}
    with zipfile.ZipFile(file) as z:
        for info in z.infolist():
            name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            with z.open(info) as f:
                out[name] = _npy_header(f)
    if sub is not None:
        prefix = sub + "/"
        out = {k[len(prefix) :]: v for k, v in out.items() if k.startswith(prefix)}
        if not out:
            raise KeyError(f"{file}: no keys under subtree {sub!r}")
    return out


def read_safetensors_headers(path: str) -> dict[str, tuple[tuple[int, ...], str]]:
    """{name: (shape, dtype)} from a safetensors header (8-byte length + JSON)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > 100_000_000:
            raise ValueError(f"{path}: implausible safetensors header length {n}")
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return {
        k: (tuple(v["shape"]), _ST_DTYPES.get(v["dtype"], v["dtype"])) for k, v in header.items()
    }


def read_headers(path: str) -> dict[str, tuple[tuple[int, ...], str]]:
    file, _ = bv_npz.split_subtree(path)
    bv_npz._refuse_pickle(file)
    if not os.path.exists(file):
        raise FileNotFoundError(f"{file}: no such file")
    if file.endswith(".safetensors"):
        return read_safetensors_headers(file)
    return read_npz_headers(path)


def _hf_to_bv(shapes: Mapping[str, tuple], file: str) -> tuple[str, dict, dict] | None:
    """Maps HF SigLIP/CLIP vision names to big_vision names (shapes only), if possible.

    Needs the ``config.json`` beside ``file`` (model type, number of heads).
    Returns (family, {big_vision name: shape}, HF-derived ``vit.Model``
    options that shapes cannot show: ``mlp_act``, ``ln_eps``), or None.
    """
    from checkpoints import hf_clip, hf_siglip

    cfg_path = os.path.join(os.path.dirname(os.path.abspath(file)), "config.json")
    if not os.path.exists(cfg_path):
        return None
    with open(cfg_path) as f:
        config = json.load(f)
    model_type = str(config.get("model_type", ""))
    for prefix, family, mod in (("siglip", "SigLIP", hf_siglip), ("clip", "CLIP", hf_clip)):
        if model_type.startswith(prefix):
            converted = mod.convert_shapes(shapes, config)
            if not converted:
                return None
            extra = mod.model_config_from_hf(config)
            extra = {k: extra[k] for k in ("mlp_act", "ln_eps") if k in extra}
            return family, converted, extra
    return None


def infer_vit_config(shapes: Mapping[str, tuple]) -> dict | None:
    """Infers ViT keyword arguments (plus ``resolution``) from big_vision names.

    Returns None when ``shapes`` does not look like a big_vision ViT. Pooling is
    "map" (MAPHead_0), "tok" (cls) or "gap" (no pooling parameters, which "0"
    and "none" share).
    """
    if "embedding/kernel" not in shapes:
        return None
    ph, pw, _, width = shapes["embedding/kernel"]
    blocks = {
        int(m.group(1)) for k in shapes if (m := re.match(r"Transformer/encoderblock_(\d+)/", k))
    }
    scanned = "Transformer/encoderblock/MlpBlock_0/Dense_0/kernel" in shapes
    if scanned:
        prefix = "Transformer/encoderblock/"
        depth = shapes[prefix + "MlpBlock_0/Dense_0/kernel"][0]
        lead = 1
    elif blocks:
        prefix, depth, lead = "Transformer/encoderblock_0/", max(blocks) + 1, 0
    else:
        return None
    mlp_dim = shapes[prefix + "MlpBlock_0/Dense_0/kernel"][lead + 1]
    num_heads = shapes[prefix + "MultiHeadDotProductAttention_0/query/kernel"][lead + 1]
    cfg = dict(
        width=int(width), depth=int(depth), mlp_dim=int(mlp_dim), num_heads=int(num_heads),
        patch_size=(int(ph), int(pw)),
    )  # fmt: skip
    if "pos_embedding" in shapes:
        cfg["posemb"] = "learn"
        n = shapes["pos_embedding"][1]
        g = math.isqrt(n)
        if g * g != n and math.isqrt(n - 1) ** 2 == n - 1:
            g = math.isqrt(n - 1)  # old layout with the cls posemb inside
        cfg["resolution"] = (g * ph, g * pw) if g * g in (n, n - 1) else None
    else:
        cfg["posemb"] = "sincos2d"
        cfg["resolution"] = None  # any resolution
    cfg["pool_type"] = "map" if "MAPHead_0/probe" in shapes else "tok" if "cls" in shapes else "gap"
    if "pre_norm/scale" in shapes:
        cfg["pre_norm"] = True
    if "pre_logits/kernel" in shapes:
        cfg["rep_size"] = int(shapes["pre_logits/kernel"][-1])
    cfg["num_classes"] = int(shapes["head/kernel"][-1]) if "head/kernel" in shapes else None
    cfg["scan"] = scanned
    from locca.models import vit

    cfg["variant"] = None
    for name, (w, d, m, h) in vit._VARIANTS.items():
        if (w, d, m, h) == (cfg["width"], cfg["depth"], cfg["mlp_dim"], cfg["num_heads"]):
            cfg["variant"] = f"{name}/{ph}" if ph == pw else name
    return cfg


def describe(path: str, show_tree: bool = True, out=None) -> dict | None:
    """Prints the report for ``path``; returns the inferred ViT config (or None)."""
    out = out or sys.stdout
    shapes_dtypes = read_headers(path)
    shapes = {k: s for k, (s, _) in shapes_dtypes.items()}
    print(f"{path}: {len(shapes)} arrays", file=out)
    if show_tree:
        width = max((len(k) for k in shapes), default=0)
        for k in sorted(shapes_dtypes):
            s, dt = shapes_dtypes[k]
            print(f"  {k:<{width}s}  {str(s):<22s} {dt}", file=out)
    total = sum(int(np.prod(s)) for s in shapes.values())
    print(f"parameters: {total:,}", file=out)

    tower = shapes
    file, sub = bv_npz.split_subtree(path)
    if sub is None and bv_npz.is_two_tower(shapes):
        tower = {k[4:]: v for k, v in shapes.items() if k.startswith("img/")}
        print(f"two-tower checkpoint: the image tower loads as '{file}:img'", file=out)
    extra = {}
    if "embedding/kernel" not in tower:
        converted = _hf_to_bv(tower, file)
        if converted:
            family, tower, extra = converted
            print(f"Hugging Face {family} vision names; mapped to big_vision names", file=out)
    cfg = infer_vit_config(tower)
    if cfg is None:
        print("ViT: not recognised (no big_vision embedding/encoderblock names)", file=out)
        return None
    cfg.update(extra)
    res = cfg["resolution"]
    res_s = f"{res[0]}x{res[1]}" if res else "any (sincos2d)"
    ph, pw = cfg["patch_size"]
    print(
        f"ViT: variant={cfg['variant'] or 'custom'} width={cfg['width']} depth={cfg['depth']} "
        f"mlp_dim={cfg['mlp_dim']} heads={cfg['num_heads']} patch={ph}x{pw} "
        f"posemb={cfg['posemb']} pool={cfg['pool_type']} resolution={res_s} "
        f"classes={cfg['num_classes']} rep_size={cfg.get('rep_size', False)} "
        f"scan={cfg['scan']}"
        + "".join(f" {k}={cfg[k]}" for k in ("pre_norm", "mlp_act", "ln_eps") if k in cfg),
        file=out,
    )
    return cfg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("path", help="file.npz[:subtree] or file.safetensors")
    parser.add_argument("--no-tree", action="store_true", help="only the summary lines")
    args = parser.parse_args(argv)
    describe(args.path, show_tree=not args.no_tree)
    return 0


if __name__ == "__main__":
    from locca import cli

    sys.exit(cli.run(main))
