#!/usr/bin/env python3
"""What dense retrieval costs: the daemon with the same knowledge directory, keyword
retrieval alone vs keyword + embeddings, side by side in one run.

For each setting: start-up time to the first answer (the knowledge is embedded at start-up),
the daemon's RSS after the questions, and per request the retrieval time the daemon reports
(`timings.retrieval_ms`), prompt tokens (more notes found means longer prompts), time to
first token and total time, as medians over the questions of tests/data/retrieval. Prints the figures and the differences.

Run: `bench/run.sh grounding_bench` (or with any python3: it needs no extra package).
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from daemon_bench import ask, rss_mib  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
KNOWLEDGE = ROOT / "tests/data/retrieval/knowledge"
QUESTIONS = ROOT / "tests/data/retrieval/questions.tsv"


def questions():
    out = []
    for line in QUESTIONS.read_text().splitlines():
        if line and not line.startswith("#"):
            out.append(line.split("\t")[2])
    return out


def run(binary, model_dir, dense, work, max_tokens):
    name = "dense" if dense else "keyword"
    sock = os.path.join(work, f"g-{name}.sock")
    config = os.path.join(work, f"g-{name}.toml")
    Path(config).write_text(
        f'[model]\ndir = "{model_dir}"\nthreads = 1\n[socket]\npath = "{sock}"\n'
        f'[grounding]\nknowledge_dir = "{KNOWLEDGE}"\nanswer_cache_entries = 0\n'
        f"[grounding.embedding]\nenabled = {'true' if dense else 'false'}\n"
        '[logging]\nlevel = "warn"\n')
    t0 = time.perf_counter()
    proc = subprocess.Popen([binary, "serve", "--config", config], stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                ask(sock, {"id": "w0", "prompt": "hi", "max_tokens": 1})
                break
            except (ConnectionRefusedError, FileNotFoundError):
                if proc.poll() is not None:
                    raise RuntimeError("daemon exited")
                time.sleep(0.02)
        ready = time.perf_counter() - t0
        retrieval, ttft, total, prompt = [], [], [], []
        for i, q in enumerate(questions()):
            done, first, elapsed = ask(sock, {"id": f"q{i}", "prompt": q, "max_tokens": max_tokens, "temperature": 0.0})
            if done["event"] != "done":
                raise RuntimeError(f"{q!r}: {done}")
            retrieval.append(done["timings"]["retrieval_ms"])
            prompt.append(done["usage"]["prompt_tokens"])
            ttft.append(first * 1e3 if first else elapsed * 1e3)
            total.append(elapsed * 1e3)
        return {
            "ready_s": ready,
            "rss_mib": rss_mib(proc.pid),
            "retrieval_ms": statistics.median(retrieval),
            "prompt_tokens": statistics.median(prompt),
            "ttft_ms": statistics.median(ttft),
            "total_ms": statistics.median(total),
        }
    finally:
        proc.terminate()
        proc.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--edgellm", default="target/release/edgellm")
    ap.add_argument("--model-dir", default=str(ROOT / "models/smollm2"))
    ap.add_argument("--max-tokens", type=int, default=8)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as work:
        rows = {dense: run(args.edgellm, args.model_dir, dense, work, args.max_tokens) for dense in (False, True)}
    n = len(questions())
    print(f"grounding over {n} questions, {KNOWLEDGE.relative_to(ROOT)}, 1 thread, {args.max_tokens} new tokens")
    print(f"  {'':<16} {'keyword':>10} {'+ dense':>10} {'difference':>11}")
    for key, unit in [("ready_s", "s"), ("rss_mib", "MiB"), ("retrieval_ms", "ms"), ("prompt_tokens", ""), ("ttft_ms", "ms"), ("total_ms", "ms")]:
        a, b = rows[False][key], rows[True][key]
        print(f"  {key:<16} {a:>10.2f} {b:>10.2f} {b - a:>+10.2f} {unit}")


if __name__ == "__main__":
    main()
