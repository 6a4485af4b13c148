"""How much mark the generated images carry per unit of the mark's energy, frequency by frequency.

    python scripts/frequency_efficiency.py docs/results/generated_mark_by_frequency/subject0*.md [--band 5 14]

Reads tables that `scripts/bench_generated_mark.py --by-frequency` printed (one per subject:
for each ring of the profile's frequencies, the key template's share of energy there and, per
model, the fraction of the photos' mark kept and the per-image SNR of what was kept) and pools
them: a ring's efficiency is the least-squares slope of SNR on the square root of its energy
over every model of every table (SNR = efficiency * sqrt(energy), the mark's amplitude there
being proportional to that root), so rings where the key put little energy weigh little.

A reading that weighs each ring by what reaches it has d'^2 = sum over rings of SNR^2, that is
of energy * efficiency^2 at a fixed total energy (the RMS, and so the PSNR). With --band LO HI,
the same for the key's energy moved into rings LO..HI (each ring's share scaled up alike, as
GeneratorConfig.band_min and band do at the same RMS), as a prediction from these tables, and
what it is relative to all rings. A prediction, not a measurement: the efficiencies are fitted
on the same models, and a mark drawn in fewer rings may be learned differently.
"""
import argparse
import math
import re
from collections import defaultdict


def read_table(path) -> dict[int, tuple[float, list[tuple[float, float]]]]:
    """ring -> (template energy, [(kept, SNR) per model])"""
    rings = {}
    for line in open(path):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and re.fullmatch(r"\d+", cells[0]):
            rings[int(cells[0])] = (float(cells[1]), [tuple(float(x) for x in c.split(",")) for c in cells[2:]])
    if not rings:
        raise SystemExit(f"{path}: no ring rows (a scripts/bench_generated_mark.py --by-frequency table was expected)")
    return rings


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tables", nargs="+")
    ap.add_argument("--band", type=int, nargs=2, metavar=("LO", "HI"), help="predict d' for the energy in rings LO..HI only")
    args = ap.parse_args()
    energy, readings = {}, defaultdict(list)  # ring -> [(sqrt energy, kept, snr)]
    for path in args.tables:
        for ring, (e, models) in read_table(path).items():
            if energy.setdefault(ring, e) != e:
                raise SystemExit(f"{path}: ring {ring} has template energy {e}, another table {energy[ring]}: not the same key")
            readings[ring] += [(math.sqrt(e), kept, snr) for kept, snr in models]
    efficiency = {r: sum(a * s for a, _, s in v) / sum(a * a for a, _, _ in v) for r, v in readings.items()}
    kept = {r: sum(k for _, k, _ in v) / len(v) for r, v in readings.items()}
    n = len(next(iter(readings.values())))
    print(f"{len(args.tables)} tables, {n} model readings per ring\n")
    print("| cycles per tile | template energy | kept (mean over models) | SNR per unit amplitude |")
    print("|---|---|---|---|")
    for r in sorted(energy):
        print(f"| {r} | {energy[r]:.3f} | {kept[r]:.2f} | {efficiency[r]:.2f} |")
    # a negative slope is noise around none: it carries nothing, it does not subtract
    gain = {r: max(efficiency[r], 0.0) ** 2 for r in energy}
    full = sum(energy[r] * gain[r] for r in energy)
    print(f"\nd'^2 per unit energy, all rings (the key's own spectrum): {full:.2f}")
    if args.band:
        lo, hi = args.band
        inside = [r for r in energy if lo <= r <= hi]
        share = sum(energy[r] for r in inside)
        band = sum(energy[r] * gain[r] for r in inside) / share
        print(f"rings {lo}-{hi} hold {share:.3f} of the key's energy; all of it there: d'^2 {band:.2f}, "
              f"d' {math.sqrt(band / full):.2f} times all rings' (predicted)")


if __name__ == "__main__":
    main()
