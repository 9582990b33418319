"""Whether a freshly prepared golden.json says the same as the committed one.

onnxruntime's float results differ in their last digits between CPUs (AVX-512 or AVX2 code
paths), so a byte comparison would rewrite the committed embeddings on every machine and leave
the tree dirty. Tokens must match exactly; embeddings within 1e-4 (the tests compare cosines).
Exit 0: the same; 1: different (the prepared file should replace the committed one).
"""

import json
import sys


def same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and abs(a - b) <= 1e-4
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def main() -> int:
    committed, prepared = sys.argv[1], sys.argv[2]
    try:
        with open(committed) as f:
            old = json.load(f)
    except FileNotFoundError:
        return 1
    with open(prepared) as f:
        new = json.load(f)
    return 0 if same(old, new) else 1


if __name__ == "__main__":
    sys.exit(main())
