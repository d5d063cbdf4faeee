"""Pair sampling: which slice pairs (x_i, x_j) make up one training epoch.

Wang et al., MedIA 2021, Sec. 4.2.1 / 4.3 and Table 3:
- intra-patient pairs: slices of the same volume at fixed axial offsets
  (LiTS CT: 5, 9, 13 slices; CHAOS MR: 3, 5, 7);
- inter-patient pairs: each slice paired with random slices of other volumes, twice per epoch;
- a single training volume simulates inter-patient pairs by pairing its slices with a shuffled copy;
- identical pairs (x, x): ablation only.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np

from pairseg.constants import DEFAULT_OFFSETS, PAIR_MODES

__all__ = ["default_offsets", "sample_pairs"]


VolumeSpec = Union[int, Sequence[int], np.ndarray]


def default_offsets(modality: str) -> Tuple[int, ...]:
    """Intra-patient axial offsets used in the paper: (3, 5, 7) for MR (CHAOS), (5, 9, 13) for CT (LiTS)."""
    key = str(modality).strip().upper()
    key = "MR" if key in ("MRI", "MR") else key
    if key not in DEFAULT_OFFSETS:
        raise ValueError(f"unknown modality {modality!r}; expected 'MR' or 'CT'")
    return DEFAULT_OFFSETS[key]


def _is_int(x: object) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _usable_slices(volumes: Sequence[VolumeSpec]) -> list:
    """Each volume as a sorted array of unique usable slice indices."""
    if isinstance(volumes, (str, bytes)) or not hasattr(volumes, "__len__"):
        raise ValueError(
            f"volumes must be a list of slice counts or slice-index arrays, got {type(volumes).__name__}"
        )
    if len(volumes) == 0:
        raise ValueError("no volumes given: need at least one volume to sample pairs from")
    out = []
    for v, spec in enumerate(volumes):
        if _is_int(spec):
            if spec < 1:
                raise ValueError(f"volume {v} has no slices (slice count {spec})")
            out.append(np.arange(int(spec), dtype=np.int64))
            continue
        arr = np.asarray(spec)
        if arr.ndim != 1:
            raise ValueError(f"volume {v}: slice indices must be a 1-D array, got shape {arr.shape}")
        if arr.size == 0:
            raise ValueError(f"volume {v} has no slices (empty slice-index array)")
        if not np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_:
            raise ValueError(f"volume {v}: slice indices must be integers, got dtype {arr.dtype}")
        if arr.min() < 0:
            raise ValueError(f"volume {v}: negative slice index {int(arr.min())}")
        out.append(np.unique(arr.astype(np.int64)))
    return out


def _check_offsets(offsets: Sequence[int]) -> np.ndarray:
    offs = list(offsets) if not _is_int(offsets) else [offsets]
    if not offs:
        raise ValueError("offsets must name at least one axial offset for intra-patient pairs")
    for o in offs:
        if not _is_int(o) or o < 1:
            raise ValueError(f"offsets must be integers >= 1, got {o!r}")
    return np.unique(np.asarray(offs, dtype=np.int64))


def _apply_margin(
    slices: list, labelled_ranges: Optional[Sequence[Optional[Tuple[int, int]]]], margin: Optional[int]
) -> list:
    """Keep slices within ``margin`` slices of each volume's labelled range (first, last)."""
    if margin is None:
        return slices
    if not _is_int(margin) or margin < 0:
        raise ValueError(f"margin must be an integer >= 0, got {margin!r}")
    if labelled_ranges is None:
        raise ValueError("margin needs labelled_ranges: one (first, last) labelled slice per volume")
    if len(labelled_ranges) != len(slices):
        raise ValueError(f"labelled_ranges has {len(labelled_ranges)} entries for {len(slices)} volumes")
    kept = []
    for v, (s, rng) in enumerate(zip(slices, labelled_ranges)):
        if rng is None:  # nothing labelled in this volume: keep every slice
            kept.append(s)
            continue
        first, last = (int(x) for x in rng)
        if first > last:
            raise ValueError(f"labelled_ranges[{v}] = {tuple(rng)}: first must be <= last")
        keep = s[(s >= first - margin) & (s <= last + margin)]
        if keep.size == 0:
            raise ValueError(
                f"volume {v}: no usable slice within {margin} slices of its labelled range {(first, last)}"
            )
        kept.append(keep)
    return kept


