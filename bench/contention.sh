#!/usr/bin/env bash
# Prefill and decode speed at 1 and 2 threads beside 0, 1 and 2 busy processes (each a shell
# loop, standing for the other software of a device), in alternating rounds, with the ratio of
# 2 threads over 1 thread under the same load (median of the rounds' ratios, and their range).
# A load written "2n" is two busy processes at `nice 19` (a background build or backup).
#
#   bench/contention.sh [--rounds N] [--loads "0 1 2 1n 2n"] [--threads "1 2"] [--decode N]
#
# EDGELLM=path/to/edgellm skips the build. With LLAMA_BENCH and LLAMA_MODEL set (bench/llama.sh
# sets them), llama.cpp's llama-bench runs the same prompt length and decode length beside it,
# in the same rounds, and the table gains edgellm/llama.cpp ratios; also the time to first
# token of edgellm's ~20-token question after its cached system prompt beside llama.cpp's
# time for a prompt of as many tokens. The machine should be
# otherwise idle: `uptime` is printed before and after. Beside busy processes a second-long run
# is at the scheduler's mercy (three threads on two cores: one of them has a core to itself, and
# which one is luck), so edgellm's rows also give the part of the run its calling thread spent
# on a core (`caller_core_share` of `edgellm bench --json`): more rounds and a longer --decode
# narrow the medians.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=3 loads="0 1 2" thread_counts="1 2" decode=128
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --loads) loads=$2; shift 2 ;;
    --threads) thread_counts=$2; shift 2 ;;
    --decode) decode=$2; shift 2 ;;
    *) echo "usage: $0 [--rounds N] [--loads \"0 1 2 1n 2n\"] [--threads \"1 2\"] [--decode N]" >&2; exit 2 ;;
  esac
done
bin="${EDGELLM:-}"
if [ -z "$bin" ]; then
  models/prepare.sh
  cargo build --release --quiet
  bin="${CARGO_TARGET_DIR:-target}/release/edgellm"
fi
llama="${LLAMA_BENCH:-}"

out=$(mktemp)
competitors=()
start_competitors() { # count, or count followed by "n" for nice 19
  local priority=0
  [ "${1%n}" != "$1" ] && priority=19
  for _ in $(seq 1 "${1%n}"); do
    nice -n "$priority" sh -c 'while :; do :; done' &
    competitors+=("$!")
  done
}
stop_competitors() {
  for pid in "${competitors[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  competitors=()
}
trap 'stop_competitors; rm -f "$out"' EXIT

# One measurement: appends "engine load threads prefill_t/s decode_t/s round ttft_ms share" to
# $out (share: the calling thread's part of the run on a core, edgellm only).
edgellm_once() { # load threads round
  local json
  json=$("$bin" bench --threads "$2" --decode-tokens "$decode" --json 2>/dev/null)
  prompt=$(jq -r '.rows[0].prompt_tokens' <<<"$json")
  question=$(jq -r '.rows[0].question_new_tokens' <<<"$json")
  jq -r --arg l "$1" --arg r "$3" \
    '.rows[0] | "edgellm \($l) \(.threads) \(.prefill_tokens_per_s) \(.decode_tokens_per_s) \($r) \(.question_ttft_cached_ms) \(.caller_core_share // "-")"' \
    <<<"$json" >>"$out"
}
llama_once() { # load threads round
  local json
  json=$("$llama" -m "$LLAMA_MODEL" -p "$prompt,$question" -n "$decode" -t "$2" -r 1 -o json 2>/dev/null)
  local pp tg pq
  pp=$(jq -r --argjson p "$prompt" '.[] | select(.n_gen == 0 and .n_prompt == $p) | .avg_ts' <<<"$json")
  tg=$(jq -r '.[] | select(.n_prompt == 0) | .avg_ts' <<<"$json")
  # The same number of tokens as edgellm's question, as a time to first token.
  pq=$(jq -r --argjson q "$question" '.[] | select(.n_gen == 0 and .n_prompt == $q) | 1000 * $q / .avg_ts' <<<"$json")
  echo "llama.cpp $1 $2 $pp $tg $3 $pq -" >>"$out"
}

