"""Exact cosine nearest-neighbour search: FAISS when installed, torch otherwise.

FAISS path: inner product on L2-normalised float32 vectors (``IndexFlatIP``); a GPU index only when
``faiss.get_num_gpus() > 0`` (faiss-gpu on a machine with a GPU), else the CPU index. The torch path is a
chunked ``q @ db.T`` + ``topk`` on the inputs' device. Both return the same neighbours up to ties.
"""

from __future__ import annotations

from typing import Literal

import torch

from .checks import check_features

__all__ = ["cosine_topk", "unit_topk", "faiss_available", "Backend"]

Backend = Literal["auto", "faiss", "torch"]
_GPU_MAX_K = 2048  # faiss GPU_MAX_SELECTION_K


def faiss_available() -> bool:
    """True if ``import faiss`` works."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def cosine_topk(queries: torch.Tensor, database: torch.Tensor, k: int,
                backend: Backend = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` most cosine-similar database rows for every query row.

    Args:
        queries: float tensor [Q, D].
        database: float tensor [M, D], M >= 1.
        k: neighbours per query; clamped to M.
        backend: ``"faiss"`` (error if not installed), ``"torch"``, or ``"auto"`` (FAISS if installed).

    Returns:
        ``(similarities, indices)``: float32 [Q, k'] in descending order and int64 [Q, k'] row indices
        into ``database``, on the device of ``queries``; ``k' = min(k, M)``.

    Raises:
        TypeError / ValueError: inputs that are not finite float tensors [*, D] of one D, an empty database, or
            ``k`` < 1 (NaN rows would rank differently in each backend).
    """
    check_features(queries, "queries")
    check_features(database, "database", queries.shape[1])
    if database.shape[0] == 0:
        raise ValueError("the database is empty: there is nothing to search")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(k, database.shape[0])
    if queries.shape[0] == 0:
        return (torch.empty(0, k, device=queries.device),
                torch.empty(0, k, dtype=torch.int64, device=queries.device))
    q = torch.nn.functional.normalize(queries.detach().float(), dim=1)
    db = torch.nn.functional.normalize(database.detach().float(), dim=1)
    return unit_topk(q, db, k, backend)


def unit_topk(queries: torch.Tensor, database: torch.Tensor, k: int,
              backend: Backend = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`cosine_topk` for rows already L2-normalised: float32 queries [Q, D], database [M, D] with
    Q >= 1, M >= 1 and ``1 <= k <= M``; same returns."""
    q, db = queries, database
    if backend == "faiss" or (backend == "auto" and faiss_available()):
        return _faiss_topk(q, db, k)
    if backend not in ("auto", "torch"):
        raise ValueError(f"backend must be 'auto', 'faiss' or 'torch', got {backend!r}")
    return _torch_topk(q, db.to(q.device), k)


def _torch_topk(q: torch.Tensor, db: torch.Tensor, k: int, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    sims, idx = [], []
    for start in range(0, q.shape[0], chunk):
        s, i = (q[start:start + chunk] @ db.T).topk(k, dim=1)
        sims.append(s)
        idx.append(i)
    return torch.cat(sims), torch.cat(idx)


def _faiss_topk(q: torch.Tensor, db: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        import faiss
    except ImportError as exc:
        raise ImportError("backend='faiss' needs FAISS: pip install 'tad_plugin[faiss-cpu]' (or the faiss-gpu "
                          "extra; install exactly one of the two)") from exc
    device = q.device
    qn = q.cpu().contiguous().numpy()
    dbn = db.cpu().contiguous().numpy()
    index: faiss.Index = faiss.IndexFlatIP(dbn.shape[1])
    if faiss.get_num_gpus() > 0 and hasattr(faiss, "StandardGpuResources") and k <= _GPU_MAX_K:
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    index.add(dbn)
    sims, idx = index.search(qn, k)
    return torch.from_numpy(sims).to(device), torch.from_numpy(idx).to(device)
