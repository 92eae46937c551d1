"""The one place Plural imports FAISS.

On first import, FAISS's OpenMP pool is limited to ``$PLURAL_FAISS_THREADS`` threads (default
1). Plural's FAISS work is small (per-user k-means, per-namespace indexes), where OpenMP start-up
costs more than it saves, and on small machines FAISS's OpenMP runtime competes with PyTorch's:
measured on 2 cores, a Mult-VAE fit took 1.7-2x longer once FAISS was imported with its default
thread count. Set ``PLURAL_FAISS_THREADS`` higher for large IVF/HNSW catalog indexes.
"""

from __future__ import annotations

import os

from memory.errors import UsageError

_configured = False


def load_faiss():
    """``import faiss``, configured once (see the module docstring)."""
    global _configured
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - faiss-cpu is a hard dependency
        raise UsageError("vector index backend", "faiss", "install faiss-cpu (or faiss-gpu for GPU search)") from e
    if not _configured:
        raw = os.environ.get("PLURAL_FAISS_THREADS", "1")
        try:
            n = int(raw)
        except ValueError:
            raise UsageError("PLURAL_FAISS_THREADS", raw, "a positive integer") from None
        if n <= 0:
            raise UsageError("PLURAL_FAISS_THREADS", raw, "a positive integer")
        faiss.omp_set_num_threads(n)
        _configured = True
    return faiss
