"""The two batch samplers of the training stages: sft's epoch sampler and the ρ_real mixing sampler.

Both are infinite and deterministic, and batch ``k`` is a pure function of ``k``: the state is just
the step, so resuming from ``state_dict()`` reproduces the following batches exactly. ``batch_size``
is the global batch; rank ``r`` of ``world_size`` takes positions ``r, r + W, ...`` of it.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from bcoder_core.errors import BcoderError

if TYPE_CHECKING:
    from bcoder_core.rl.transitions import TransitionStore

# The mixing sampler's warnings keep the logger they always had (it lived in rl.transitions).
log = logging.getLogger("bcoder_core.rl.transitions")


def _walk_epochs(perm: Callable[[int], np.ndarray], n: int, start: int, count: int) -> list[int]:
    """``count`` indices from position ``start`` of the endless walk ``perm(0), perm(1), ...``.

    A walk that crosses the end of an epoch takes the rest of it and the start of the next, so a
    pool smaller than ``count`` repeats indices.
    """
    out: list[int] = []
    pos = start
    while len(out) < count:
        epoch, off = divmod(pos, n)
        chunk = perm(epoch)[off : off + (count - len(out))]
        out.extend(int(x) for x in chunk)
        pos += len(chunk)
    return out


class EpochSampler:
    """Deterministic, infinite index batches over ``n`` examples, reshuffled every epoch (sft)."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if n == 0:
            raise BcoderError("no training examples: the problem set has no usable reference solutions")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.step = 0
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {k: v for k, v in self._perms.items() if k >= epoch - 1}
            self._perms[epoch] = np.random.default_rng([self.seed & 0xFFFFFFFF, epoch]).permutation(self.n)
        return self._perms[epoch]

    def global_batch(self, step: int) -> list[int]:
        """All ``batch_size`` indices of batch ``step``."""
        return _walk_epochs(self._perm, self.n, step * self.batch_size, self.batch_size)

    def batch(self, step: int) -> list[int]:
        """This rank's part of batch ``step``."""
        return self.global_batch(step)[self.rank :: self.world_size]

    def __next__(self) -> list[int]:
        out = self.batch(self.step)
        self.step += 1
        return out

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step, "n": self.n, "batch_size": self.batch_size, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        for key in ("n", "batch_size", "seed"):
            if state[key] != getattr(self, key):
                raise BcoderError(
                    f"cannot resume the sft data order: {key} was {state[key]}, is {getattr(self, key)}"
                )
        self.step = int(state["step"])


