#!/usr/bin/env python3
"""End-to-end benchmark of the daemon, side by side with onnxruntime, in one run.

For 1 and 2 threads: starts `edgellm serve` on a private socket, measures over the socket
(request sent -> final reply) time to first token for a ~20-token question after the cached
system prompt, prefill and decode tokens/s, and the daemon's RSS; then the throughput of the
whole daemon under 4 concurrent clients. onnxruntime runs the same ONNX file on the same
prompt tokens (bench/compare.py's child). Prints the figures and the ratios.

Run with the converter's venv (it has onnxruntime): `bench/run.sh daemon_bench`.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from compare import ORT_CHILD  # noqa: E402

QUESTION = "Which three vegetables grow best on a sunny balcony, and how often should I water them?"


def ask(sock_path, request, timeout=300):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(sock_path)
    sent = time.perf_counter()
    s.sendall((json.dumps(request) + "\n").encode())
    buf = b""
    first_token = None
    while True:
        chunk = s.recv(65536)
        if not chunk:
            raise RuntimeError("connection closed")
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            event = json.loads(line)
            if event["event"] == "token" and first_token is None:
                first_token = time.perf_counter() - sent
            if event["event"] in ("done", "error"):
                s.close()
                return event, first_token, time.perf_counter() - sent


def rss_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024


def run_daemon(binary, model_dir, threads, work):
    sock = os.path.join(work, f"bench-{threads}.sock")
    config = os.path.join(work, f"bench-{threads}.toml")
    cache = os.path.join(work, "compiled-cache")
    Path(config).write_text(
        f'[model]\ndir = "{model_dir}"\nthreads = {threads}\ncompiled_cache_dir = "{cache}"\n'
        f'[socket]\npath = "{sock}"\n'
        "[grounding]\nanswer_cache_entries = 0\n[queue]\ncapacity = 16\n[logging]\nlevel = \"warn\"\n")
    t0 = time.perf_counter()
    proc = subprocess.Popen([binary, "serve", "--config", config], stderr=subprocess.DEVNULL)
    while not os.path.exists(sock):
        time.sleep(0.02)
        if proc.poll() is not None:
            raise RuntimeError("daemon exited")
    # Ready when it answers.
    while True:
        try:
            ask(sock, {"id": "w0", "prompt": "hi", "max_tokens": 1})
            break
        except (ConnectionRefusedError, FileNotFoundError):
            time.sleep(0.02)
    return proc, sock, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--edgellm", default="target/release/edgellm")
    ap.add_argument("--model-dir", default="models/smollm2")
    ap.add_argument("--decode-tokens", type=int, default=64)
    args = ap.parse_args()
    model_dir = str(Path(args.model_dir).resolve())
    dims = json.loads((Path(model_dir) / "manifest.json").read_text())["dims"]
    rows = []
    with tempfile.TemporaryDirectory() as work:
        # The first start builds the compiled-model cache (what a fresh install does once);
        # the measured daemons start from it.
        proc, _, ready_cold_s = run_daemon(args.edgellm, model_dir, 1, work)
        proc.terminate()
        proc.wait(timeout=60)
        for threads in (1, 2):
            proc, sock, ready_s = run_daemon(args.edgellm, model_dir, threads, work)
            try:
                # Warm-up: caches the system prompt's KV state.
                ask(sock, {"id": "w1", "prompt": "Say hello.", "max_tokens": 2})
                ttfts, prefill, decode = [], [], []
                for i in range(5):
                    done, ttft, total = ask(sock, {"id": f"q{i}", "prompt": f"{QUESTION} ({i})", "stream": True,
                                                   "max_tokens": args.decode_tokens, "temperature": 0.0})
                    t = done["timings"]
                    new_tokens = done["usage"]["prompt_tokens"] - t["reused_prefix_tokens"]
                    ttfts.append(ttft * 1e3)
                    prefill.append(new_tokens / (t["prefill_ms"] / 1e3))
                    if done["usage"]["completion_tokens"] > 1:
                        decode.append((done["usage"]["completion_tokens"] - 1) / (t["decode_ms"] / 1e3))
                new_tokens_q = done["usage"]["prompt_tokens"] - t["reused_prefix_tokens"]
                rss = rss_mib(proc.pid)
                # Throughput under 4 concurrent clients.
                results = []

                def client(k):
                    for j in range(3):
                        d, _, _ = ask(sock, {"id": f"c{k}-{j}", "prompt": f"{QUESTION} [{k}-{j}]", "max_tokens": 32})
                        results.append(d)
                t0 = time.perf_counter()
                ts = [threading.Thread(target=client, args=(k,)) for k in range(4)]
                [t.start() for t in ts]
                [t.join() for t in ts]
                wall = time.perf_counter() - t0
                tokens = sum(d["usage"]["completion_tokens"] for d in results if d["event"] == "done")
                med = lambda xs: sorted(xs)[len(xs) // 2]
                rows.append({"threads": threads, "ready_s": ready_s, "ttft_ms": med(ttfts), "new_prompt_tokens": new_tokens_q,
                             "prefill_tps": med(prefill), "decode_tps": med(decode), "rss_mib": rss,
                             "concurrent4_req_per_s": len(results) / wall, "concurrent4_tokens_per_s": tokens / wall})
            finally:
                proc.terminate()
                proc.wait(timeout=60)
    # onnxruntime on the same model, the bench prompt of `edgellm bench` (same tokens both sides).
    ours = json.loads(subprocess.check_output([args.edgellm, "bench", "--json", "--model-dir", model_dir,
                                               "--threads", "1", "--decode-tokens", "8"]))
    prompt = ours["prompt_ids"]
    print(f"daemon end to end over the socket; question of ~{rows[0]['new_prompt_tokens']} new tokens after the cached system prompt")
    print(f"ready (start until the first answer): {ready_cold_s:.2f} s on the first start (builds the compiled-model cache), "
          "the rows below start from the cache")
    print(f"{'threads':>7} {'ready s':>8} {'TTFT ms':>8} {'prefill t/s':>12} {'decode t/s':>11} {'RSS MiB':>8} {'4 clients req/s':>16} {'tokens/s':>9}")
    for r in rows:
        print(f"{r['threads']:>7} {r['ready_s']:>8.2f} {r['ttft_ms']:>8.0f} {r['prefill_tps']:>12.1f} {r['decode_tps']:>11.1f} {r['rss_mib']:>8.1f} {r['concurrent4_req_per_s']:>16.2f} {r['concurrent4_tokens_per_s']:>9.1f}")
    print("\nonnxruntime, same ONNX file, prompt of", len(prompt), "tokens")
    for r in rows:
        ort = json.loads(subprocess.check_output(
            [sys.executable, "-c", ORT_CHILD, str(Path(model_dir) / "model.onnx"), str(r["threads"]), json.dumps(prompt),
             str(args.decode_tokens), str(dims["layers"]), str(dims["kv_heads"]), str(dims["head_dim"])]))
        print(f"{r['threads']:>7} prefill {ort['prefill_tokens_per_s']:.1f} t/s, decode {ort['decode_tokens_per_s']:.1f} t/s, "
              f"RSS {ort['rss_mib']:.1f} MiB, load {ort['load_ms']:.0f} ms")
        print(f"{'':>7} ratios edgellm/onnxruntime: decode {r['decode_tps'] / ort['decode_tokens_per_s']:.2f}, "
              f"prefill {r['prefill_tps'] / ort['prefill_tokens_per_s']:.2f}, RSS {r['rss_mib'] / ort['rss_mib']:.2f}")


if __name__ == "__main__":
    main()
