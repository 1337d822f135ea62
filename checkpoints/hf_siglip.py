"""Hugging Face SigLIP vision tower (safetensors) -> our big_vision-named ViT.

A directory written by ``SiglipVisionModel.save_pretrained`` (``config.json``
with ``model_type`` "siglip_vision_model", ``model.safetensors``) or by
``SiglipModel`` (``model_type`` "siglip"; the ``vision_config`` and the
``vision_model.*`` tensors are used). No torch needed: safetensors files are
parsed here with numpy (bfloat16 via ml_dtypes).

Name mapping (HF -> big_vision; Linear weights [out, in] are transposed;
LayerNorm weight -> scale):

* ``embeddings.patch_embedding`` (weight OIHW -> kernel HWIO) -> ``embedding``
* ``embeddings.position_embedding.weight`` [N, D] -> ``pos_embedding`` [1, N, D]
* ``encoder.layers.{i}`` -> ``Transformer/encoderblock_{i}``:
  ``layer_norm1``/``layer_norm2`` -> ``LayerNorm_0``/``LayerNorm_1``;
  ``self_attn.{q,k,v}_proj`` -> ``MultiHeadDotProductAttention_0/{query,key,value}``
  (kernel [D, H, D/H], bias [H, D/H]); ``self_attn.out_proj`` -> ``.../out``
  (kernel [H, D/H, D]); ``mlp.fc1``/``mlp.fc2`` -> ``MlpBlock_0/Dense_0``/``Dense_1``
* ``post_layernorm`` -> ``Transformer/encoder_norm``
* ``head.probe``, ``head.attention.in_proj_{weight,bias}`` (q|k|v stacked),
  ``head.attention.out_proj``, ``head.layernorm``, ``head.mlp.fc1/fc2`` ->
  ``MAPHead_0/{probe, MultiHeadDotProductAttention_0, LayerNorm_0, MlpBlock_0}``

Outputs: HF ``last_hidden_state`` = our ``out["encoded"]``; HF ``pooler_output``
= our ``out["head_input"]`` (MAP pooling). HF takes NCHW pixels, we take NHWC.
"""

from __future__ import annotations

import json
import os
import re
import struct
import sys
from collections.abc import Mapping

import ml_dtypes
import numpy as np

_ST_NP = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}  # fmt: skip

_LN = {"weight": "scale", "bias": "bias"}


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """{name: array} from a .safetensors file (numpy only; memory-mapped)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > 100_000_000:
            raise ValueError(f"{path}: implausible safetensors header length {n}")
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
    out = {}
    for name, info in header.items():
        if info["dtype"] not in _ST_NP:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        dt = np.dtype(_ST_NP[info["dtype"]])
        out[name] = np.frombuffer(data[start:end], dtype=dt).reshape(info["shape"])
    return out


def vision_config(config: Mapping) -> dict:
    """The SiglipVisionConfig dict from a vision-only or a two-tower config.json."""
    if config.get("model_type") == "siglip":
        return dict(config.get("vision_config") or {})
    return dict(config)


def model_config_from_hf(config: Mapping) -> dict:
    """Our ``vit.Model`` keyword arguments for an HF SigLIP vision config.

    Raises ValueError for settings our ViT cannot reproduce (another GELU or
    LayerNorm epsilon).
    """
    vc = vision_config(config)
    act = vc.get("hidden_act", "gelu_pytorch_tanh")
    if act not in ("gelu_pytorch_tanh", "gelu_new", "gelu_fast"):
        raise ValueError(f"hidden_act {act!r}: our ViT uses the tanh-approximate GELU only")
    eps = float(vc.get("layer_norm_eps", 1e-6))
    if abs(eps - 1e-6) > 1e-12:
        raise ValueError(f"layer_norm_eps {eps}: our ViT uses LayerNorm epsilon 1e-6 only")
    p = int(vc.get("patch_size", 16))
    return dict(
        num_classes=None,
        width=int(vc.get("hidden_size", 768)),
        depth=int(vc.get("num_hidden_layers", 12)),
        mlp_dim=int(vc.get("intermediate_size", 3072)),
        num_heads=int(vc.get("num_attention_heads", 12)),
        patch_size=(p, p),
        posemb="learn",
        pool_type="map" if vc.get("vision_use_head", True) else "none",
    )


def _strip_prefix(flat: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Keeps the vision tower's tensors, without a leading ``vision_model.``."""
    if any(k.startswith("vision_model.") for k in flat):
        return {
            k[len("vision_model.") :]: v for k, v in flat.items() if k.startswith("vision_model.")
        }
    return dict(flat)


