"""A subject's secret key -> the bit string that selects its watermark.

The key never leaves this module in the clear: checkpoints and reports store only a
fingerprint, so a published detector does not reveal the key string.
"""
import hashlib

import torch


def key_bits(key: str, n_bits: int) -> torch.Tensor:
    """Deterministic +-1 vector of length n_bits derived from the key (SHAKE-256)."""
    if not isinstance(key, str) or not key:
        raise ValueError("the key must be a non-empty string")
    digest = hashlib.shake_256(b"genwm-key-bits:" + key.encode("utf-8")).digest((n_bits + 7) // 8)
    bits = [(digest[i // 8] >> (i % 8)) & 1 for i in range(n_bits)]
    return torch.tensor(bits, dtype=torch.float32) * 2 - 1


def key_fingerprint(key: str) -> str:
    """Short public identifier of a key (a different hash domain from key_bits)."""
    return hashlib.sha256(b"genwm-key-fingerprint:" + key.encode("utf-8")).hexdigest()[:16]


def random_bits(batch: int, n_bits: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random +-1 keys, as phase 1 trains on: every key string maps to one of these."""
    return torch.randint(0, 2, (batch, n_bits), generator=generator).float() * 2 - 1


NULL_KEYS_SEED = 20240607


def null_key_bits(n: int, n_bits: int) -> torch.Tensor:
    """The key test's null keys [n, n_bits]: the same n keys every time (a located detector
    stores where each of them was located), and as unrelated to any subject's key as random
    keys are."""
    return random_bits(n, n_bits, torch.Generator().manual_seed(NULL_KEYS_SEED))
