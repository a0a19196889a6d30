"""Cost of the engine's run-time check of retriever results (``contracts.check_search_result``).

Per shape: the copy of a search result to the CPU that the engine made before the check existed
(``.cpu()`` of ids, scores, counts), and the check, which includes that copy. Results come from
the built-in ``exact`` retriever on the chosen device, over a history of F frames (all but the
last 20 eligible). ``python benchmarks/retrieval_check.py [--device cpu|cuda]``.
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from timing import median_time  # noqa: E402

from lrag_framework.contracts import check_search_result  # noqa: E402
from lrag_framework.plugins import load_plugins  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    print("| device | streams | k | frames | copy only (us) | check incl. copy (us) | added (us) |")
    print("|---|---|---|---|---|---|---|")
    for b, k, f in ((1, 6, 480), (8, 6, 480), (8, 6, 15000), (8, 32, 15000)):
        r = load_plugins().build("retriever", "exact", {})
        g = torch.Generator().manual_seed(0)
        for s in range(b):
            r.add(s, torch.arange(f), torch.randn(f, 64, generator=g).to(dev))
        eligible = (torch.arange(f) < f - 20).expand(b, -1).clone()
        result = r.search(torch.randn(b, 64, generator=g).to(dev), k, eligible.to(dev))
        copy = median_time(lambda: [t.cpu() for t in result], args.repeats, sync)
        check = median_time(lambda: check_search_result(result, k, eligible, r, f),
                            args.repeats, sync)
        print(f"| {dev.type} | {b} | {k} | {f} | {copy * 1e6:.1f} | {check * 1e6:.1f} | "
              f"{(check - copy) * 1e6:.1f} |")


if __name__ == "__main__":
    main()
