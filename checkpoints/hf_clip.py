r"""Hugging Face CLIP vision tower (safetensors) -> our big_vision-named ViT.

    python -m checkpoints.hf_clip DIR                  # parity vs DIR/io.npz
    python -m checkpoints.hf_clip DIR --out clip.npz   # big_vision npz + clip.json

A directory written by ``CLIPVisionModel.save_pretrained`` (``config.json``
with ``model_type`` "clip_vision_model", flat vision config) or by
``CLIPModel`` / ``CLIPVisionModelWithProjection`` (``model_type`` "clip", the
nested ``vision_config``); only ``model.safetensors`` (any ``*.safetensors``)
is read, with numpy. Tensors named ``vision_model.*`` are used when present
(``text_model.*``, ``visual_projection``, ``text_projection`` and
``logit_scale`` are ignored); the non-persistent ``position_ids`` buffer that
old checkpoints stored is ignored too.

Our ViT config: ``pool_type="tok"``, ``pre_norm=True``, ``ln_eps`` =
``layer_norm_eps`` (CLIP: 1e-5), ``mlp_act`` "quick_gelu" (HF "quick_gelu")
or "gelu_exact" (HF "gelu", the erf GELU); any other ``hidden_act`` raises.

Name mapping (HF -> big_vision; Linear weights [out, in] are transposed;
LayerNorm weight -> scale); shared with SigLIP via ``hf_siglip.TensorMap``:

* ``embeddings.patch_embedding.weight`` (OIHW -> HWIO) -> ``embedding/kernel``;
  CLIP's patch conv has no bias -> ``embedding/bias`` = 0 (exact).
* ``embeddings.position_embedding.weight`` [1+N, D]: rows 1.. ->
  ``pos_embedding`` [1, N, D]; row 0 (the cls position) is folded into the
  class token: ``cls`` = ``class_embedding + position_embedding[0]`` [1, 1, D]
  (big_vision adds posemb to the patches only, then prepends ``cls``; the sum
  is exactly CLIP's ``class_embedding + posemb[0]`` entering the blocks).
* ``pre_layrnorm`` -> ``pre_norm``; ``encoder.layers.{i}`` as SigLIP;
  ``post_layernorm`` -> ``Transformer/encoder_norm``.

Outputs: HF ``pooler_output`` = ``post_layernorm(last_hidden_state[:, 0])`` =
our ``out["head_input"]``. HF ``last_hidden_state`` has no final norm; our
``out["encoded"]`` [B, 1+N, D] is ``post_layernorm`` applied to every token
(HF's module applied to ``last_hidden_state``), and ``out["encoder"]["pre_ln"]``
is ``last_hidden_state`` itself. HF takes NCHW pixels, we take NHWC; pixels
are CLIP-normalised ``(x/255 - mean) / std`` (``CLIP_MEAN``/``CLIP_STD``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

import numpy as np

from checkpoints import hf_siglip

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # per channel, on the [0, 1] scale
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# HF hidden_act -> our vit.Model(mlp_act=...).
_ACTS = {"quick_gelu": "quick_gelu", "gelu": "gelu_exact"}
# Tensors of a vision tower that carry no weights (old transformers stored the buffer).
_IGNORED = ("embeddings.position_ids",)


def vision_config(config: Mapping) -> dict:
    """The CLIPVisionConfig dict from a vision-only (flat) or a two-tower (nested) config."""
    if config.get("model_type") == "clip" or "vision_config" in config:
        return dict(config.get("vision_config") or {})
    return dict(config)


def model_config_from_hf(config: Mapping) -> dict:
    """Our ``vit.Model`` keyword arguments for an HF CLIP (vision) config.

    Missing keys take CLIPVisionConfig's defaults (HF writes only non-default
    values). Raises ValueError for a ``hidden_act`` other than quick_gelu/gelu.
    """
    vc = vision_config(config)
    act = vc.get("hidden_act", "quick_gelu")
    if act not in _ACTS:
        raise ValueError(
            f"hidden_act {act!r}: CLIP towers map only 'quick_gelu' (x*sigmoid(1.702x)) "
            f"or 'gelu' (erf) onto our ViT's mlp_act"
        )
    p = int(vc.get("patch_size", 32))
    return dict(
        num_classes=None,
        width=int(vc.get("hidden_size", 768)),
        depth=int(vc.get("num_hidden_layers", 12)),
        mlp_dim=int(vc.get("intermediate_size", 3072)),
        num_heads=int(vc.get("num_attention_heads", 12)),
        patch_size=(p, p),
        posemb="learn",
        pool_type="tok",
        pre_norm=True,
        mlp_act=_ACTS[act],
        ln_eps=float(vc.get("layer_norm_eps", 1e-5)),
    )


def image_size(config: Mapping) -> int:
    """The input resolution (pixels, square) the checkpoint was trained at."""
    return int(vision_config(config).get("image_size", 224))


def convert(flat: Mapping[str, np.ndarray], num_heads: int) -> dict[str, np.ndarray]:
    """HF CLIP vision tensors -> flat big_vision names (``/``-joined).

    Works on zero-stride placeholders too (``checkpoints.inspect`` maps shapes).
    """
    m = hf_siglip.TensorMap(hf_siglip.strip_prefix(flat), num_heads, "CLIP")
    out = m.out
    w = m.take("embeddings.patch_embedding.weight")  # [D, 3, P, P]
    out["embedding/kernel"] = w.transpose(2, 3, 1, 0)  # [P, P, 3, D]
    if "embeddings.patch_embedding.bias" in m.hf:
        out["embedding/bias"] = m.take("embeddings.patch_embedding.bias")
    else:
        out["embedding/bias"] = np.zeros(w.shape[:1], w.dtype)  # [D]; CLIP's conv has none
    pe = m.take("embeddings.position_embedding.weight")  # [1+N, D], row 0 = cls position
    out["pos_embedding"] = pe[None, 1:]  # [1, N, D]
    cls = m.take("embeddings.class_embedding")  # [D]
    out["cls"] = (np.asarray(cls, np.float32) + np.asarray(pe[0], np.float32)).astype(cls.dtype)[
        None, None
    ]  # [1, 1, D]
    m.ln("pre_layrnorm", "pre_norm")
    m.encoder_layers()
    m.ln("post_layernorm", "Transformer/encoder_norm")
    return m.finish(ignore=_IGNORED)


def convert_shapes(shapes: Mapping[str, tuple], config: Mapping | None) -> dict | None:
    """Shapes-only version of :func:`convert` (for checkpoints.inspect)."""
    return hf_siglip.shapes_via(convert, model_config_from_hf, shapes, config)


def load_hf_clip(directory: str) -> tuple[dict, dict]:
    """(model_config, params) from an HF CLIP directory; params nested, numpy."""
    config, flat = hf_siglip.read_hf_dir(directory, "clip")
    model_config = model_config_from_hf(config)
    return model_config, hf_siglip.nested_params(convert(flat, model_config["num_heads"]))


def run_reference(directory: str) -> dict[str, tuple[float, float]]:
    """Errors of our ViT vs ``io.npz``.

    ``io.npz``: ``pixel_values`` (NCHW) and any of ``post_layernorm`` (HF's
    post_layernorm on every token of last_hidden_state, vs our "encoded"),
    ``pooler_output`` (vs "head_input") and ``last_hidden_state`` (vs the
    encoder output before ``encoder_norm``).
    """
    from checkpoints.verify import compare

    model_config, params = load_hf_clip(directory)
    io = hf_siglip.read_io(directory)
    out = hf_siglip.apply_nchw(model_config, params, io["pixel_values"])
    ours = {
        "last_hidden_state": out["encoder"]["pre_ln"],
        "post_layernorm": out["encoded"],
        "pooler_output": out["head_input"],
    }
    return {k: compare(np.asarray(v), io[k]) for k, v in ours.items() if k in io}


def verify_dir(directory: str, rtol: float = 1e-5) -> bool:
    """Hook for ``python -m checkpoints.verify``: prints errors, True if within rtol."""
    from checkpoints.verify import report

    return report(os.path.basename(os.path.normpath(directory)), run_reference(directory), rtol)


def export_npz(directory: str, out: str) -> dict:
    """Writes the tower as a big_vision npz ``out`` plus sidecar ``<out>.json``.

    The sidecar (read by ``transfer.encoder`` when its gin gives no
    ``vit_config``) holds the ViT config, the resolution and CLIP's mean/std
    (``hf_siglip.export_hf_npz``, shared with SigLIP). Returns the sidecar dict.
    """
    return hf_siglip.export_hf_npz(
        directory,
        out,
        family="clip",
        model_type="clip",
        model_config_fn=model_config_from_hf,
        convert_fn=convert,
        image_size_fn=image_size,
        pixels={"mean": CLIP_MEAN, "std": CLIP_STD},
    )


def main(argv: Sequence[str] | None = None) -> int:
    return hf_siglip.cli(
        argv,
        description=__doc__.splitlines()[0],
        family="CLIP",
        verify_fn=verify_dir,
        export_fn=export_npz,
    )


if __name__ == "__main__":
    from locca import cli

    sys.exit(cli.run(main))
