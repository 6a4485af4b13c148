"""Honest false-positive rates: a measured null distribution and a set-level test.

The null is the detector's logit on clean photos it never trained on, under many random
keys and after the publishing channel's attacks (clean photos get JPEG'd and resized too).
A set of n suspect images is then tested as SIREN does, at the set level: how many of them
pass the per-image threshold (whose false-positive rate is measured on the null), against a
binomial with that rate; a one-sided Kolmogorov-Smirnov test of the whole score
distribution is reported beside it.
"""
import numpy as np
import torch
from scipy import stats

from genwm.channel import ATTACKS
from genwm.keys import random_bits


@torch.no_grad()
def null_logits(detector, images, n_keys: int = 16, attacks=tuple(ATTACKS), seed: int = 0, progress=None) -> np.ndarray:
    """Logits of clean images [3, H, W] under n_keys random keys and each attack."""
    g = torch.Generator().manual_seed(seed)
    bits = random_bits(n_keys, detector.config.n_bits, g)
    out = []
    for img in images:
        for name in attacks:
            x = ATTACKS[name](detector.to_canonical(img))
            out.extend(detector.logits_for(x, bits[None])[0].tolist())  # one image, every key at once
        if progress:
            progress()
    return np.array(out)


def make_calibration(null: np.ndarray, alpha_image: float = 0.01, **info) -> dict:
    null = np.sort(np.asarray(null, dtype=float))
    threshold = float(np.quantile(null, 1 - alpha_image, method="higher"))
    return {
        "null_logits": null.round(5).tolist(),
        "alpha_image": alpha_image,
        "threshold": threshold,
        "fpr_at_threshold": conservative_fpr(null, threshold),
        **info,
    }


def conservative_fpr(null: np.ndarray, threshold: float) -> float:
    """(k + 1) / (N + 1): never zero, so a finite null cannot promise an impossible rate."""
    return float((np.sum(np.asarray(null) >= threshold) + 1) / (len(null) + 1))


def set_verdict(logits: np.ndarray, calibration: dict, alpha: float = 0.01) -> dict:
    logits = np.asarray(logits, dtype=float)
    null = np.asarray(calibration["null_logits"], dtype=float)
    threshold, fpr = calibration["threshold"], calibration["fpr_at_threshold"]
    n, k = len(logits), int(np.sum(logits >= threshold))
    p_binom = float(stats.binomtest(k, n, fpr, alternative="greater").pvalue) if n else 1.0
    # "less": the suspect scores' CDF lies below the null's, i.e. the scores are larger.
    p_ks = float(stats.ks_2samp(logits, null, alternative="less").pvalue) if n else 1.0
    return {
        "n_images": n,
        "n_above_threshold": k,
        "threshold_logit": threshold,
        "per_image_fpr": fpr,
        "p_value": p_binom,
        "p_value_ks": p_ks,
        "alpha": alpha,
        "watermark_detected": bool(n and p_binom < alpha),
    }
