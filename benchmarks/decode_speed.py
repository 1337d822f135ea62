"""T5 greedy decoding speed: KV cache vs full recompute (tokens/s and ratio).

A T5 v1.1-small-shaped model (emb 512, 6 heads of 64, mlp 1024, 8+8 layers;
random weights, float32) decodes `--new_tokens` (default 32) tokens for a
batch of 8 with a 32-token encoder input, without EOS stopping, once with the
KV cache (one decoder step per token, cross-attention keys/values computed
once) and once by full recompute (the whole decoder re-run on the
max_len-token buffer every step). Compilation is excluded (one warm-up run
each); one timed run each. tokens/s = batch * new_tokens / seconds (wall
clock; also per CPU second of this process, less sensitive to a busy host).
Run: ``python -m benchmarks.decode_speed [--vocab 32128] [--new_tokens 32]``.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from locca import decoding
from locca.models import t5 as t5_lib


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--new_tokens", type=int, default=32)
    p.add_argument("--enc_len", type=int, default=32)
    p.add_argument("--vocab", type=int, default=32128)
    p.add_argument("--layers", type=int, default=8)
    args = p.parse_args(argv)

    cfg = t5_lib.T5Config(
        vocab_size=args.vocab,
        emb_dim=512,
        num_heads=6,
        head_dim=64,
        mlp_dim=1024,
        num_encoder_layers=args.layers,
        num_decoder_layers=args.layers,
    )
    model = t5_lib.T5(cfg)
    params = t5_lib.random_params(cfg, 0)
    rng = np.random.default_rng(0)
    enc = jnp.asarray(rng.integers(2, args.vocab, (args.batch, args.enc_len)), jnp.int32)
    encoded = jax.jit(lambda p, e: model.apply({"params": p}, e, method=t5_lib.T5.encode))(
        params, enc
    )
    mask = enc > 0
    n = args.batch * args.new_tokens
    print(
        f"device {jax.devices()[0].device_kind}; T5 {t5_lib.count_params(params) / 1e6:.1f}M "
        f"params, batch {args.batch}, encoder length {args.enc_len}, {args.new_tokens} new tokens"
    )
    results, tokens = {}, {}
    for name, use_cache in (("kv_cache", True), ("recompute", False)):

        def run(use_cache=use_cache):
            step, cache = decoding.t5_tokens_to_logits(
                model, params, encoded, mask, max_len=args.new_tokens, use_cache=use_cache
            )
            out = decoding.greedy(
                step, cache, batch_size=args.batch, max_len=args.new_tokens, eos_id=None
            )
            return jax.block_until_ready(out)

        run()  # compile
        t, c = time.perf_counter(), time.process_time()
        tokens[name] = np.asarray(run())
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        results[name] = n / wall
        print(f"{name:10s}: {results[name]:9.1f} tokens/s wall ({n / cpu:8.1f} per CPU second)")
    same = np.array_equal(tokens["kv_cache"], tokens["recompute"])
    print(
        f"ratio kv_cache / recompute: {results['kv_cache'] / results['recompute']:.2f}x "
        f"(identical tokens: {same})"
    )


if __name__ == "__main__":
    main()
