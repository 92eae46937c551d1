"""Baseline scorers for evaluation, with the :class:`~personas.scorers.Scorer` interface.

- :class:`Popularity`: the same ranking for everyone (the floor any model must clear).
- :class:`ContentMean`: a single-vector *content* user model (mean of the text embeddings of
  the user's positives): the text analogue of the crowding-out problem.
- :class:`MultVAE`: Liang et al. (2018), the strong neural collaborative baseline; ``torch`` is
  imported only when it is fitted or scored.

Example:
    >>> import numpy as np, scipy.sparse as sp
    >>> X = sp.csr_matrix(np.array([[1, 1, 0], [0, 1, 0]], dtype=np.float32))
    >>> Popularity().fit(X).score([0])
    array([1., 2., 0.], dtype=float32)
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field

from memory.errors import UsageError
from personas.scorers import Scorer


def _check_fitted(scorer: Scorer, X: sp.spmatrix) -> None:
    if scorer.n_items == 0:
        raise UsageError("scorer state", "unfitted", f"call {type(scorer).__name__}.fit(X) before scoring")
    if X.shape[1] != scorer.n_items:
        raise UsageError("history matrix columns", X.shape[1], f"{scorer.n_items} (the items it was fitted on)")


class Popularity(Scorer):
    """Scores every item by the number of training users who interacted with it."""

    name = "popularity"

    def __init__(self):
        self.counts = np.zeros(0, np.float32)

    def fit(self, X: sp.csr_matrix) -> "Popularity":
        X = sp.csr_matrix(X)
        self.n_items = X.shape[1]
        self.counts = np.asarray((X > 0).sum(axis=0), dtype=np.float32).ravel()
        return self

    def score_batch(self, X: sp.csr_matrix) -> np.ndarray:
        _check_fitted(self, X)
        return np.broadcast_to(self.counts, (X.shape[0], self.n_items)).copy()


class ContentMean(Scorer):
    """Single-vector content baseline: the user is the mean of the L2-normalised text embeddings of
    their training positives; an item scores its cosine to that mean.

    Users without history get all-zero scores. ``fit`` only records the catalog size: the model
    has no collaborative parameters.

    Example:
        >>> import numpy as np, scipy.sparse as sp
        >>> E = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
        >>> m = ContentMean(E).fit(sp.csr_matrix((2, 3)))
        >>> int(np.argmax(m.score([0]) * [0, 1, 1]))
        1
    """

    name = "content-mean"

    def __init__(self, item_embeddings: np.ndarray):
        E = np.asarray(item_embeddings, dtype=np.float32)
        if E.ndim != 2:
            raise UsageError("item_embeddings shape", E.shape, "(n_items, dim)")
        norms = np.linalg.norm(E, axis=1, keepdims=True)
        # a zero embedding (an item without text) stays zero: cosine 0 to everyone
        self.embeddings = np.where(norms > 0, E / np.where(norms > 0, norms, 1.0), 0.0).astype(np.float32)

    def fit(self, X: sp.csr_matrix) -> "ContentMean":
        if X.shape[1] != self.embeddings.shape[0]:
            raise UsageError("interaction matrix columns", X.shape[1],
                             f"{self.embeddings.shape[0]} (one per item embedding row)")
        self.n_items = X.shape[1]
        return self

    def score_batch(self, X: sp.csr_matrix) -> np.ndarray:
        _check_fitted(self, X)
        X = sp.csr_matrix(X, dtype=np.float32)
        X.data[:] = 1.0
        # the mean's scale does not change cosines, so the sum is normalised directly
        U = np.asarray(X @ self.embeddings)
        n = np.linalg.norm(U, axis=1, keepdims=True)
        U = np.where(n > 0, U / np.where(n > 0, n, 1.0), 0.0)
        return (U @ self.embeddings.T).astype(np.float32)


class MultVAEConfig(BaseModel):
    """Mult-VAE hyperparameters (Liang et al. 2018); defaults follow the paper except ``epochs``."""

    model_config = ConfigDict(extra="forbid")

    hidden: int = Field(600, gt=0)
    """Width of the encoder's and the decoder's hidden layer."""
    latent: int = Field(200, gt=0)
    """Dimension of the latent user vector."""
    dropout: float = Field(0.5, ge=0, lt=1)
    """Dropout on the (normalised) input during training."""
    beta_max: float = Field(0.2, ge=0)
    """Cap of the KL weight beta (the paper's anneal cap)."""
    anneal_fraction: float = Field(0.8, gt=0, le=1)
    """Beta rises linearly from 0 to ``beta_max`` over this share of all updates, then stays."""
    lr: float = Field(1e-3, gt=0)
    """Adam learning rate."""
    batch_size: int = Field(500, gt=0)
    """Users per update."""
    epochs: int = Field(80, gt=0)
    """Passes over the users. 80 (160 updates at batch 500) trains ML-100K in about 12 s on 2 CPU
    cores; larger data sets have more batches per epoch and need fewer epochs."""
    seed: int = 0
    """Seeds initialisation, batch order, dropout and the reparameterisation noise."""


class MultVAE(Scorer):
    """Variational autoencoder with a multinomial likelihood over items (Liang et al. 2018).

    Encoder ``n_items -> hidden -> 2*latent`` (tanh), decoder ``latent -> hidden -> n_items``;
    scores are the decoder's logits at the posterior mean. Runs on CPU; the global torch random
    state is left untouched.

    Example:
        >>> import numpy as np, scipy.sparse as sp
        >>> X = sp.csr_matrix((np.random.default_rng(0).random((50, 30)) < 0.2).astype(np.float32))
        >>> MultVAE(epochs=2, hidden=16, latent=8).fit(X).score_batch(X[:3]).shape
        (3, 30)
    """

    name = "multvae"

    def __init__(self, config: MultVAEConfig | None = None, **overrides):
        self.config = MultVAEConfig.model_validate({**(config or MultVAEConfig()).model_dump(), **overrides})
        self.model = None
        # mean training loss of each epoch, to check convergence
        self.losses: list[float] = []

    def _build(self, n_items: int):
        import torch
        from torch import nn

        c = self.config

        class _VAE(nn.Module):
            def __init__(self):
                super().__init__()
                self.enc_in = nn.Linear(n_items, c.hidden)
                self.enc_out = nn.Linear(c.hidden, 2 * c.latent)
                self.dec = nn.Sequential(nn.Linear(c.latent, c.hidden), nn.Tanh(), nn.Linear(c.hidden, n_items))

            def forward(self, x, noise_gen=None):
                # x is a sparse (normalised, dropped-out) batch: a sparse product skips the ~95% zeros
                h = torch.tanh(torch.sparse.mm(x, self.enc_in.weight.T) + self.enc_in.bias)
                h = self.enc_out(h)
                mu, logvar = h[:, :c.latent], h[:, c.latent:]
                if noise_gen is None:
                    return self.dec(mu), mu, logvar
                eps = torch.randn(mu.shape, generator=noise_gen)
                return self.dec(mu + eps * torch.exp(0.5 * logvar)), mu, logvar

        return _VAE()

    @staticmethod
    def _input(X: sp.csr_matrix, keep: np.ndarray | None = None, dropout: float = 0.0):
        """A torch sparse batch: rows L2-normalised, then (training) dropout of the non-zeros, as in
        the paper's code. Dropout only ever zeroes non-zeros, so it is applied to the values alone."""
        import torch

        X = sp.csr_matrix(X)
        X.sum_duplicates()  # sorted, unique columns per row: a coalesced COO below
        X = X.tocoo()
        counts = np.bincount(X.row, minlength=X.shape[0]).astype(np.float32)
        vals = 1.0 / np.sqrt(np.maximum(counts[X.row], 1.0))
        if keep is not None:
            vals = vals * keep / (1.0 - dropout)
        idx = torch.from_numpy(np.vstack([X.row, X.col]).astype(np.int64))
        # rows come from CSR with sorted, unique columns: already coalesced, and valid by construction
        return torch.sparse_coo_tensor(idx, torch.from_numpy(vals.astype(np.float32)), X.shape,
                                       is_coalesced=True, check_invariants=False)

    def fit(self, X: sp.csr_matrix) -> "MultVAE":
        from threadpoolctl import threadpool_limits

        # numpy's BLAS threads spin-wait after large products (e.g. EASE's inversion) and fight
        # torch's threads for the cores: measured 7x slower training on 2 cores without this
        with threadpool_limits(1, user_api="blas"):
            return self._fit(X)

    def _fit(self, X: sp.csr_matrix) -> "MultVAE":
        import torch

        c = self.config
        X = sp.csr_matrix(X, dtype=np.float32)
        X.sum_duplicates()
        X.data[:] = 1.0
        n_users, n_items = X.shape
        self.n_items = n_items
        rng = np.random.default_rng(c.seed)
        gen = torch.Generator().manual_seed(c.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(c.seed)  # only nn.Linear's initialisation reads the global state
            model = self._build(n_items)
        opt = torch.optim.Adam(model.parameters(), lr=c.lr)
        batches_per_epoch = -(-n_users // c.batch_size)
        anneal_updates = max(1.0, c.anneal_fraction * c.epochs * batches_per_epoch)
        update = 0
        self.losses = []
        model.train()
        for _ in range(c.epochs):
            order = rng.permutation(n_users)
            total = 0.0
            for s in range(0, n_users, c.batch_size):
                xb = X[order[s:s + c.batch_size]]
                keep = (rng.random(xb.nnz) >= c.dropout) if c.dropout > 0 else None
                xin = self._input(xb, keep, c.dropout)
                beta = c.beta_max * min(1.0, update / anneal_updates)
                logits, mu, logvar = model(xin, noise_gen=gen)
                # multinomial log-likelihood: only the observed items' log-probabilities count
                logp = torch.log_softmax(logits, dim=1)
                rows, cols = xin.indices()
                nll = -logp[rows, cols].sum() / xb.shape[0]
                kl = 0.5 * (logvar.exp() + mu.pow(2) - 1.0 - logvar).sum(dim=1).mean()
                loss = nll + beta * kl
                opt.zero_grad()
                loss.backward()
                opt.step()
                update += 1
                total += float(loss.detach()) * xb.shape[0]
            self.losses.append(total / max(n_users, 1))
        model.eval()
        self.model = model
        return self

    def score_batch(self, X: sp.csr_matrix, chunk: int = 2048) -> np.ndarray:
        import torch

        _check_fitted(self, X)
        X = sp.csr_matrix(X, dtype=np.float32)
        X.sum_duplicates()
        X.data[:] = 1.0
        out = np.empty(X.shape, np.float32)
        with torch.no_grad():
            for s in range(0, X.shape[0], chunk):
                logits, _, _ = self.model(self._input(X[s:s + chunk]))
                out[s:s + chunk] = logits.numpy()
        return out
