"""Builds tests/data/hf_siglip_tiny/ with Hugging Face transformers (fixture generation only).

Needs torch + transformers, which are NOT project dependencies; run it in a
separate environment, e.g.

    python -m venv /tmp/hfvenv
    /tmp/hfvenv/bin/pip install torch==2.13.0 transformers numpy safetensors
    /tmp/hfvenv/bin/python tests/fixtures_gen/make_hf_siglip.py [OUT_DIR]

Writes ``config.json`` + ``model.safetensors`` (``save_pretrained`` of a tiny
random ``SiglipVisionModel``: hidden 32, 2 layers, 4 heads, patch 8, image 32,
every weight perturbed so biases and LayerNorm matter) and ``io.npz`` with a
fixed input ``pixel_values`` (NCHW, [-1, 1]) and the reference
``last_hidden_state`` and ``pooler_output``.
"""

import os
import sys

import numpy as np
import torch
import transformers
from transformers import SiglipVisionConfig, SiglipVisionModel


def main(out_dir: str) -> None:
    torch.manual_seed(0)
    config = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_channels=3,
        image_size=32,
        patch_size=8,
        hidden_act="gelu_pytorch_tanh",
        layer_norm_eps=1e-6,
        attention_dropout=0.0,
    )
    model = SiglipVisionModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    pixel_values = np.random.default_rng(0).uniform(-1, 1, (2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        out = model(pixel_values=torch.from_numpy(pixel_values))
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    np.savez(
        os.path.join(out_dir, "io.npz"),
        pixel_values=pixel_values,
        last_hidden_state=out.last_hidden_state.numpy(),
        pooler_output=out.pooler_output.numpy(),
    )
    print(
        f"wrote {out_dir} with transformers {transformers.__version__}, torch {torch.__version__}"
    )


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "data", "hf_siglip_tiny"))
