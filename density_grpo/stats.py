"""Small numpy statistics (no scipy, no torch): rank correlation, and the diversity metrics of sampled responses."""

from __future__ import annotations

import math

import numpy as np


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given their average rank."""
    _, inverse, counts = np.unique(np.asarray(x), return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2.0)[inverse]


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman rank correlation (Pearson on average ranks); None when either side is constant."""
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return float(ra @ rb / denom) if denom > 0 else None




def distinct_n(texts: list[str], n: int) -> float:
    """Unique n-grams / total n-grams over whitespace tokens (n-grams never span two texts); 0 when there are none."""
    grams = [tuple(words[i : i + n]) for words in (t.split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def _unit_rows(emb: np.ndarray) -> np.ndarray:
    x = np.asarray(emb, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def pairwise_cosine_distance(emb: np.ndarray) -> float:
    """Mean of 1 - cos(e_i, e_j) over i < j; 0 for fewer than two rows."""
    n = len(emb)
    if n < 2:
        return 0.0
    sim = _unit_rows(emb) @ _unit_rows(emb).T
    return float(np.mean(1.0 - sim[np.triu_indices(n, k=1)]))


def vendi_score(emb: np.ndarray) -> float:
    """exp(Shannon entropy of the eigenvalues of K/n), K the cosine-similarity kernel: 1 (all alike) .. n (orthogonal).

    K/n = X X^T / n has the nonzero eigenvalues of X^T X / n, whichever of n and dim is smaller is decomposed.
    """
    n = len(emb)
    if n == 0:
        return 0.0
    x = _unit_rows(emb)
    lam = np.clip(np.linalg.eigvalsh((x @ x.T if n <= x.shape[1] else x.T @ x) / n), 0.0, None)
    lam = lam[lam > 1e-12] / lam.sum()
    return float(np.exp(-np.sum(lam * np.log(lam))))
