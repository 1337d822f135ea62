"""Hugging Face T5 checkpoints (T5 v1.0, v1.1, flan-T5, UL2) -> locca T5.

A checkpoint directory holds `config.json` and either `model.safetensors`
or a sharded `model.safetensors.index.json` plus its shards, as
`save_pretrained` writes them. Every architecture choice is read from
config.json; tensors are read with `safetensors.numpy` (no torch).

Name mapping (HF torch Linear weights are [out, in]; ours are [in, out]):
  shared.weight                                   -> token_embedder/embedding
  encoder.block.i.layer.0.SelfAttention.{q,k,v,o} -> encoder/layers_i/attention/
                                                     {query,key,value,out}/kernel
  encoder.block.i.layer.0.layer_norm              -> .../pre_attention_layer_norm/scale
  encoder.block.i.layer.1.DenseReluDense.{wi,wi_0,wi_1,wo}
                                                  -> .../mlp/{wi,wi_0,wi_1,wo}/kernel
  encoder.block.i.layer.1.layer_norm              -> .../pre_mlp_layer_norm/scale
  encoder.block.0.layer.0.SelfAttention.relative_attention_bias [buckets, heads]
                                                  -> encoder/relpos_bias/rel_embedding
                                                     [heads, buckets]
  encoder.final_layer_norm                        -> encoder/encoder_norm/scale
  decoder.block.i.layer.{0,1,2}: SelfAttention / EncDecAttention / DenseReluDense
      -> self_attention / encoder_decoder_attention / mlp with
         pre_self_attention_layer_norm / pre_cross_attention_layer_norm /
         pre_mlp_layer_norm
  decoder.final_layer_norm                        -> decoder/decoder_norm/scale
  lm_head.weight (untied only)                    -> decoder/logits_dense/kernel

`verify_dir(dir)` reproduces a fixture's `io.npz` (see
../shared/fixtures/README.md) and is called by `python -m checkpoints.verify`.
"""

from __future__ import annotations

import json
import pathlib
from typing import NamedTuple

import numpy as np

# Hugging Face activation names -> ours (see locca.models.t5._ACTIVATIONS).
_HF_ACTIVATIONS = {
    "gelu_new": "gelu",
    "gelu_pytorch_tanh": "gelu",
    "gelu_fast": "gelu",
    "gelu": "gelu_exact",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}

# Tensors a tied/untied HF checkpoint may carry as copies of `shared.weight`.
_EMBEDDING_ALIASES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")


def _read_json(path: pathlib.Path) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found (expected a Hugging Face T5 file)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def config_from_hf(hf: dict, source: str = "config.json"):
    """T5Config from a Hugging Face T5 config dict (missing keys as HF defaults)."""
    from locca.models.t5 import T5Config

    def need(key):
        if key not in hf:
            raise KeyError(f"{source}: missing required key {key!r}")
        return hf[key]

    model_type = hf.get("model_type", "t5")
    if model_type not in ("t5", "mt5", "umt5"):
        raise ValueError(f"{source}: model_type {model_type!r} is not a T5 model")
    if model_type == "umt5":
        raise ValueError(f"{source}: umt5 (per-layer position biases) is not supported")
    proj = hf.get("feed_forward_proj", "relu")
    parts = proj.split("-")
    if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
        raise ValueError(
            f"{source}: feed_forward_proj {proj!r}; expected 'ACT' or 'gated-ACT' "
            "(e.g. 'gated-gelu')"
        )
    gated = parts[0] == "gated"
    if "is_gated_act" in hf and bool(hf["is_gated_act"]) != gated:
        raise ValueError(
            f"{source}: is_gated_act={hf['is_gated_act']} contradicts feed_forward_proj {proj!r}"
        )
    # HF derives dense_act_fn from feed_forward_proj ("gated-gelu" means the
    # tanh GELU, "gelu_new"), but a stored dense_act_fn overrides it.
    act = hf.get("dense_act_fn", "gelu_new" if proj == "gated-gelu" else parts[-1])
    if act not in _HF_ACTIVATIONS:
        raise ValueError(
            f"{source}: dense_act_fn {act!r} not supported; "
            f"expected one of {sorted(_HF_ACTIVATIONS)}"
        )
    ours = _HF_ACTIVATIONS[act]
    num_layers = int(need("num_layers"))
    return T5Config(
        vocab_size=int(need("vocab_size")),
        emb_dim=int(need("d_model")),
        num_heads=int(need("num_heads")),
        num_encoder_layers=num_layers,
        num_decoder_layers=int(hf.get("num_decoder_layers") or num_layers),
        head_dim=int(need("d_kv")),
        mlp_dim=int(need("d_ff")),
        mlp_activations=(ours, "linear") if gated else (ours,),
        dropout_rate=float(hf.get("dropout_rate", 0.1)),
        logits_via_embedding=bool(hf.get("tie_word_embeddings", True)),
        relative_attention_num_buckets=int(hf.get("relative_attention_num_buckets", 32)),
        relative_attention_max_distance=int(hf.get("relative_attention_max_distance", 128)),
        layer_norm_epsilon=float(hf.get("layer_norm_epsilon", 1e-6)),
        dtype="float32",
    )


