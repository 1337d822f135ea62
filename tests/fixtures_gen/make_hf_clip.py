"""Builds tests/data/hf_clip_tiny/ with Hugging Face transformers (fixture generation only).

Needs torch + transformers, which are NOT project dependencies; run it in a
separate environment, e.g.

    python3.11 -m venv /tmp/hfvenv
    /tmp/hfvenv/bin/pip install torch==2.13.0 transformers numpy safetensors
    /tmp/hfvenv/bin/python tests/fixtures_gen/make_hf_clip.py [OUT_DIR]

Writes ``config.json`` + ``model.safetensors`` (``save_pretrained`` of a tiny
random ``CLIPVisionModel``: hidden 32, 2 layers, 4 heads, patch 8, image 32,
quick-GELU, LayerNorm epsilon 1e-5 as CLIP; every weight perturbed so biases,
LayerNorms and the class embedding matter) and ``io.npz`` with

* ``pixel_values`` [2, 3, 32, 32] (NCHW, CLIP-normalised scale, fixed seed);
* ``last_hidden_state`` [2, 17, 32] (HF: no final norm);
* ``post_layernorm`` [2, 17, 32]: HF's own ``post_layernorm`` module applied
  to every token of ``last_hidden_state``;
* ``pooler_output`` [2, 32] = ``post_layernorm(last_hidden_state[:, 0])``;
* ``post_layernorm_gelu``, ``pooler_output_gelu``: the same weights run with
  ``hidden_act="gelu"`` (exact erf GELU; each MLP's activation swapped), for
  the loader's "gelu" mapping.
"""

import os
import sys

import numpy as np
import torch
import transformers
from transformers import CLIPVisionConfig, CLIPVisionModel
from transformers.activations import ACT2FN


def _tower(model):
    """The module holding embeddings/pre_layrnorm/encoder/post_layernorm (old and new HF)."""
    return getattr(model, "vision_model", model)


def _run(model, pixel_values):
    with torch.no_grad():
        out = model(pixel_values=torch.from_numpy(pixel_values))
        post = _tower(model).post_layernorm(out.last_hidden_state)
    return out, post


def main(out_dir: str) -> None:
    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_channels=3,
        image_size=32,
        patch_size=8,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        attention_dropout=0.0,
    )
    model = CLIPVisionModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    pixel_values = np.random.default_rng(0).uniform(-1.8, 2.1, (2, 3, 32, 32)).astype(np.float32)
    out, post = _run(model, pixel_values)
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)

    for layer in _tower(model).encoder.layers:  # same weights, exact (erf) GELU
        layer.mlp.activation_fn = ACT2FN["gelu"]
    out_gelu, post_gelu = _run(model, pixel_values)

    np.savez(
        os.path.join(out_dir, "io.npz"),
        pixel_values=pixel_values,
        last_hidden_state=out.last_hidden_state.numpy(),
        post_layernorm=post.numpy(),
        pooler_output=out.pooler_output.numpy(),
        post_layernorm_gelu=post_gelu.numpy(),
        pooler_output_gelu=out_gelu.pooler_output.numpy(),
    )
    print(
        f"wrote {out_dir} with transformers {transformers.__version__}, torch {torch.__version__}"
    )


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "data", "hf_clip_tiny"))
