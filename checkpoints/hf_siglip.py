r"""Hugging Face SigLIP vision tower (safetensors) -> our big_vision-named ViT.

    python -m checkpoints.hf_siglip DIR                    # parity vs DIR/io.npz
    python -m checkpoints.hf_siglip DIR --out siglip.npz   # big_vision npz + siglip.json

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
= our ``out["head_input"]`` (MAP pooling). HF takes NCHW pixels, we take NHWC;
SigLIP pixels are ``x / 127.5 - 1`` (value range [-1, 1]).

Export (shared with ``checkpoints.hf_clip`` via :func:`export_hf_npz`): a
big_vision npz (single tower, no ``:img`` subtree) and a sidecar ``X.json``
beside it (``vit_config``, ``resolution``, ``value_range`` [-1, 1]) that
``transfer.encoder`` reads when its gin file gives no ``vit_config``.
HF SigLIP's ``gelu_pytorch_tanh`` and ``layer_norm_eps`` 1e-6 are our ViT's
defaults (``mlp_act="gelu"``, ``ln_eps=1e-6``), so the config omits them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import struct
import sys
from collections.abc import Callable, Mapping, Sequence

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


def image_size(config: Mapping) -> int:
    """The input resolution (pixels, square) the checkpoint was trained at."""
    return int(vision_config(config).get("image_size", 224))


def strip_prefix(flat: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Keeps the vision tower's tensors, without a leading ``vision_model.``."""
    if any(k.startswith("vision_model.") for k in flat):
        return {
            k[len("vision_model.") :]: v for k, v in flat.items() if k.startswith("vision_model.")
        }
    return dict(flat)