echo "before: $(uptime)"
prompt=77 question=20
for round in $(seq 1 "$rounds"); do
  for load in $loads; do
    start_competitors "$load"
    sleep 0.5
    # Alternate the order of thread counts (and engines) from round to round.
    order=$thread_counts
    [ $((round % 2)) -eq 0 ] && order=$(tr ' ' '\n' <<<"$thread_counts" | tac | tr '\n' ' ')
    for t in $order; do
      if [ $((round % 2)) -eq 1 ] || [ -z "$llama" ]; then
        edgellm_once "$load" "$t" "$round"
        [ -n "$llama" ] && llama_once "$load" "$t" "$round"
      else
        llama_once "$load" "$t" "$round"
        edgellm_once "$load" "$t" "$round"
      fi
    done
    stop_competitors
    echo "round $round, $load busy: done (load average $(uptime | sed 's/.*average: //'))" >&2
  done
done
echo "after:  $(uptime)"
echo "prompt $prompt tokens, decode $decode tokens, $rounds rounds; t/s as median (min-max)"

python3 - "$out" <<'PY'
import collections, statistics, sys

rows = [line.split() for line in open(sys.argv[1]) if line.strip()]
data = collections.defaultdict(dict)  # (engine, load, threads) -> round -> (prefill, decode, ttft)
shares = collections.defaultdict(list)  # (engine, load, threads) -> the caller's core shares
per_core = collections.defaultdict(dict)  # (engine, load, threads) -> round -> decode t/s / share
for engine, load, threads, pp, tg, rnd, ttft, share in rows:
    data[(engine, load, int(threads))][int(rnd)] = (float(pp), float(tg), float(ttft))
    if share != "-" and float(share) > 0:
        shares[(engine, load, int(threads))].append(float(share))
        per_core[(engine, load, int(threads))][int(rnd)] = (float(tg) / float(share),)
engines = sorted({k[0] for k in data}, key=lambda e: e != "edgellm")
# "2n" (niced competitors) after the plain loads.
loads = sorted({k[1] for k in data}, key=lambda l: (l.endswith("n"), int(l.rstrip("n"))))
threads = sorted({k[2] for k in data})

def spread(values):
    return f"{statistics.median(values):7.1f} ({min(values):.0f}-{max(values):.0f})"

def ratio(a, b, i):
    """Median and range of per-round ratios a/b for figure i (0 prefill, 1 decode, 2 the
    inverse of the time to first token, so that above 1 is faster for all three)."""
    rs = [(b[r][i] / a[r][i] if i == 2 else a[r][i] / b[r][i]) for r in a if r in b and min(a[r][i], b[r][i]) > 0]
    return f"{statistics.median(rs):5.2f}x ({min(rs):.2f}-{max(rs):.2f})" if rs else "-"

print(f"{'engine':<10} {'busy':>4} {'thr':>3} {'prefill t/s':>20} {'decode t/s':>20} {'question TTFT ms':>20} "
      f"{'caller on a core':>18}")
for engine in engines:
    for load in loads:
        for t in threads:
            d = data.get((engine, load, t))
            if d:
                s = shares.get((engine, load, t))
                share = f"{statistics.median(s):.2f} ({min(s):.2f}-{max(s):.2f})" if s else "-"
                print(f"{engine:<10} {load:>4} {t:>3} {spread([v[0] for v in d.values()]):>20} "
                      f"{spread([v[1] for v in d.values()]):>20} {spread([v[2] for v in d.values()]):>20} {share:>18}")
if len(threads) > 1:
    lo, hi = threads[0], threads[-1]
    print(f"\n{hi} threads over {lo} thread, same load and round (goal: never below 0.90x); last column:")
    print("decode per share of a core the caller had, which leaves out the scheduler's luck")
    print(f"{'engine':<10} {'busy':>4} {'prefill':>20} {'decode':>20} {'decode per core':>20}")
    for engine in engines:
        for load in loads:
            a, b = data.get((engine, load, hi)), data.get((engine, load, lo))
            ca, cb = per_core.get((engine, load, hi)), per_core.get((engine, load, lo))
            if a and b:
                core = ratio(ca, cb, 0) if ca and cb else "-"
                print(f"{engine:<10} {load:>4} {ratio(a, b, 0):>20} {ratio(a, b, 1):>20} {core:>20}")
if "llama.cpp" in engines:
    print("\nedgellm over llama.cpp, same load, threads and round (TTFT: llama.cpp's time over edgellm's)")
    print(f"{'busy':>4} {'thr':>3} {'prefill':>20} {'decode':>20} {'question TTFT':>20}")
    for load in loads:
        for t in threads:
            a, b = data.get(("edgellm", load, t)), data.get(("llama.cpp", load, t))
            if a and b:
                print(f"{load:>4} {t:>3} {ratio(a, b, 0):>20} {ratio(a, b, 1):>20} {ratio(a, b, 2):>20}")
PY
