"""What ``plural eval rec --ray`` runs on Ray: persona induction and attribution, user shards.

The evaluation's per-user work that does not depend on other users is the induction of each
user's personas on the split and the attribution of every item to one of them
(:func:`evals.plural_batch.induce_rows`): the validation and the test split each do it for
every evaluated user. :func:`ray_map_shards` cuts the users into shards of ``shard_size`` and
runs ``induce_rows`` on each as a Ray task (the inducer, with its item space, and the scorer go
to the object store once); the parts come back in row order. The result equals the in-process
one: a user's personas depend only on the user's rows, the item space is built once on the
driver, and FAISS's k-means runs single-threaded (``memory.faiss_runtime``) in every process.

What stays on the driver, and why: the replay of ``persona_calibrated`` (each user's list reads
the exposure counts every earlier list added to: sequential by definition), EASE fits, the
vectorised re-rankers and the metrics (matrix operations that take seconds on ML-100K).
"""

from __future__ import annotations

from collections.abc import Callable

from memory.errors import UsageError


def _induce_shard(shared, users, history, exclude):
    from evals.plural_batch import induce_rows

    inducer, scorer = shared
    return induce_rows(inducer, scorer, users, history, exclude)


def ray_map_shards(ray: bool | str = True, shard_size: int = 100) -> Callable:
    """A ``map_shards`` for :func:`evals.plural_batch.induce_for_split` that runs on Ray
    (``ray``: as in :func:`agent.batch.batch_recommend`; a Ray already initialised is used)."""
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size <= 0:
        raise UsageError("shard_size", shard_size, "a positive integer (users per Ray task)")

    def run(inducer, scorer, users, history, exclude):
        from agent.batch import ray_session

        with ray_session(ray) as ray_mod:
            shared = ray_mod.put((inducer, scorer))
            task = ray_mod.remote(num_cpus=1)(_induce_shard)
            futures = [task.remote(shared, users[a:a + shard_size], history[a:a + shard_size],
                                   exclude[a:a + shard_size]) for a in range(0, len(users), shard_size)]
            return ray_mod.get(futures)

    return run