def _intra(slices: list, offsets: np.ndarray) -> np.ndarray:
    rows = []
    for v, s in enumerate(slices):
        for o in offsets:
            partner = s + o
            ok = np.isin(partner, s, assume_unique=True)
            n = int(ok.sum())
            rows.append(np.stack([np.full(n, v), s[ok], np.full(n, v), partner[ok]], axis=1))
    return np.concatenate(rows) if rows else np.empty((0, 4), np.int64)


def _shuffled_partner(s: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A shuffled copy of ``s`` with no slice left paired with itself (when len(s) > 1)."""
    p = rng.permutation(s)
    n = len(p)
    if n > 1:
        for i in np.flatnonzero(p == s):
            j = (i + 1) % n
            if p[i] == s[i]:  # still a fixed point (an earlier swap may have moved it)
                p[i], p[j] = p[j], p[i]
    return p


def _inter(slices: list, repeats: int, rng: np.random.Generator) -> np.ndarray:
    n_vol = len(slices)
    rows = []
    if n_vol == 1:  # one volume: its own shuffled slices stand in for another patient's
        s = slices[0]
        for _ in range(repeats):
            rows.append(np.stack([np.zeros_like(s), s, np.zeros_like(s), _shuffled_partner(s, rng)], axis=1))
        return np.concatenate(rows)
    # partner drawn uniformly among all usable slices of the OTHER volumes
    counts = np.array([len(s) for s in slices])
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pool_vol = np.repeat(np.arange(n_vol), counts)
    pool_slice = np.concatenate(slices)
    total = int(counts.sum())
    for v, s in enumerate(slices):
        first = np.tile(s, repeats)
        j = rng.integers(0, total - counts[v], size=first.size)
        j = np.where(j >= starts[v], j + counts[v], j)  # skip volume v's own block of the pool
        rows.append(np.stack([np.full(first.size, v), first, pool_vol[j], pool_slice[j]], axis=1))
    return np.concatenate(rows)


def sample_pairs(
    volumes: Sequence[VolumeSpec],
    *,
    mode: str = "intra+inter",
    offsets: Sequence[int] = (3, 5, 7),
    inter_repeats: int = 2,
    labelled_ranges: Optional[Sequence[Optional[Tuple[int, int]]]] = None,
    margin: Optional[int] = None,
    seed: Union[int, np.random.Generator, None] = 0,
) -> np.ndarray:
    """One epoch of slice pairs as an int64 array (M, 4) of rows (volume_a, slice_a, volume_b, slice_b).

    volumes: slice counts, or 1-D arrays of usable slice indices, one per volume.
    mode: "intra" (same volume, slice s with s + o for each offset o that exists),
    "inter" (each slice ``inter_repeats`` times with a random slice of another volume; a single
    volume uses a shuffled copy of its own slices), "intra+inter" (both, the paper's default) or
    "identical" ((x, x) pairs, ablation). With ``margin``, only slices within ``margin`` slices of
    ``labelled_ranges[v] = (first, last)`` are used (an entry None keeps all of that volume).
    Deterministic for a given seed. Rows are ordered by kind (intra, then inter), not shuffled.
    """
    if mode not in PAIR_MODES:
        raise ValueError(f"unknown pair mode {mode!r}; expected one of {PAIR_MODES}")
    slices = _apply_margin(_usable_slices(volumes), labelled_ranges, margin)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    parts = []
    if mode == "identical":
        same = [np.stack([np.full(len(s), v), s, np.full(len(s), v), s], axis=1) for v, s in enumerate(slices)]
        parts.append(np.concatenate(same))
    if mode in ("intra", "intra+inter"):
        parts.append(_intra(slices, _check_offsets(offsets)))
    if mode in ("inter", "intra+inter"):
        if not _is_int(inter_repeats) or inter_repeats < 1:
            raise ValueError(f"inter_repeats must be an integer >= 1, got {inter_repeats!r}")
        parts.append(_inter(slices, int(inter_repeats), rng))
    pairs = np.concatenate(parts).astype(np.int64, copy=False)
    if len(pairs) == 0:
        raise ValueError(
            f"no {mode} pairs: every volume is shorter than the smallest offset {min(offsets)}"
        )
    return pairs