def read_safetensors(ckpt_dir: str | pathlib.Path) -> dict[str, np.ndarray]:
    """All tensors of `model.safetensors` or of a sharded index, as numpy."""
    from safetensors.numpy import load_file

    d = pathlib.Path(ckpt_dir)
    single = d / "model.safetensors"
    index = d / "model.safetensors.index.json"
    if single.is_file():
        return dict(load_file(str(single)))
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index}: expected a 'weight_map' object")
        tensors: dict[str, np.ndarray] = {}
        for shard in sorted(set(weight_map.values())):
            shard_path = d / shard
            if not shard_path.is_file():
                raise FileNotFoundError(f"{index}: shard {shard!r} not found in {d}")
            tensors.update(load_file(str(shard_path)))
        missing = sorted(set(weight_map) - set(tensors))
        if missing:
            raise ValueError(f"{index}: tensors listed but absent from shards: {missing[:10]}")
        return tensors
    raise FileNotFoundError(
        f"{d}: no model.safetensors or model.safetensors.index.json (pytorch_model.bin is "
        "not read; convert it to safetensors)"
    )


def _name_map(config) -> dict[str, tuple[tuple[str, ...], bool]]:
    """HF tensor name -> (our parameter path, transpose?)."""
    m: dict[str, tuple[tuple[str, ...], bool]] = {
        "shared.weight": (("token_embedder", "embedding"), False)
    }
    gated = len(config.mlp_activations) > 1
    wis = [f"wi_{i}" for i in range(len(config.mlp_activations))] if gated else ["wi"]
    qkvo = {"q": "query", "k": "key", "v": "value", "o": "out"}

    def attn(hf_prefix, ours):
        for a, b in qkvo.items():
            m[f"{hf_prefix}.{a}.weight"] = ((*ours, b, "kernel"), True)

    def mlp(hf_prefix, ours):
        for w in [*wis, "wo"]:
            m[f"{hf_prefix}.{w}.weight"] = ((*ours, "mlp", w, "kernel"), True)

    for i in range(config.num_encoder_layers):
        hf, us = f"encoder.block.{i}", ("encoder", f"layers_{i}")
        attn(f"{hf}.layer.0.SelfAttention", (*us, "attention"))
        m[f"{hf}.layer.0.layer_norm.weight"] = ((*us, "pre_attention_layer_norm", "scale"), False)
        mlp(f"{hf}.layer.1.DenseReluDense", us)
        m[f"{hf}.layer.1.layer_norm.weight"] = ((*us, "pre_mlp_layer_norm", "scale"), False)
    for i in range(config.num_decoder_layers):
        hf, us = f"decoder.block.{i}", ("decoder", f"layers_{i}")
        attn(f"{hf}.layer.0.SelfAttention", (*us, "self_attention"))
        m[f"{hf}.layer.0.layer_norm.weight"] = (
            (*us, "pre_self_attention_layer_norm", "scale"),
            False,
        )
        attn(f"{hf}.layer.1.EncDecAttention", (*us, "encoder_decoder_attention"))
        m[f"{hf}.layer.1.layer_norm.weight"] = (
            (*us, "pre_cross_attention_layer_norm", "scale"),
            False,
        )
        mlp(f"{hf}.layer.2.DenseReluDense", us)
        m[f"{hf}.layer.2.layer_norm.weight"] = ((*us, "pre_mlp_layer_norm", "scale"), False)
    for stack in ("encoder", "decoder"):
        m[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = (
            (stack, "relpos_bias", "rel_embedding"),
            True,
        )
        norm = "encoder_norm" if stack == "encoder" else "decoder_norm"
        m[f"{stack}.final_layer_norm.weight"] = ((stack, norm, "scale"), False)
    if not config.logits_via_embedding:
        m["lm_head.weight"] = (("decoder", "logits_dense", "kernel"), True)
    return m


def params_from_hf_tensors(tensors: dict[str, np.ndarray], config, source: str = "checkpoint"):
    """Nested float32 param dict (t5x names) from HF tensors; strict on names.

    Tensors may be float32, float16 or bfloat16 (converted to float32).
    """
    name_map = _name_map(config)
    expected_shapes = _expected_shapes(config)
    if "shared.weight" not in tensors and "encoder.embed_tokens.weight" in tensors:
        # Some exports keep only the stacks' copies of the shared embedding.
        tensors = dict(tensors, **{"shared.weight": tensors["encoder.embed_tokens.weight"]})
    shared = tensors.get("shared.weight")
    ignored = []
    for alias in _EMBEDDING_ALIASES:
        if alias in tensors:
            if shared is None or not np.array_equal(tensors[alias], shared):
                raise ValueError(f"{source}: {alias} differs from shared.weight")
            ignored.append(alias)
    if config.logits_via_embedding and "lm_head.weight" in tensors:
        if shared is None or not np.array_equal(tensors["lm_head.weight"], shared):
            raise ValueError(
                f"{source}: lm_head.weight differs from shared.weight but config.json ties "
                "them (tie_word_embeddings missing or true)"
            )
        ignored.append("lm_head.weight")
    missing = sorted(set(name_map) - set(tensors))
    unexpected = sorted(set(tensors) - set(name_map) - set(ignored))
    if missing or unexpected:
        raise ValueError(
            f"{source}: tensor names do not match the T5 architecture in config.json.\n"
            f"  missing ({len(missing)}): {missing}\n  unexpected ({len(unexpected)}): {unexpected}"
        )
    params: dict = {}
    for hf_name, (path, transpose) in name_map.items():
        arr = np.asarray(tensors[hf_name], dtype=np.float32)
        if transpose:
            arr = arr.T
        want = expected_shapes[path]
        if arr.shape != want:
            raise ValueError(
                f"{source}: {hf_name} has shape {tensors[hf_name].shape}; expected "
                f"{tuple(reversed(want)) if transpose else want} for {'/'.join(path)}"
            )
        node = params
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = np.ascontiguousarray(arr)
    return params


def _expected_shapes(config) -> dict[tuple[str, ...], tuple[int, ...]]:
    import jax
    import jax.numpy as jnp
    from flax import linen as nn
    from flax.traverse_util import flatten_dict

    from locca.models.t5 import T5

    shapes = jax.eval_shape(
        lambda: nn.unbox(
            T5(config).init(
                jax.random.PRNGKey(0), jnp.ones((1, 2), jnp.int32), jnp.ones((1, 2), jnp.int32)
            )
        )["params"]
    )
    return {k: tuple(v.shape) for k, v in flatten_dict(shapes).items()}


def load_hf_t5_config(ckpt_dir: str | pathlib.Path):
    """The T5Config of a Hugging Face T5 directory (reads config.json only)."""
    path = pathlib.Path(ckpt_dir) / "config.json"
    return config_from_hf(_read_json(path), source=str(path))


def load_hf_t5(ckpt_dir: str | pathlib.Path):
    """(T5Config, params) from a Hugging Face T5 directory; params are numpy float32."""
    d = pathlib.Path(ckpt_dir)
    config = load_hf_t5_config(d)
    tensors = read_safetensors(d)
    return config, params_from_hf_tensors(tensors, config, source=str(d))


def _errors(ours: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(max |ours - ref|, that / max |ref|) in float64."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    if ours.shape != ref.shape:
        raise ValueError(f"shape mismatch: ours {ours.shape} vs reference {ref.shape}")
    max_abs = float(np.max(np.abs(ours - ref)))
    return max_abs, max_abs / max(float(np.max(np.abs(ref))), 1e-30)


class VerifyResult(NamedTuple):
    """(ok, report); truthy exactly when ok, so `bool(verify_dir(d))` works."""

    ok: bool
    report: dict

    def __bool__(self) -> bool:
        return bool(self.ok)


def verify_dir(
    ckpt_dir: str | pathlib.Path, rtol: float = 1e-4, verbose: bool = True
) -> VerifyResult:
    """Checks our T5 against the reference outputs in `ckpt_dir/io.npz`.

    Compares `encoder_last_hidden_state` and teacher-forced `logits` (max abs
    error relative to the reference's max abs value, must be <= rtol), and
    `greedy_prefix3_steps6` (3 forced decoder tokens, BOS included, then 6
    greedy steps, no EOS stop) exactly, both by full recompute and with the
    KV cache. Returns VerifyResult(ok, report) (a 2-tuple that is truthy
    exactly when ok); prints one line per check when verbose.
    """
    import jax.numpy as jnp

    from locca import decoding
    from locca.models.t5 import T5

    d = pathlib.Path(ckpt_dir)
    config, params = load_hf_t5(d)
    io_path = d / "io.npz"
    if not io_path.is_file():
        raise FileNotFoundError(f"{io_path}: not found (reference inputs/outputs)")
    with np.load(io_path, allow_pickle=False) as f:
        io = {k: f[k] for k in f.files}
    model = T5(config)
    variables = {"params": params}
    report: dict = {"dir": str(d), "config": {k: str(v) for k, v in vars(config).items()}}
    ok = True

    enc_tokens = jnp.asarray(io["encoder_input_ids"], jnp.int32)
    enc_mask = io.get("encoder_attention_mask")
    if enc_mask is not None and not np.array_equal(enc_mask > 0, io["encoder_input_ids"] > 0):
        raise ValueError(f"{io_path}: encoder_attention_mask differs from encoder_input_ids > 0")
    encoded = model.apply(variables, enc_tokens, method=T5.encode)
    mask = enc_tokens > 0
    name = d.name or str(d)

    def check(key, ours):
        max_abs, max_rel = _errors(ours, io[key])
        report[f"{key}_max_abs_err"], report[f"{key}_max_rel_err"] = max_abs, max_rel
        good = max_rel <= rtol
        if verbose:
            print(
                f"{name}: {key} max_abs={max_abs:.3e} max_rel={max_rel:.3e} "
                f"{'OK' if good else 'FAIL'} (rtol {rtol:g})"
            )
        return good

    if "encoder_last_hidden_state" in io:
        ok &= check("encoder_last_hidden_state", np.asarray(encoded))
    if "logits" in io:
        logits = model.apply(variables, enc_tokens, jnp.asarray(io["decoder_input_ids"], jnp.int32))
        ok &= check("logits", np.asarray(logits))
    if "greedy_prefix3_steps6" in io:
        ref = io["greedy_prefix3_steps6"]
        if not np.all(ref[:, 0] == 0):
            raise ValueError(f"{io_path}: greedy_prefix3_steps6 must start with BOS 0")
        prefix = jnp.asarray(ref[:, 1:3], jnp.int32)
        max_len = ref.shape[1] - 1
        for mode, use_cache in (("recompute", False), ("kv_cache", True)):
            step, cache = decoding.t5_tokens_to_logits(
                model, params, encoded, mask, max_len=max_len, use_cache=use_cache
            )
            out = decoding.greedy(
                step,
                cache,
                batch_size=ref.shape[0],
                max_len=max_len,
                eos_id=None,
                prefix=prefix,
            )
            out = np.concatenate([np.zeros((ref.shape[0], 1), np.int64), np.asarray(out)], 1)
            match = bool(np.array_equal(out, ref))
            report[f"greedy_{mode}_match"] = match
            report[f"greedy_{mode}_tokens"] = out.tolist()
            if verbose:
                print(
                    f"{name}: greedy_prefix3_steps6 ({mode}) "
                    f"{'identical OK' if match else f'FAIL ours {out.tolist()} ref {ref.tolist()}'}"
                )
            ok &= match
    report["ok"] = bool(ok)
    return VerifyResult(bool(ok), report)


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir")
    args = parser.parse_args(argv)
    ok, _ = verify_dir(args.dir)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    from locca import cli

    raise SystemExit(cli.run(main))
