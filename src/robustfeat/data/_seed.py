"""Deterministic seeds derived from tuples (base seed, split, epoch, batch ...).

Every random draw in the data package comes from a ``torch.Generator`` seeded here, so a
sample, a split or a batch depends only on the tuple that names it (not on how many draws
happened before): this is what makes a resumed epoch reproduce the same batches bit for bit.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from ``parts`` (stable across runs, platforms and Python versions)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def make_generator(*parts: int | str) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded by ``derive_seed(*parts)``."""
    generator = torch.Generator()
    generator.manual_seed(derive_seed(*parts))
    return generator
