#!/usr/bin/env python3
"""Side by side, in one run: `edgellm bench` (tract) and onnxruntime on the same ONNX file and
the same prompt tokens, at 1 and 2 threads. Prints both and the tract/onnxruntime ratios.

Run with the converter's venv (it has onnxruntime): `bench/run.sh compare`.
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ORT_CHILD = r'''
import json, sys, time, resource
import numpy as np
import onnxruntime as ort
model, threads, prompt, n_decode, layers, kv_heads, head_dim = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
t0 = time.perf_counter()
o = ort.SessionOptions(); o.intra_op_num_threads = threads; o.inter_op_num_threads = 1
s = ort.InferenceSession(model, o, providers=["CPUExecutionProvider"])
load = time.perf_counter() - t0
def run(ids, past, past_len):
    feed = {"input_ids": np.array([ids], np.int64),
            "attention_mask": np.ones((1, past_len + len(ids)), np.int64),
            "position_ids": np.arange(past_len, past_len + len(ids), dtype=np.int64)[None]}
    for i in range(layers):
        for j, k in enumerate(("key", "value")):
            feed[f"past_key_values.{i}.{k}"] = past[2*i+j] if past else np.zeros((1, kv_heads, 0, head_dim), np.float32)
    out = s.run(None, feed)
    return out[0], out[1:]
run(prompt[:8], None, 0)  # warm-up
t0 = time.perf_counter(); logits, past = run(prompt, None, 0); prefill = time.perf_counter() - t0
total = len(prompt); t0 = time.perf_counter()
for _ in range(n_decode - 1):
    nxt = int(np.argmax(logits[0, -1])); logits, past = run([nxt], past, total); total += 1
decode = time.perf_counter() - t0
print(json.dumps({"load_ms": load*1e3, "prefill_ms": prefill*1e3, "prefill_tokens_per_s": len(prompt)/prefill,
  "time_to_first_token_ms": prefill*1e3, "decode_tokens_per_s": (n_decode-1)/decode,
  "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024}))
'''


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--edgellm", default="target/release/edgellm")
    ap.add_argument("--model-dir", default="models/smollm2")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--decode-tokens", type=int, default=128)
    args = ap.parse_args()
    manifest = json.loads((Path(args.model_dir) / "manifest.json").read_text())
    dims = manifest["dims"]
    ours = json.loads(subprocess.check_output(
        [args.edgellm, "bench", "--json", "--model-dir", args.model_dir, "--threads", args.threads,
         "--decode-tokens", str(args.decode_tokens)]))
    prompt = ours["prompt_ids"]
    print(f"model {ours['model']} ({ours['quantization']}), prompt {len(prompt)} tokens, decode {args.decode_tokens} tokens")
    print("edgellm load: " + ", ".join(f"{r['threads']} thread(s) {r['load_ms']:.0f} ms (compiled-model cache {r['compiled_cache']})" for r in ours["rows"]))
    cols = ["load_ms", "prefill_tokens_per_s", "time_to_first_token_ms", "decode_tokens_per_s", "rss_mib"]
    print(f"{'runtime':<12}{'threads':>8}" + "".join(f"{c:>24}" for c in cols))
    ratios = []
    for row in ours["rows"]:
        t = row["threads"]
        ort = json.loads(subprocess.check_output(
            [sys.executable, "-c", ORT_CHILD, str(Path(args.model_dir) / "model.onnx"), str(t), json.dumps(prompt),
             str(args.decode_tokens), str(dims["layers"]), str(dims["kv_heads"]), str(dims["head_dim"])]))
        for name, r in (("edgellm", row), ("onnxruntime", ort)):
            print(f"{name:<12}{t:>8}" + "".join(f"{r[c]:>24.1f}" for c in cols))
        ratios.append((t, {c: row[c] / ort[c] for c in cols}))
    print("\nratios edgellm / onnxruntime (speed: higher is better for edgellm; ms and MiB: lower is better)")
    for t, r in ratios:
        print(f"{'ratio':<12}{t:>8}" + "".join(f"{r[c]:>24.2f}" for c in cols))


if __name__ == "__main__":
    main()
