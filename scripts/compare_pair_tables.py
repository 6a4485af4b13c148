"""Two marks' pair-by-pair readings side by side, from two tables of scripts/bench_row_front_end.py.

    python scripts/compare_pair_tables.py docs/results/row_front_end/subjects0-4-2test.md \
        docs/results/row_front_end/band-subjects3-4-2test.md --labels profile band

Each table reads every pair of models (the one trained on the marked photos and its twin
trained on the clean photos: same seed, prompts and image seeds) of a set of demo work
folders. Where both tables hold a pair of the same name (subject, method, seed, prompts) and
front end, this prints the two per-image AUCs and d's, and per front end and method the mean
of the d's and how many pairs the second table's reads higher. The comparison is paired only
where both runs' clean-trained models are the same (the mark changes only the
watermarked-trained one): same seeds, and float kernels that repeat them, which this does not
check. On 2026-12-04 the LoRA clean models repeated the previous session's and the DreamBooth
ones did not (docs/BENCHMARKS.md, "A profile mark off its lowest frequencies").
"""
import argparse
import re
from collections import defaultdict


def read_pairs(path) -> dict[tuple[str, str], tuple[float, float]]:
    """(pair, front end) -> (AUC, d')"""
    rows = {}
    for line in open(path):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and re.match(r"subject\d+ ", cells[0]):
            rows[cells[0], cells[1]] = (float(cells[2]), float(cells[3]))
    if not rows:
        raise SystemExit(f"{path}: no pair rows (a scripts/bench_row_front_end.py table was expected)")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("first")
    ap.add_argument("second")
    ap.add_argument("--labels", nargs=2, default=["first", "second"])
    args = ap.parse_args()
    a, b = read_pairs(args.first), read_pairs(args.second)
    shared = sorted(set(a) & set(b), key=lambda k: (k[1], k[0]))
    if not shared:
        raise SystemExit("the two tables share no pair of models")
    x, y = args.labels
    print(f"| pair of models | front end | AUC, {x} | AUC, {y} | d', {x} | d', {y} |")
    print("|---|---|---|---|---|---|")
    groups = defaultdict(list)
    for pair, front in shared:
        (auc_a, d_a), (auc_b, d_b) = a[pair, front], b[pair, front]
        print(f"| {pair} | {front} | {auc_a:.3f} | {auc_b:.3f} | {d_a:+.2f} | {d_b:+.2f} |")
        groups[front, pair.split()[1].split("-")[0]].append((d_a, d_b))
    print(f"\n| front end | method | pairs | mean d', {x} | mean d', {y} | pairs {y} reads higher |")
    print("|---|---|---|---|---|---|")
    for (front, method), ds in sorted(groups.items()):
        n = len(ds)
        print(f"| {front} | {method} | {n} | {sum(d for d, _ in ds) / n:.2f} | {sum(d for _, d in ds) / n:.2f} | {sum(d2 > d1 for d1, d2 in ds)} of {n} |")


if __name__ == "__main__":
    main()