def convert(flat: Mapping[str, np.ndarray], num_heads: int) -> dict[str, np.ndarray]:
    """HF SigLIP vision tensors -> flat big_vision names (``/``-joined).

    Works on any array-like supporting ``.T``/``reshape``/``transpose`` (also
    zero-stride placeholders, so it can map shapes without the data).
    """
    hf = _strip_prefix(flat)
    out: dict[str, np.ndarray] = {}
    used: set[str] = set()

    def take(name):
        if name not in hf:
            raise KeyError(f"HF SigLIP checkpoint lacks tensor {name!r}")
        used.add(name)
        return hf[name]

    def dense(src, dst):
        out[f"{dst}/kernel"] = take(f"{src}.weight").T  # [in, out]
        out[f"{dst}/bias"] = take(f"{src}.bias")

    def ln(src, dst):
        for a, b in _LN.items():
            out[f"{dst}/{b}"] = take(f"{src}.{a}")

    def attn_in(dst, w, b):  # w [D_out, D_in], b [D_out]
        d = w.shape[1]
        out[f"{dst}/kernel"] = w.T.reshape(d, num_heads, -1)
        out[f"{dst}/bias"] = b.reshape(num_heads, -1)

    def attn_out(dst, w, b):
        d = w.shape[0]
        out[f"{dst}/kernel"] = w.T.reshape(num_heads, -1, d)
        out[f"{dst}/bias"] = b

    out["embedding/kernel"] = take("embeddings.patch_embedding.weight").transpose(2, 3, 1, 0)
    out["embedding/bias"] = take("embeddings.patch_embedding.bias")
    out["pos_embedding"] = take("embeddings.position_embedding.weight")[None]

    layers = sorted(
        {int(m.group(1)) for k in hf if (m := re.match(r"encoder\.layers\.(\d+)\.", k))}
    )
    for i in layers:
        s, d = f"encoder.layers.{i}", f"Transformer/encoderblock_{i}"
        ln(f"{s}.layer_norm1", f"{d}/LayerNorm_0")
        ln(f"{s}.layer_norm2", f"{d}/LayerNorm_1")
        mha = f"{d}/MultiHeadDotProductAttention_0"
        for hf_name, bv_name in (("q_proj", "query"), ("k_proj", "key"), ("v_proj", "value")):
            attn_in(
                f"{mha}/{bv_name}",
                take(f"{s}.self_attn.{hf_name}.weight"),
                take(f"{s}.self_attn.{hf_name}.bias"),
            )
        attn_out(
            f"{mha}/out",
            take(f"{s}.self_attn.out_proj.weight"),
            take(f"{s}.self_attn.out_proj.bias"),
        )
        dense(f"{s}.mlp.fc1", f"{d}/MlpBlock_0/Dense_0")
        dense(f"{s}.mlp.fc2", f"{d}/MlpBlock_0/Dense_1")
    ln("post_layernorm", "Transformer/encoder_norm")

    if "head.probe" in hf:
        out["MAPHead_0/probe"] = take("head.probe")
        w, b = take("head.attention.in_proj_weight"), take("head.attention.in_proj_bias")
        d = w.shape[1]
        mha = "MAPHead_0/MultiHeadDotProductAttention_0"
        for j, bv_name in enumerate(("query", "key", "value")):
            attn_in(f"{mha}/{bv_name}", w[j * d : (j + 1) * d], b[j * d : (j + 1) * d])
        attn_out(
            f"{mha}/out",
            take("head.attention.out_proj.weight"),
            take("head.attention.out_proj.bias"),
        )
        ln("head.layernorm", "MAPHead_0/LayerNorm_0")
        dense("head.mlp.fc1", "MAPHead_0/MlpBlock_0/Dense_0")
        dense("head.mlp.fc2", "MAPHead_0/MlpBlock_0/Dense_1")

    unused = sorted(set(hf) - used)
    if unused:
        raise ValueError(f"HF SigLIP tensors not mapped onto the ViT: {unused[:10]}")
    return out