class TensorMap:
    """Collects big_vision-named tensors from HF vision-tower tensors.

    Shared by the SigLIP and CLIP converters: HF names -> ``out`` (flat,
    ``/``-joined big_vision names), remembering which HF tensors were used so
    that :meth:`finish` can refuse leftovers.
    """

    def __init__(self, hf: Mapping[str, np.ndarray], num_heads: int, family: str):
        self.hf, self.num_heads, self.family = hf, num_heads, family
        self.out: dict[str, np.ndarray] = {}
        self.used: set[str] = set()

    def take(self, name):
        if name not in self.hf:
            raise KeyError(f"HF {self.family} checkpoint lacks tensor {name!r}")
        self.used.add(name)
        return self.hf[name]

    def dense(self, src, dst):
        self.out[f"{dst}/kernel"] = self.take(f"{src}.weight").T  # [in, out]
        self.out[f"{dst}/bias"] = self.take(f"{src}.bias")

    def ln(self, src, dst):
        for a, b in _LN.items():
            self.out[f"{dst}/{b}"] = self.take(f"{src}.{a}")

    def attn_in(self, dst, w, b):  # w [D_out, D_in], b [D_out]
        d = w.shape[1]
        self.out[f"{dst}/kernel"] = w.T.reshape(d, self.num_heads, -1)  # [D, H, D/H]
        self.out[f"{dst}/bias"] = b.reshape(self.num_heads, -1)  # [H, D/H]

    def attn_out(self, dst, w, b):
        d = w.shape[0]
        self.out[f"{dst}/kernel"] = w.T.reshape(self.num_heads, -1, d)  # [H, D/H, D]
        self.out[f"{dst}/bias"] = b

    def encoder_layers(self):
        """``encoder.layers.{i}`` (pre-LN blocks, separate q/k/v) -> ``encoderblock_{i}``."""
        layers = sorted(
            {int(m.group(1)) for k in self.hf if (m := re.match(r"encoder\.layers\.(\d+)\.", k))}
        )
        for i in layers:
            s, d = f"encoder.layers.{i}", f"Transformer/encoderblock_{i}"
            self.ln(f"{s}.layer_norm1", f"{d}/LayerNorm_0")
            self.ln(f"{s}.layer_norm2", f"{d}/LayerNorm_1")
            mha = f"{d}/MultiHeadDotProductAttention_0"
            for hf_name, bv_name in (("q_proj", "query"), ("k_proj", "key"), ("v_proj", "value")):
                self.attn_in(
                    f"{mha}/{bv_name}",
                    self.take(f"{s}.self_attn.{hf_name}.weight"),
                    self.take(f"{s}.self_attn.{hf_name}.bias"),
                )
            self.attn_out(
                f"{mha}/out",
                self.take(f"{s}.self_attn.out_proj.weight"),
                self.take(f"{s}.self_attn.out_proj.bias"),
            )
            self.dense(f"{s}.mlp.fc1", f"{d}/MlpBlock_0/Dense_0")
            self.dense(f"{s}.mlp.fc2", f"{d}/MlpBlock_0/Dense_1")

    def finish(self, ignore: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """``out``; ValueError if an HF tensor (other than ``ignore``) was not mapped."""
        unused = sorted(set(self.hf) - self.used - set(ignore))
        if unused:
            raise ValueError(f"HF {self.family} tensors not mapped onto the ViT: {unused[:10]}")
        return self.out


def convert(flat: Mapping[str, np.ndarray], num_heads: int) -> dict[str, np.ndarray]:
    """HF SigLIP vision tensors -> flat big_vision names (``/``-joined).

    Works on any array-like supporting ``.T``/``reshape``/``transpose`` (also
    zero-stride placeholders, so it can map shapes without the data).
    """
    m = TensorMap(strip_prefix(flat), num_heads, "SigLIP")
    out = m.out
    out["embedding/kernel"] = m.take("embeddings.patch_embedding.weight").transpose(2, 3, 1, 0)
    out["embedding/bias"] = m.take("embeddings.patch_embedding.bias")
    out["pos_embedding"] = m.take("embeddings.position_embedding.weight")[None]
    m.encoder_layers()
    m.ln("post_layernorm", "Transformer/encoder_norm")

    if "head.probe" in m.hf:
        out["MAPHead_0/probe"] = m.take("head.probe")
        w, b = m.take("head.attention.in_proj_weight"), m.take("head.attention.in_proj_bias")
        d = w.shape[1]
        mha = "MAPHead_0/MultiHeadDotProductAttention_0"
        for j, bv_name in enumerate(("query", "key", "value")):
            m.attn_in(f"{mha}/{bv_name}", w[j * d : (j + 1) * d], b[j * d : (j + 1) * d])
        m.attn_out(
            f"{mha}/out",
            m.take("head.attention.out_proj.weight"),
            m.take("head.attention.out_proj.bias"),
        )
        m.ln("head.layernorm", "MAPHead_0/LayerNorm_0")
        m.dense("head.mlp.fc1", "MAPHead_0/MlpBlock_0/Dense_0")
        m.dense("head.mlp.fc2", "MAPHead_0/MlpBlock_0/Dense_1")
    return m.finish()


def convert_shapes(shapes: Mapping[str, tuple], config: Mapping | None) -> dict | None:
    """Shapes-only version of :func:`convert` (for checkpoints.inspect)."""
    return shapes_via(convert, model_config_from_hf, shapes, config)


def shapes_via(convert_fn, config_fn, shapes: Mapping[str, tuple], config: Mapping | None):
    """Runs ``convert_fn`` on zero-stride placeholders: big_vision name -> shape, or None."""
    hf = strip_prefix(shapes)
    if "embeddings.patch_embedding.weight" not in hf or config is None:
        return None
    heads = config_fn(config)["num_heads"]
    fake = {k: np.broadcast_to(np.float32(0), tuple(s)) for k, s in hf.items()}
    return {k: tuple(np.shape(v)) for k, v in convert_fn(fake, heads).items()}


def read_hf_dir(directory: str, model_type: str) -> tuple[dict, dict[str, np.ndarray]]:
    """(config.json dict, {name: array} of every ``*.safetensors``) of an HF directory.

    ``model_type`` is the prefix ``config["model_type"]`` must start with
    ("siglip", "clip"). Pickled ``.bin``/``.pt`` weights are refused.
    """
    cfg_path = os.path.join(directory, "config.json")
    with open(cfg_path) as f:
        config = json.load(f)
    if not str(config.get("model_type", "")).startswith(model_type):
        raise ValueError(f"{cfg_path}: model_type {config.get('model_type')!r} is not {model_type}")
    files = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors"))
    if not files:
        bad = [f for f in os.listdir(directory) if f.endswith((".bin", ".pt"))]
        hint = " (pickled .bin/.pt weights are refused: convert them to safetensors)" if bad else ""
        raise FileNotFoundError(f"{directory}: no *.safetensors file{hint}")
    flat: dict[str, np.ndarray] = {}
    for name in files:
        flat.update(read_safetensors(os.path.join(directory, name)))
    return config, flat


def nested_params(flat: Mapping[str, np.ndarray]) -> dict:
    """Flat ``/``-joined converted tensors -> nested dict of contiguous numpy arrays."""
    from checkpoints import bv_npz

    return bv_npz.unflatten({k: np.ascontiguousarray(v) for k, v in flat.items()})


def load_hf_siglip(directory: str) -> tuple[dict, dict]:
    """(model_config, params) from an HF SigLIP directory; params nested, numpy."""
    config, flat = read_hf_dir(directory, "siglip")
    model_config = model_config_from_hf(config)
    return model_config, nested_params(convert(flat, model_config["num_heads"]))


def apply_nchw(model_config: Mapping, params: Mapping, pixel_values: np.ndarray) -> dict:
    """Our ViT's ``out`` dict for HF-style NCHW ``pixel_values`` (jit, float32)."""
    import jax
    import jax.numpy as jnp

    from locca.models import vit

    image = jnp.asarray(pixel_values, jnp.float32).transpose(0, 2, 3, 1)  # NCHW -> NHWC
    model = vit.Model(**model_config)
    _, out = jax.jit(lambda p, x: model.apply({"params": p}, x))(params, image)
    return out


def read_io(directory: str) -> dict[str, np.ndarray]:
    """The reference arrays of ``directory/io.npz`` (no pickles)."""
    with np.load(os.path.join(directory, "io.npz"), allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def run_reference(directory: str) -> dict[str, tuple[float, float]]:
    """Errors of our ViT vs ``io.npz`` (pixel_values NCHW, last_hidden_state, pooler_output)."""
    from checkpoints.verify import compare

    model_config, params = load_hf_siglip(directory)
    io = read_io(directory)
    out = apply_nchw(model_config, params, io["pixel_values"])
    ours = {"last_hidden_state": out["encoded"], "pooler_output": out.get("head_input")}
    return {k: compare(np.asarray(ours[k]), io[k]) for k in ours if k in io}


def verify_dir(directory: str, rtol: float = 1e-5) -> bool:
    """Hook for ``python -m checkpoints.verify``: prints errors, True if within rtol."""
    from checkpoints.verify import report

    return report(os.path.basename(os.path.normpath(directory)), run_reference(directory), rtol)


def export_hf_npz(
    directory: str,
    out: str,
    *,
    family: str,
    model_type: str,
    model_config_fn: Callable[[Mapping], dict],
    convert_fn: Callable[[Mapping, int], dict],
    image_size_fn: Callable[[Mapping], int],
    pixels: Mapping,
) -> dict:
    """An HF vision tower -> big_vision npz ``out`` + sidecar ``<out minus .npz>.json``.

    The one export of the HF converters (SigLIP here, CLIP in ``hf_clip``):
    reads ``directory`` (:func:`read_hf_dir` with ``model_type``), maps it with
    ``convert_fn(flat, num_heads)`` and writes the npz atomically. The sidecar
    holds ``vit_config`` (``model_config_fn(config)`` without num_classes),
    ``resolution`` (``image_size_fn(config)``), the pixel normalisation
    ``pixels`` (``value_range`` or ``mean``/``std``), ``source``
    (``{"hf_<family>_dir": abs path}``) and ``num_params``. Returns the sidecar.
    """
    from checkpoints import bv_npz

    config, flat = read_hf_dir(directory, model_type)
    model_config = model_config_fn(config)
    params = convert_fn(flat, model_config["num_heads"])
    bv_npz.save_npz(out, nested_params(params))
    vit_config = {k: v for k, v in model_config.items() if k != "num_classes"}
    sidecar = {
        "format": "big_vision ViT npz ('/'-joined parameter names)",
        "vit_config": {**vit_config, "patch_size": list(vit_config["patch_size"])},
        "resolution": image_size_fn(config),
        **{k: list(v) for k, v in pixels.items()},
        "source": {f"hf_{family}_dir": os.path.abspath(directory)},
        "num_params": int(sum(np.prod(np.shape(v)) for v in params.values())),
    }
    bv_npz.save_sidecar(out, sidecar)
    return sidecar


SIGLIP_VALUE_RANGE = (-1.0, 1.0)  # pixels / 127.5 - 1


def export_npz(directory: str, out: str) -> dict:
    """Writes the tower as a big_vision npz ``out`` plus sidecar ``<out>.json``.

    The sidecar holds the ViT config, the resolution and SigLIP's value range
    [-1, 1]. Returns the sidecar dict.
    """
    return export_hf_npz(
        directory,
        out,
        family="siglip",
        model_type="siglip",
        model_config_fn=model_config_from_hf,
        convert_fn=convert,
        image_size_fn=image_size,
        pixels={"value_range": SIGLIP_VALUE_RANGE},
    )


def cli(argv, *, description: str, family: str, verify_fn, export_fn) -> int:
    """``python -m checkpoints.hf_<family> DIR [--out X.npz]``: verify, or export."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("directory", help=f"HF {family} directory (config.json + model.safetensors)")
    ap.add_argument("--out", help="write a big_vision npz (+ sidecar JSON) instead of verifying")
    args = ap.parse_args(argv)
    if args.out:
        side = export_fn(args.directory, args.out)
        print(f"wrote {args.out}: {side['num_params']:,} parameters, {side['vit_config']}")
        return 0
    return 0 if verify_fn(args.directory) else 1


def main(argv: Sequence[str] | None = None) -> int:
    return cli(
        argv,
        description=__doc__.splitlines()[0],
        family="SigLIP",
        verify_fn=verify_dir,
        export_fn=export_npz,
    )


if __name__ == "__main__":
    from locca import cli

    sys.exit(cli.run(main))
