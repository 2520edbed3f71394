"""Feature similarity against semantic similarity: the seed paper's retrieval diagnostics.

The seed paper (Tables 1-2, Figure 1) asks of per-second features: is the most similar
second (cosine) one that shares an event label? Within one modality it nearly always is
(0.97 on LLP); across modalities rarely (0.29). This module computes those numbers:

* **recall-top1**: for each *query* second, does its most similar *candidate* second share
  a label (``match="any"``) or carry the same label set (``match="exact"``)?
* **distinguish**: is that most similar candidate labelled at all (not background)?
* **precision** (R-precision): with M = the number of candidates that match the query,
  the fraction of the query's M most similar candidates that match. Queries with M = 0
  have no defined R-precision and are left out (``precision_queries`` counts the rest).

Which seconds take part (documented here because the numbers depend on it):

* Queries are the *labelled* seconds of the query modality (>= 1 event in its dense truth).
* Candidates are *all* seconds of the other (or same) modality of the split, background
  included: "distinguish" only means something if background seconds can win, and a
  retrieval over the whole split is what a fusion layer attending over time faces.
* Within one modality a second never retrieves itself (``self_index``); across modalities
  the same second of the other stream is an ordinary candidate (the paper's C1 in Fig. 1).

Scale: LLP's test split has ~12,000 seconds per modality. Similarities are computed one
block of queries at a time against all candidates, (B, N) at once, never (N, N); the
block size follows a memory budget. Torch runs it on the GPU when present, else the CPU.
Ties in similarity are broken by the sort's order (continuous features make them rare).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from avvp_pipe.core import device as core_device
from avvp_pipe.core.errors import AvvpError

MATCHES = ("any", "exact")
#: Bytes per (query, candidate) pair while a block is processed: similarity (4), sort
#: indices (8), matches (1), gathered matches and their running count (8+): ~24, rounded up.
_BYTES_PER_PAIR = 32
DEFAULT_BUDGET_BYTES = 256 * 2**20

Progress = Callable[[int], None]


def resolve_device(device: str | None = None) -> torch.device:
    """:func:`avvp_pipe.core.device.resolve_device` (``None``/"auto": CUDA when available, else CPU) as a torch.device."""
    return torch.device(core_device.resolve_device(device))


def block_rows(n_candidates: int, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> int:
    """Queries per block so that one block's (B, N) work stays within ``budget_bytes``."""
    return max(1, budget_bytes // (_BYTES_PER_PAIR * max(1, n_candidates)))


def _unit_rows(x: np.ndarray | torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Rows scaled to unit L2 norm, so a dot product is the cosine; zero rows stay zero."""
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).to(device=device, dtype=dtype)
    return torch.nn.functional.normalize(t, dim=1, eps=1e-12)  # (N, D)


def _match(q_labels: torch.Tensor, c_labels: torch.Tensor, q_codes: torch.Tensor, c_codes: torch.Tensor,
           match: str) -> torch.Tensor:
    """(B, N) bool: does candidate j match query i (share a label / same label set)?"""
    if match == "any":
        return (q_labels @ c_labels.T) > 0  # (B, K) @ (K, N) -> (B, N)
    return q_codes[:, None] == c_codes[None, :]  # (B, N)


def _codes(labels: torch.Tensor) -> torch.Tensor:
    """(N, K) 0/1 -> (N,) int64, one integer per label set (K <= 62)."""
    weights = 2 ** torch.arange(labels.shape[1], device=labels.device, dtype=torch.int64)  # (K,)
    return (labels.to(torch.int64) * weights).sum(1)  # (N,)


def retrieval_metrics(
    queries: np.ndarray | torch.Tensor,
    candidates: np.ndarray | torch.Tensor,
    query_labels: np.ndarray,
    candidate_labels: np.ndarray,
    *,
    self_index: np.ndarray | None = None,
    match: str = "any",
    block: int | None = None,
    device: str | None = None,
    dtype: torch.dtype = torch.float32,
    progress: Progress | None = None,
) -> dict:
    """recall-top1, distinguish and R-precision of ``queries`` retrieving from ``candidates``.

    queries (Nq, D) and candidates (Nc, D) features; query_labels (Nq, K) and
    candidate_labels (Nc, K) multi-hot. Every query should be labelled (the caller picks
    them); a query without labels can never match and counts as a miss. ``self_index``
    (Nq,) gives each query's own row among the candidates, excluded from its retrieval
    (within-modality use). Returns plain floats; a metric over zero queries is NaN.
    """
    if match not in MATCHES:
        raise AvvpError(f"match {match!r}: expected one of {', '.join(MATCHES)}")
    nq, nc = len(queries), len(candidates)
    if len(query_labels) != nq or len(candidate_labels) != nc:
        raise AvvpError(f"labels: expected {nq} query and {nc} candidate rows but got "
                        f"{len(query_labels)} and {len(candidate_labels)}")
    if nq and queries.shape[1] != candidates.shape[1]:
        raise AvvpError(f"features: expected queries and candidates of one width but got "
                        f"{queries.shape[1]} and {candidates.shape[1]}")
    need = 2 if self_index is not None else 1
    if nc < need:
        raise AvvpError(f"retrieval needs at least {need} candidate seconds but got {nc}")
    dev = resolve_device(device)
    q_all = _unit_rows(queries, dev, dtype)  # (Nq, D)
    c_all = _unit_rows(candidates, dev, dtype)  # (Nc, D)
    ql = torch.as_tensor(np.asarray(query_labels) > 0, device=dev).to(dtype)  # (Nq, K)
    cl = torch.as_tensor(np.asarray(candidate_labels) > 0, device=dev).to(dtype)  # (Nc, K)
    q_codes, c_codes = _codes(ql), _codes(cl)  # (Nq,), (Nc,)
    c_labelled = cl.sum(1) > 0  # (Nc,)
    own = None if self_index is None else torch.as_tensor(np.asarray(self_index), device=dev, dtype=torch.int64)
    step = block or block_rows(nc)
    hits = labelled = prec_sum = 0.0
    prec_n = 0
    for start in range(0, nq, step):
        stop = min(nq, start + step)
        sim = q_all[start:stop] @ c_all.T  # (B, D) @ (D, Nc) -> (B, Nc)
        is_match = _match(ql[start:stop], cl, q_codes[start:stop], c_codes, match)  # (B, Nc)
        if own is not None:
            rows = torch.arange(stop - start, device=dev)
            sim[rows, own[start:stop]] = -math.inf  # a second never retrieves itself
            is_match[rows, own[start:stop]] = False  # nor counts towards its own M
        top1 = sim.argmax(1)  # (B,)
        hits += is_match.gather(1, top1[:, None]).sum().item()
        labelled += c_labelled[top1].sum().item()
        m = is_match.sum(1)  # (B,) matching candidates: R-precision's cut-off
        order = sim.argsort(1, descending=True)  # (B, Nc)
        found = is_match.gather(1, order).cumsum(1, dtype=torch.int32)  # (B, Nc) matches within the top r
        at_m = found.gather(1, (m - 1).clamp(min=0)[:, None])[:, 0]  # (B,)
        has = m > 0
        prec_sum += (at_m[has].to(torch.float64) / m[has]).sum().item()
        prec_n += int(has.sum().item())
        if progress is not None:
            progress(stop - start)
    nan = float("nan")
    return {
        "queries": nq,
        "candidates": nc,
        "recall_top1": hits / nq if nq else nan,
        "distinguish": labelled / nq if nq else nan,
        "precision": prec_sum / prec_n if prec_n else nan,
        "precision_queries": prec_n,
    }


#: Retrieval directions: (query modality, candidate modality).
DIRECTIONS: dict[str, tuple[str, str]] = {
    "audio->audio": ("audio", "audio"),
    "visual->visual": ("visual", "visual"),
    "audio->visual": ("audio", "visual"),
    "visual->audio": ("visual", "audio"),
}


def modality_metrics(
    audio: np.ndarray,
    visual: np.ndarray | None,
    audio_labels: np.ndarray,
    visual_labels: np.ndarray,
    *,
    directions: tuple[str, ...] | None = None,
    match: str = "any",
    block: int | None = None,
    device: str | None = None,
    dtype: torch.dtype = torch.float32,
    progress_factory: Callable[[str, int], Progress] | None = None,
) -> dict[str, dict]:
    """All four retrieval passes over one split's seconds (rows aligned across modalities).

    audio (S, Da) and visual (S, Dv) per-second features, row s of both is the same second;
    audio_labels / visual_labels (S, K) its dense truth. Across-modality passes need
    Da == Dv (one space); pass ``directions`` to run only some. ``visual`` may be None
    when only ``audio->audio`` is asked for.
    """
    feats = {"audio": audio, "visual": visual}
    labels = {"audio": np.asarray(audio_labels) > 0, "visual": np.asarray(visual_labels) > 0}
    out: dict[str, dict] = {}
    for name in directions or tuple(DIRECTIONS):
        if name not in DIRECTIONS:
            raise AvvpError(f"direction {name!r}: expected one of {', '.join(DIRECTIONS)}")
        qm, cm = DIRECTIONS[name]
        if feats[qm] is None or feats[cm] is None:
            raise AvvpError(f"direction {name}: expected {qm} and {cm} features but got None")
        rows = np.flatnonzero(labels[qm].any(1))  # labelled seconds are the queries
        progress = progress_factory(name, len(rows)) if progress_factory else None
        out[name] = retrieval_metrics(
            feats[qm][rows], feats[cm], labels[qm][rows], labels[cm],
            self_index=rows if qm == cm else None, match=match, block=block, device=device,
            dtype=dtype, progress=progress,
        )
    return out


def headline(passes: dict[str, dict]) -> dict[str, float | None]:
    """The paper's numbers from the passes: Table 1 (within, across) and Table 2 (a->v).

    ``recall_within`` pools both within-modality passes over their queries (the paper's
    single "unimodal" figure); the across numbers are audio->visual, the paper's direction
    (precision's M counts visual seconds sharing the audio second's label).
    """
    def get(name: str, key: str) -> float | None:
        value = passes.get(name, {}).get(key)
        return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)

    within = [passes[n] for n in ("audio->audio", "visual->visual") if n in passes and passes[n]["queries"]]
    pooled = (sum(p["recall_top1"] * p["queries"] for p in within) / sum(p["queries"] for p in within)
              if within else None)
    return {
        "recall_within": pooled,
        "recall_within_audio": get("audio->audio", "recall_top1"),
        "recall_within_visual": get("visual->visual", "recall_top1"),
        "recall_across": get("audio->visual", "recall_top1"),
        "recall_across_visual_audio": get("visual->audio", "recall_top1"),
        "distinguish": get("audio->visual", "distinguish"),
        "precision": get("audio->visual", "precision"),
    }