def convert_shapes(shapes: Mapping[str, tuple], config: Mapping | None) -> dict | None:
    """Shapes-only version of :func:`convert` (for checkpoints.inspect)."""
    hf = _strip_prefix(shapes)
    if "embeddings.patch_embedding.weight" not in hf or config is None:
        return None
    heads = model_config_from_hf(config)["num_heads"]
    fake = {k: np.broadcast_to(np.float32(0), tuple(s)) for k, s in hf.items()}
    return {k: tuple(v.shape) for k, v in convert(fake, heads).items()}


def load_hf_siglip(directory: str) -> tuple[dict, dict]:
    """(model_config, params) from an HF SigLIP directory; params nested, numpy."""
    from checkpoints import bv_npz

    cfg_path = os.path.join(directory, "config.json")
    with open(cfg_path) as f:
        config = json.load(f)
    if not str(config.get("model_type", "")).startswith("siglip"):
        raise ValueError(f"{cfg_path}: model_type {config.get('model_type')!r} is not siglip")
    files = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors"))
    if not files:
        bad = [f for f in os.listdir(directory) if f.endswith((".bin", ".pt"))]
        hint = " (pickled .bin/.pt weights are refused: convert them to safetensors)" if bad else ""
        raise FileNotFoundError(f"{directory}: no *.safetensors file{hint}")
    flat: dict[str, np.ndarray] = {}
    for name in files:
        flat.update(read_safetensors(os.path.join(directory, name)))
    model_config = model_config_from_hf(config)
    params = convert(flat, model_config["num_heads"])
    params = {k: np.ascontiguousarray(v) for k, v in params.items()}
    return model_config, bv_npz.unflatten(params)


def run_reference(directory: str) -> dict[str, tuple[float, float]]:
    """Errors of our ViT vs ``io.npz`` (pixel_values NCHW, last_hidden_state, pooler_output)."""
    import jax
    import jax.numpy as jnp

    from checkpoints.verify import compare
    from locca.models import vit

    model_config, params = load_hf_siglip(directory)
    with np.load(os.path.join(directory, "io.npz"), allow_pickle=False) as f:
        io = {k: f[k] for k in f.files}
    image = jnp.asarray(io["pixel_values"], jnp.float32).transpose(0, 2, 3, 1)  # NCHW -> NHWC
    model = vit.Model(**model_config)
    _, out = jax.jit(lambda p, x: model.apply({"params": p}, x))(params, image)
    ours = {"last_hidden_state": out["encoded"], "pooler_output": out.get("head_input")}
    return {k: compare(np.asarray(ours[k]), io[k]) for k in ours if k in io}


def verify_dir(directory: str, rtol: float = 1e-5) -> bool:
    """Hook for ``python -m checkpoints.verify``: prints errors, True if within rtol."""
    from checkpoints.verify import report

    return report(os.path.basename(os.path.normpath(directory)), run_reference(directory), rtol)


if __name__ == "__main__":
    sys.exit(0 if verify_dir(sys.argv[1]) else 1)
