"""gin/models/*.gin: each parses into a T5Config with the published sizes."""

import jax
import jax.numpy as jnp
import pytest
from flax import linen as nn

import gin
from locca.models.t5 import T5, T5Config, count_params

# name -> (approximate published parameter count, tolerance)
EXPECTED = {
    "t5_tiny": None,
    "t5_small": (76.96e6, 0.2e6),  # t5.1.1-small with vocab 32128
    "t5_base": (247.6e6, 1e6),
    "t5_large": (783.2e6, 2e6),
    "t5_xl": (2.85e9, 0.01e9),
    "ul2": (19.6e9, 0.1e9),  # "UL2 20B"
}


def closed_form_count(c: T5Config) -> int:
    d, hd, f, n_wi = c.emb_dim, c.num_heads * c.head_dim, c.mlp_dim, len(c.mlp_activations)
    mlp = n_wi * d * f + f * d
    rel = c.num_heads * c.relative_attention_num_buckets
    enc = c.num_encoder_layers * (4 * d * hd + mlp + 2 * d) + d + rel
    dec = c.num_decoder_layers * (8 * d * hd + mlp + 3 * d) + d + rel
    head = 0 if c.logits_via_embedding else d * c.vocab_size
    return c.vocab_size * d + enc + dec + head


def load(repo_root, name) -> T5Config:
    gin.clear_config()
    gin.external_configurable(T5Config, "T5Config", module="locca.models.t5")
    gin.parse_config_file(str(repo_root / "gin" / "models" / f"{name}.gin"))
    try:
        return gin.get_configurable("T5Config")()
    finally:
        gin.clear_config()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_model_gin_parses_and_has_published_size(repo_root, name):
    cfg = load(repo_root, name)
    assert isinstance(cfg, T5Config)
    shapes = jax.eval_shape(
        lambda: nn.unbox(
            T5(cfg).init(
                jax.random.PRNGKey(0), jnp.ones((1, 2), jnp.int32), jnp.ones((1, 2), jnp.int32)
            )
        )["params"]
    )
    n = count_params(shapes)
    assert n == closed_form_count(cfg)
    if EXPECTED[name] is not None:
        want, tol = EXPECTED[name]
        assert abs(n - want) < tol, (name, n)


def test_specific_bindings(repo_root):
    small = load(repo_root, "t5_small")
    assert (small.emb_dim, small.num_heads, small.head_dim, small.mlp_dim) == (512, 6, 64, 1024)
    assert small.num_encoder_layers == small.num_decoder_layers == 8
    assert small.mlp_activations == ("gelu", "linear") and not small.logits_via_embedding
    ul2 = load(repo_root, "ul2")
    assert ul2.mlp_activations == ("silu", "linear")
    assert (ul2.emb_dim, ul2.num_heads, ul2.head_dim, ul2.mlp_dim) == (4096, 16, 256, 16384)
    assert ul2.num_encoder_layers == ul2.num_decoder_layers == 32
    tiny = load(repo_root, "t5_tiny")
    assert (tiny.emb_dim, tiny.num_heads, tiny.head_dim, tiny.mlp_dim) == (64, 4, 16, 128)
    assert tiny.num_encoder_layers == tiny.num_decoder_layers == 2
    # The shapes vocabulary has 2284 ids; the tiny model rounds up to a multiple of 128.
    assert tiny.vocab_size == 2304
