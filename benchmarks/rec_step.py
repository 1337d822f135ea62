r"""Train-step time of the frozen-encoder REC decoder (``transfer.rec_protocol``).

    python -m benchmarks.rec_step [--batch 32] [--steps 50] [--depth 2]
        [--prompt 24] [--targets 12] [--vocab 2284]

One full update (frozen tiny encoder forward, decoder forward and backward,
AdamW) on one synthetic batch, with the loss computed two ways:

* ``full``: logits at all L = prompt + targets positions ([B, L, V]), prompt
  positions weighted 0 (the protocol's loss before the box slots);
* ``slots``: the vocabulary projection at the ``targets`` box slots only
  (``rec_protocol.make_loss_fn``, [B, K, V]); the same loss and gradients.

Also the encoder forward alone, the share of the step a cache of frozen
features could save. Prints each median step time (the variants timed
alternately, so machine noise hits them alike) and the ratio slots / full.
Defaults: the reproduction's REC decoder (gin/demo/transfer.gin: 2 layers,
inputs 24 / targets 12 tokens, batch 32) on the tiny encoder (64 px, 8 px
patches, width 64, 4 layers).
"""

from __future__ import annotations

import argparse
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from locca import losses
from transfer import common, rec_protocol

TINY = {"width": 64, "depth": 4, "mlp_dim": 256, "num_heads": 4, "patch_size": 8,
        "pool_type": "gap", "posemb": "sincos2d"}  # fmt: skip


def synthetic_batch(batch: int, prompt: int, targets: int, vocab: int, image_size: int, seed=0):
    """Prompts of 6..prompt-1 tokens, boxes of 5 tokens (4 coordinates + EOS), packed."""
    rng = np.random.default_rng(seed)
    inputs = np.zeros((batch, prompt), np.int32)
    boxes = np.zeros((batch, targets), np.int32)
    for b in range(batch):
        n = int(rng.integers(6, prompt))
        inputs[b, :n] = rng.integers(3, vocab, n)
        inputs[b, n - 1] = 1  # EOS
        boxes[b, :5] = [*rng.integers(3, vocab, 4), 1]
    packed = rec_protocol.pack_prompt_and_target(inputs, boxes, prompt + targets)
    packed.pop("prompt_length")
    image = rng.integers(0, 256, (batch, image_size, image_size, 3), dtype=np.uint8)
    return {"image": image, **packed}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=24)
    ap.add_argument("--targets", type=int, default=12)
    ap.add_argument("--vocab", type=int, default=2284)
    args = ap.parse_args(argv)

    spec = common.encoder(name="tiny", vit_config=TINY, resolution=64)
    max_len = args.prompt + args.targets
    decoder = rec_protocol.build_decoder(
        spec.vit_config, vocab_size=args.vocab, max_len=max_len, depth=args.depth
    )
    frozen = {"encoder": rec_protocol.encoder_params(spec)}
    params = {"decoder": nn.unbox(rec_protocol.init_decoder(decoder, spec, max_len, 1))}
    batch = jax.device_put(synthetic_batch(args.batch, args.prompt, args.targets, args.vocab, 64))
    encode = rec_protocol.make_encode_fn(spec)

    def full_loss(p, f, b, rng):
        logits = decoder.apply(
            {"params": p["decoder"]}, encode(f, b["image"]), b["decoder_input_tokens"]
        )  # [B, L, V]
        total, count, _ = losses.token_cross_entropy(
            logits, b["decoder_target_tokens"], b["decoder_loss_weights"]
        )
        return total / jnp.maximum(count, 1.0), {}

    optimizer = optax.adamw(1e-3)

    def make_step(loss_fn):
        @jax.jit
        def step(p, opt_state, f, b):  # frozen and batch as arguments, not constants
            (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                p, f, b, jax.random.PRNGKey(0)
            )
            updates, opt_state = optimizer.update(grads, opt_state, p)
            return optax.apply_updates(p, updates), opt_state, loss

        return step

    variants = {
        "full": make_step(full_loss),
        "slots": make_step(rec_protocol.make_loss_fn(spec, decoder, args.targets)),
    }
    encode_only = jax.jit(encode)
    state = {k: (params, optimizer.init(params)) for k in variants}
    times = {k: [] for k in [*variants, "encoder"]}
    for i in range(args.steps + 2):  # 2 untimed: compile, warm-up
        for name, step in variants.items():
            t0 = time.perf_counter()
            p, o, loss = step(*state[name], frozen, batch)
            jax.block_until_ready(loss)
            state[name] = (p, o)
            if i >= 2:
                times[name].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        jax.block_until_ready(encode_only(frozen, batch["image"]))
        if i >= 2:
            times["encoder"].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print(f"device {jax.devices()[0].platform}  batch {args.batch}  decoder {args.depth} layers  "
          f"L = {args.prompt} + {args.targets}  vocab {args.vocab}")  # fmt: skip
    print(f"REC step, full projection:  {med['full']:7.1f} ms")
    print(f"REC step, box slots only:   {med['slots']:7.1f} ms")
    print(f"frozen encoder forward:     {med['encoder']:7.1f} ms")
    print(f"ratio slots / full: {med['slots'] / med['full']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