class MixedBatchSampler:
    """An infinite, deterministic stream of index batches mixing ground truth and generated records.

    Every global batch of ``batch_size`` records holds ``n_real = floor(rho_real·B + 0.5)``
    ground-truth records and ``B − n_real`` generated ones (DESIGN §2.7). Each pool is walked in
    a permutation that is reshuffled every epoch of that pool (``numpy`` generator seeded with
    ``(seed, pool, epoch)``); a batch that crosses the end of an epoch takes the rest of it and the
    start of the next, so a pool smaller than its share of a batch repeats records.

    Because every batch consumes a fixed number of records from each pool, batch ``k`` is a pure
    function of ``k``: ``batch(k)`` gives it directly, the state is just the step, and resuming
    from ``state_dict()`` reproduces the following batches exactly — with any world size.

    DDP: ``batch_size`` is the global batch; rank ``r`` of ``world_size`` gets the positions
    ``r, r + W, r + 2W, ...`` of it (``B / W`` records; ``B`` must be a multiple of ``W``). The
    global batch lists its ground-truth records first, so every rank gets ``n_real / W``
    of them, rounded down or up. Ranks see disjoint parts that together are the global batch.

    When one pool is empty the other fills the whole batch (logged once as a warning).
    """

    def __init__(
        self,
        store: TransitionStore | Any,
        batch_size: int,
        rho_real: float,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise BcoderError(f"batch size must be >= 1, got {batch_size}")
        if not 0.0 <= rho_real <= 1.0:
            raise BcoderError(f"rho_real must lie in [0, 1], got {rho_real}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise BcoderError(f"rank {rank} is not in a world of size {world_size}")
        if batch_size % world_size:
            raise BcoderError(
                f"global batch size {batch_size} is not a multiple of the world size {world_size}"
            )
        if hasattr(store, "gt_indices"):
            gt, gen = np.asarray(store.gt_indices()), np.asarray(store.generated_indices())
        else:  # a sequence of records
            mask = np.array([bool(r.is_gt) for r in store], dtype=bool)
            gt, gen = np.flatnonzero(mask), np.flatnonzero(~mask)
        self._pools = {"gt": gt.astype(np.int64), "gen": gen.astype(np.int64)}
        self.batch_size = int(batch_size)
        self.rho_real = float(rho_real)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)

        n_real = math.floor(self.rho_real * self.batch_size + 0.5)
        if len(gt) == 0 and len(gen) == 0:
            raise BcoderError("the transition store is empty: nothing to sample batches from")
        if len(gt) == 0 and n_real > 0:
            log.warning(
                "no ground-truth programs in the store: batches hold %d generated programs, not "
                "%d ground truth + %d generated (rho_real=%s)",
                self.batch_size, n_real, self.batch_size - n_real, self.rho_real,
            )  # fmt: skip
            n_real = 0
        elif len(gen) == 0 and n_real < self.batch_size:
            log.warning(
                "no generated programs in the store: batches hold %d ground-truth programs, not "
                "%d ground truth + %d generated (rho_real=%s)",
                self.batch_size, n_real, self.batch_size - n_real, self.rho_real,
            )  # fmt: skip
            n_real = self.batch_size
        self.n_real = n_real
        self.n_generated = self.batch_size - n_real
        self.step = 0
        self._perm_cache: dict[tuple[str, int], np.ndarray] = {}
        self._lock = threading.Lock()  # batch(k) may be asked for from loader threads

    @property
    def local_batch_size(self) -> int:
        return self.batch_size // self.world_size

    def _perm(self, pool: str, epoch: int) -> np.ndarray:
        key = (pool, epoch)
        with self._lock:
            return self._perm_locked(pool, epoch, key)

    def _perm_locked(self, pool: str, epoch: int, key: tuple[str, int]) -> np.ndarray:
        p = self._perm_cache.get(key)
        if p is None:
            pool_id = 0 if pool == "gt" else 1
            rng = np.random.default_rng([self.seed & 0xFFFFFFFF, pool_id, epoch])
            p = self._pools[pool][rng.permutation(len(self._pools[pool]))]
            # keep only the permutations a sequential walk still needs
            for old in [k for k in self._perm_cache if k[0] == pool and k[1] < epoch - 1]:
                del self._perm_cache[old]
            self._perm_cache[key] = p
        return p

    def _take(self, pool: str, start: int, count: int) -> list[int]:
        return _walk_epochs(lambda epoch: self._perm(pool, epoch), len(self._pools[pool]), start, count)

    def global_batch(self, step: int) -> list[int]:
        """All ``batch_size`` indices of batch ``step``: ground truth first, then generated."""
        idx = self._take("gt", step * self.n_real, self.n_real) if self.n_real else []
        if self.n_generated:
            idx += self._take("gen", step * self.n_generated, self.n_generated)
        return idx

    def batch(self, step: int) -> list[int]:
        """This rank's part of batch ``step``."""
        return self.global_batch(step)[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[list[int]]:
        return self

    def __next__(self) -> list[int]:
        out = self.batch(self.step)
        self.step += 1
        return out

    def state_dict(self) -> dict[str, Any]:
        """The position after the last batch handed out (goes into checkpoints)."""
        return {
            "step": self.step,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "rho_real": self.rho_real,
            "num_gt": len(self._pools["gt"]),
            "num_generated": len(self._pools["gen"]),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, mine in (
            ("seed", self.seed),
            ("batch_size", self.batch_size),
            ("rho_real", self.rho_real),
            ("num_gt", len(self._pools["gt"])),
            ("num_generated", len(self._pools["gen"])),
        ):
            if key in state and state[key] != mine:
                raise BcoderError(
                    f"cannot resume the batch sampler: {key} was {state[key]} in the checkpoint, "
                    f"is {mine} now"
                )
        self.step = int(state["step"])


class BatchSampler(Protocol):
    """What the loops need of a sampler: this rank's batch ``k``, the next one, and the resume state."""

    def batch(self, step: int) -> list[int]: ...

    def __next__(self) -> list[int]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
