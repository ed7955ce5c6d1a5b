"""SYNTHETIC DNA sequences with a planted motif (no real genome involved).

Random 150-base sequences (uniform A/C/G/T with occasional N); the positive class carries the
motif ``GATTACAG`` once or twice, on either strand (half the plants are reverse-complemented, so
a model only finds them all through canonical k-mers). For demonstrating the sequence serving
path only.
"""

from __future__ import annotations

from typing import Final

import numpy as np

from medserve.features.modalities.sequence import reverse_complement

MOTIF: Final = "GATTACAG"
LABELS: Final = ["background", "motif"]


def random_sequence(rng: np.random.Generator, length: int = 150) -> str:
    bases = rng.choice(list("ACGT"), size=length)
    if rng.random() < 0.2:
        bases[rng.integers(0, length)] = "N"
    return "".join(bases)


def plant(rng: np.random.Generator, sequence: str) -> str:
    motif = MOTIF if rng.random() < 0.5 else reverse_complement(MOTIF)
    start = int(rng.integers(0, len(sequence) - len(motif)))
    return sequence[:start] + motif + sequence[start + len(motif) :]


def sequences(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(n):
        sequence = random_sequence(rng)
        positive = i % 2 == 1
        if positive:
            for _ in range(int(rng.integers(1, 3))):
                sequence = plant(rng, sequence)
        texts.append(sequence)
        labels.append(LABELS[int(positive)])
    return texts, labels
