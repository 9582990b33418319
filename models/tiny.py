#!/usr/bin/env python3
"""Write models/tiny: a two-layer model in the real model's layout, from fixed random weights.

The graph is the one models/convert.py writes for SmolLM2 (the same `build_model`: 4-bit
MatMulNBits projections, a GatherBlockQuantized embedding and tied head, RMS norms, rotary
embeddings, grouped-query attention with a KV cache, the Optimum inputs and outputs), at a
size that loads in a moment and runs in seconds under QEMU: hidden 64, four heads of 16 over
two KV heads, a feed-forward of 128, and a byte-level tokenizer of 259 tokens (the 256 bytes
and ChatML's three specials, with SmolLM2's ids for them).

Its golden tokens are onnxruntime's greedy tokens, as for the real model. Random weights give
flat logits that float rounding could reorder, so the seed is the first whose every greedy
step wins by a clear margin and whose answers are not one token repeated; the margin is
recorded. Run by hand (the files it writes are committed):

    python3 models/tiny.py models/tiny      # in the venv of models/requirements.txt
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import convert  # noqa: E402  (the real converter: its graph, quantizer and checks)

CFG = {
    "architecture": "llama",
    "layers": 2,
    "hidden": 64,
    "ffn": 128,
    "heads": 4,
    "kv_heads": 2,
    "rope_theta": 10000.0,
    "rms_eps": 1e-5,
    "vocab": 259,
    "context_length": 512,
    "head_dim": 16,
}
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# The engine stops at either, as for SmolLM2.
STOP_IDS = [2, 0]
SYSTEM = "You are a tiny test model."
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\n" + SYSTEM + "<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Smallest accepted gap between the best and the second-best logit at any greedy step.
MIN_MARGIN = 0.05


class RandomWeights:
    """Stands in for convert.Gguf: fixed random weights under GGUF's tensor names."""

    def __init__(self, seed: int):
        rng = np.random.default_rng(seed)
        h, f, kv = CFG["hidden"], CFG["ffn"], CFG["kv_heads"] * CFG["head_dim"]

        def matrix(out: int, inp: int, gain: float = 1.0) -> np.ndarray:
            return (rng.standard_normal((out, inp)) * gain / np.sqrt(inp)).astype(np.float32)

        def norm() -> np.ndarray:
            return (1.0 + 0.1 * rng.standard_normal(h)).astype(np.float32)

        # Small embeddings next to strong layers: with a tied head, a residual stream that is
        # mostly the input token's embedding would only ever predict that token again.
        self.weights = {"token_embd.weight": (0.3 * rng.standard_normal((CFG["vocab"], h))).astype(np.float32)}
        for i in range(CFG["layers"]):
            p = f"blk.{i}"
            self.weights.update(
                {
                    f"{p}.attn_norm.weight": norm(),
                    f"{p}.attn_q.weight": matrix(h, h, 2.0),
                    f"{p}.attn_k.weight": matrix(kv, h, 2.0),
                    f"{p}.attn_v.weight": matrix(kv, h),
                    f"{p}.attn_output.weight": matrix(h, h, 4.0),
                    f"{p}.ffn_norm.weight": norm(),
                    f"{p}.ffn_gate.weight": matrix(f, h),
                    f"{p}.ffn_up.weight": matrix(f, h),
                    f"{p}.ffn_down.weight": matrix(h, f, 4.0),
                }
            )
        self.weights["output_norm.weight"] = norm()

    def weight(self, name: str) -> np.ndarray:
        return self.weights[name]


def build_tokenizer():
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(SPECIALS + alphabet)}
    assert len(vocab) == CFG["vocab"]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    return tok


def greedy_with_margin(ort_model, prompt_ids: list[int], n_new: int, stops: set[int]):
    """onnxruntime's greedy tokens and the smallest top-1 / top-2 gap on the way."""
    logits, past = ort_model.forward(prompt_ids, None, 0)
    total, generated, margin = len(prompt_ids), [], np.inf
    for _ in range(n_new):
        last = logits[0, -1]
        top2 = np.sort(last)[-2:]
        margin = min(margin, float(top2[1] - top2[0]))
        nxt = int(np.argmax(last))
        generated.append(nxt)
        if nxt in stops:
            break
        logits, past = ort_model.forward([nxt], past, total)
        total += 1
    return generated, margin


def write(out: Path, seed: int, tok) -> tuple[list, float]:
    model, reference = convert.build_model(RandomWeights(seed), CFG)
    model.graph.name = "tiny_decoder"
    onnx.checker.check_model(model, full_check=False)
    model_path = out / "model.onnx"
    onnx.save(model, str(model_path))
    ort_model = convert.OrtDecoder(model_path, CFG)

    ids = tok.encode(convert.chatml(SYSTEM, convert.GOLDEN_QUESTIONS[0]), add_special_tokens=False).ids
    a = ort_model.forward(ids, None, 0)[0][0].astype(np.float64)
    b = convert.numpy_reference_logits(reference, ids, CFG)
    cos = float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))
    if cos < 0.9999:
        raise SystemExit(f"onnxruntime disagrees with the numpy forward pass (cosine {cos})")

    cases, worst = [], np.inf
    for question in convert.GOLDEN_QUESTIONS:
        prompt_ids = tok.encode(convert.chatml(SYSTEM, question), add_special_tokens=False).ids
        new, margin = greedy_with_margin(ort_model, prompt_ids, convert.GOLDEN_NEW_TOKENS, set(STOP_IDS))
        worst = min(worst, margin)
        if len(set(new)) < 4:
            convert.log(f"seed {seed}: {question!r} -> {new}")
            worst = -1.0
        text = tok.decode(new, skip_special_tokens=True)
        cases.append({"question": question, "prompt_ids": prompt_ids, "greedy_ids": new, "text": text})
    return cases, worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", type=Path)
    args = ap.parse_args()
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    tok.save(str(out / "tokenizer.json"))
    for seed in range(100):
        cases, margin = write(out, seed, tok)
        convert.log(f"seed {seed}: smallest greedy margin {margin:.4f}")
        if margin >= MIN_MARGIN:
            break
    else:
        raise SystemExit("no seed below 100 gives clear greedy margins")
    golden = {
        "runtime": "onnxruntime",
        "new_tokens": convert.GOLDEN_NEW_TOKENS,
        "seed": seed,
        "min_margin": round(margin, 4),
        "cases": cases,
    }
    (out / "golden.json").write_text(json.dumps(golden, indent=1) + "\n")
    model_path = out / "model.onnx"
    manifest = {
        "id": "tiny-llama-random",
        "source": {"script": "models/tiny.py", "seed": seed},
        "license": "Apache-2.0",
        "quantization": "q4 block 32, symmetric (Q4_0) but o_proj with zero points",
        "format": "onnx-optimum-text-generation-with-past",
        "model_file": "model.onnx",
        "model_sha256": convert.sha256(model_path),
        "tokenizer_file": "tokenizer.json",
        "tokenizer_sha256": convert.sha256(out / "tokenizer.json"),
        "parameters": sum(int(np.prod(w.shape)) for w in RandomWeights(seed).weights.values()),
        "dims": CFG,
        "special": {"bos_id": 1, "eos_id": 2, "im_start_id": 1, "im_end_id": 2, "add_bos": False},
        "stop_ids": STOP_IDS,
        "default_system_prompt": SYSTEM,
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    convert.log(f"wrote {out}: seed {seed}, margin {margin:.4f}, {model_path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
