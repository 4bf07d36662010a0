"""SMOTE for one class at a time, with imbalanced-learn doing the synthesis (pure numpy, no Spark).

imbalanced-learn's SMOTE is given the class's images (plus one placeholder row of another class,
because it refuses single-class input) and a target count; a subclass records, for every synthetic
sample, its parent, the neighbour it was interpolated towards and the step, so lineage is stored
and checked. The neighbour search is exact brute force, split into chunks of query rows so that
its working memory is bounded; splitting does not change which neighbours are found.

Memory per call: the class matrix as int16 (rows x H x W x 3 x 2 bytes), the synthetic chunk as
float64 (chunk x H x W x 3 x 8 bytes) and one distance block (chunk_rows x rows x 8 bytes).

Runs in executors: one Spark task per class being grown (``balance``).
"""
from __future__ import annotations

import logging

import numpy as np
from imblearn.over_sampling import SMOTE
from PIL import Image
from sklearn.neighbors import NearestNeighbors

log = logging.getLogger(__name__)


class ChunkedNeighbors(NearestNeighbors):
    """Exact Euclidean k-NN over (optionally downsampled) image rows, queried in chunks."""

    def __init__(self, n_neighbors=6, chunk_rows=1024, image_shape=None, neighbor_size=None):
        super().__init__(n_neighbors=n_neighbors, algorithm="brute")
        self.chunk_rows = chunk_rows
        self.image_shape = image_shape
        self.neighbor_size = neighbor_size

    def _space(self, X) -> np.ndarray:
        if not self.neighbor_size or self.image_shape is None:
            return X
        h, w, c = self.image_shape
        s = int(self.neighbor_size)
        small = [np.asarray(Image.fromarray(np.clip(row.reshape(h, w, c), 0, 255).astype(np.uint8))
                            .resize((s, s), Image.BOX), np.int16).ravel() for row in X]
        return np.stack(small)

    def fit(self, X, y=None):
        self.data_ = self._space(np.asarray(X))
        self.sq_norms_ = np.einsum("ij,ij->i", self.data_.astype(np.float64), self.data_.astype(np.float64))
        self.n_samples_fit_ = self.data_.shape[0]
        return self

    def kneighbors(self, X=None, n_neighbors=None, return_distance=True):
        k = n_neighbors or self.n_neighbors
        queries = self.data_ if X is None else self._space(np.asarray(X))
        ref = self.data_.astype(np.float64)
        out_idx, out_dist = [], []
        for start in range(0, len(queries), self.chunk_rows):
            q = queries[start:start + self.chunk_rows].astype(np.float64)
            d2 = np.einsum("ij,ij->i", q, q)[:, None] - 2 * q @ ref.T + self.sq_norms_[None, :]
            np.maximum(d2, 0, out=d2)
            # Stable sort: ties broken by row index, the same whichever chunk a query is in.
            idx = np.argsort(d2, axis=1, kind="stable")[:, :k]
            out_idx.append(idx)
            out_dist.append(np.sqrt(np.take_along_axis(d2, idx, axis=1)))
        idx, dist = np.concatenate(out_idx), np.concatenate(out_dist)
        return (dist, idx) if return_distance else idx


class FixedNeighbors(NearestNeighbors):
    """Neighbours computed once per class and handed to SMOTE in every synthesis round
    (imbalanced-learn clones its estimator per call, so the table travels as a parameter)."""

    def __init__(self, n_neighbors=6, indices=None):
        super().__init__(n_neighbors=n_neighbors)
        self.indices = indices

    def fit(self, X, y=None):
        if len(X) != len(self.indices):
            raise ValueError("FixedNeighbors: the class changed between search and synthesis")
        self.n_samples_fit_ = len(X)
        return self

    def kneighbors(self, X=None, n_neighbors=None, return_distance=True):
        idx = self.indices[:, : (n_neighbors or self.n_neighbors)]
        return (np.zeros(idx.shape), idx) if return_distance else idx


class LineageSMOTE(SMOTE):
    """imbalanced-learn's SMOTE, recording (parent, neighbour, step) for each synthetic sample."""

    def _generate_samples(self, X, nn_data, nn_num, rows, cols, steps, y_type=None, y=None):
        self.lineage_ = (np.asarray(rows).copy(), np.asarray(nn_num[rows, cols]).copy(),
                         np.asarray(steps).ravel().copy())
        return super()._generate_samples(X, nn_data, nn_num, rows, cols, steps, y_type, y)


def effective_k(n_rows: int, k: int) -> int:
    """The k a class of ``n_rows`` can support: k, or n_rows - 1; 0 means oversample instead."""
    return max(0, min(k, n_rows - 1))


def smote_class(images: np.ndarray, n_new: int, k: int, seed: int, neighbor_size: int | None = None,
                chunk_rows: int = 1024, synth_chunk_rows: int = 2000):
    """``n_new`` synthetic images for one class: (uint8 [n_new,H,W,3], parent idx, neighbour idx, steps).

    Requires ``effective_k(len(images), k) >= 1``. Generated in rounds of at most
    ``synth_chunk_rows`` (each seeded from ``seed`` and the round) to bound memory."""
    n, shape = len(images), images.shape[1:]
    k_eff = effective_k(n, k)
    if k_eff < 1:
        raise ValueError(f"SMOTE needs at least 2 samples of a class, got {n}")
    flat = images.reshape(n, -1).astype(np.int16)  # int16: differences of uint8 must not wrap
    placeholder = np.zeros((1, flat.shape[1]), np.int16)
    X = np.vstack([flat, placeholder])
    y = np.r_[np.ones(n, int), 0]
    search = ChunkedNeighbors(n_neighbors=k_eff + 1, chunk_rows=chunk_rows, image_shape=shape,
                              neighbor_size=neighbor_size).fit(flat)
    table = search.kneighbors(flat, return_distance=False)  # once per class, reused by every round
    out, parents, neighbours, steps = [], [], [], []
    done, rnd = 0, 0
    while done < n_new:
        m = min(synth_chunk_rows, n_new - done)
        nn = FixedNeighbors(n_neighbors=k_eff + 1, indices=table)
        sm = LineageSMOTE(sampling_strategy={1: n + m}, k_neighbors=nn, random_state=seed + 7919 * rnd)
        Xr, _ = sm.fit_resample(X, y)
        new = Xr[n + 1:]
        assert len(new) == m, (len(new), m)
        out.append(np.clip(new, 0, 255).astype(np.uint8).reshape((m,) + shape))
        p, q, s = sm.lineage_
        parents.append(p)
        neighbours.append(q)
        steps.append(s)
        done += m
        rnd += 1
    return np.concatenate(out), np.concatenate(parents), np.concatenate(neighbours), np.concatenate(steps)
