"""The two batch samplers of the training stages: sft's epoch sampler and the ρ_real mixing sampler.

Both are infinite and deterministic, and batch ``k`` is a pure function of ``k``: the state is just
the step, so resuming from ``state_dict()`` reproduces the following batches exactly. ``batch_size``
is the global batch; rank ``r`` of ``world_size`` takes positions ``r, r + W, ...`` of it, and the
loader splits a rank's part into ``grad_accum`` micro-batches by the same striding
(:func:`~bcoder_core.train.step.split_micro`): micro-batch ``j`` of rank ``r`` is the global positions
``r + W·j (mod W·A)``.

**Length bucketing** (``length_bucketing``, DESIGN §2.7) batches programs of similar length together
so that little of a padded batch is padding. It never changes how many programs of each pool a
global batch holds (ρ_real stays exact), and batch ``k`` stays a pure function of ``k``:

- ``off``: the global batch in sampling order (ground truth first), micro-batches strided from it.
- ``micro``: the same programs per step as ``off``; only their grouping into the step's ``W·A``
  micro-batches changes: the global batch is cut by length into ``W·A`` runs of ``batch_size``
  programs (:func:`cut_by_length`), and :func:`deal` lays the runs out so that the striding above
  hands micro-batch ``j`` of rank ``r`` run ``j·W + r`` (the ranks' j-th micro-batches are
  neighbouring runs: similar work per rank at every micro-step). One micro-batch per step
  (``W·A = 1``) cannot be regrouped: ``micro`` is then ``off``.
- ``window``: the global batches themselves are cut by length, torchtext-BucketIterator style. The
  ``bucket_window`` consecutive batches of window ``w`` take from each pool exactly the records
  ``off`` would give those batches (same walk positions); each pool's share is cut by length into
  ``bucket_window`` runs of that pool's count per batch (``n_real`` ground truth, ``B − n_real``
  generated), the i-th runs of both pools form one batch, and a permutation seeded by ``(seed, w)``
  puts the window's batches in random order. Then ``micro``'s dealing. Each window sees exactly
  ``off``'s programs; within it, a step sees programs of similar length.

A cut by length (:func:`length_order`) sorts by program length, then, in groups of a few runs, by
prompt length: a 2-D grid, because a padded batch pads prompts (to S_max) and programs (to T_max)
separately and the built-in benchmark's prompts vary as much as its programs. The group size is
the one of a few candidates whose runs pad least — a deterministic function of the records, so
batches stay pure functions of the step.

The loss of a step is the token mean over the whole global batch whatever the grouping
(:func:`~bcoder_core.train.step.train_step` weights each micro-batch by its tokens), so grouping
changes only which programs share a padded tensor, not what the step computes.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from bcoder_core.errors import BcoderError

if TYPE_CHECKING:
    from bcoder_core.rl.transitions import TransitionStore

# The mixing sampler's warnings keep the logger they always had (it lived in rl.transitions).
log = logging.getLogger("bcoder_core.rl.transitions")


BUCKETING = ("off", "micro", "window")
"""The ``length_bucketing`` modes (module docstring)."""

_WINDOW_TAG = 0x6275636B  # "buck": the seed sequence of a window's batch order, apart from the epochs'


def length_keys(program: Any, prompt: Any) -> np.ndarray:
    """Sort keys [n, 2] int64 of records with these program and prompt lengths (program first)."""
    return np.stack([np.asarray(program, dtype=np.int64), np.asarray(prompt, dtype=np.int64)], axis=1)


def group_sizes(runs: int) -> list[int]:
    """The candidate group sizes (in runs) of a 2-D cut into ``runs`` runs: 1 (a plain sort by
    program length), then the powers of two below ``runs``, then ``runs`` (by prompt length first)."""
    sizes = [2**i for i in range(max(runs - 1, 1).bit_length()) if 2**i < runs]
    return (sizes or [1]) + ([runs] if runs > 1 else [])


def length_order(indices: Sequence[int], keys: np.ndarray, run: int, per_group: int) -> np.ndarray:
    """``indices`` in the order of a 2-D length cut into runs of ``run`` records: sorted by program
    length (then prompt length), cut into groups of ``per_group`` runs, each group sorted by prompt
    length (then program length). Stable sorts: ties keep their order in ``indices``."""
    idx = np.asarray(indices, dtype=np.int64)
    if len(idx) == 0:
        return idx
    k = keys[idx]
    idx = idx[np.lexsort((k[:, 1], k[:, 0]))]
    if per_group == 1:
        return idx
    size = run * per_group
    parts = []
    for g in range(0, len(idx), size):
        c = idx[g : g + size]
        kc = keys[c]
        parts.append(c[np.lexsort((kc[:, 0], kc[:, 1]))])
    return np.concatenate(parts)


def padded_cost(order: np.ndarray, keys: np.ndarray, run: int) -> int:
    """Padded elements of ``order`` cut into runs of ``run`` (the last may be shorter): Σ over the
    runs of size · (longest program + longest prompt)."""
    total = 0
    for r in range(0, len(order), run):
        k = keys[order[r : r + run]]
        total += len(k) * int(k[:, 0].max() + k[:, 1].max())
    return total


def batch_order(indices: Sequence[int], keys: np.ndarray, run: int) -> np.ndarray:
    """``indices`` ordered so that cutting every ``run`` records gives runs of similar lengths: the
    :func:`length_order` whose runs pad least over the :func:`group_sizes` (ties: the earlier)."""
    runs = -(-len(indices) // run)
    best: tuple[int, np.ndarray] | None = None
    for per_group in group_sizes(max(runs, 1)):
        order = length_order(indices, keys, run, per_group)
        cost = padded_cost(order, keys, run)
        if best is None or cost < best[0]:
            best = (cost, order)
    assert best is not None
    return best[1]


def cut_by_length(pools: Sequence[Sequence[int]], keys: np.ndarray, runs: int) -> np.ndarray:
    """``runs`` equal runs of similar lengths [runs, Σ len(pool) / runs]: run i holds the i-th run of
    every pool (each pool of a multiple of ``runs`` records), all pools cut by one
    :func:`length_order` group size, the one whose runs pad least (ties: the earlier candidate).

    One group size for every pool keeps run i of each pool at the same length quantiles. The 2-D cut
    matters where prompts vary as much as programs (the built-in benchmark's do). A deterministic
    function of its input.
    """
    best: tuple[int, np.ndarray] | None = None
    for per_group in group_sizes(runs):
        rows = np.concatenate(
            [length_order(p, keys, len(p) // runs, per_group).reshape(runs, -1) for p in pools], axis=1
        )
        cost = int(keys[rows].max(axis=1).sum()) if rows.size else 0  # every run has the same size
        if best is None or cost < best[0]:
            best = (cost, rows)
    assert best is not None
    return best[1]


def deal(indices: Sequence[int], keys: np.ndarray, parts: int) -> list[int]:
    """The global batch ``indices`` reordered so that its ``parts`` = W·A strided micro-batches
    (rank r's micro-batch j: positions ``r + W·j + W·A·i``) are the batch cut into ``parts`` runs
    of similar lengths (:func:`cut_by_length`): position ``c + parts·i`` holds the i-th record of
    run ``c``; the runs go (roughly) from short to long programs."""
    return cut_by_length([indices], keys, parts).T.reshape(-1).tolist()


def _window_order(seed: int, window: int, size: int) -> np.ndarray:
    """The order of a window's ``size`` batches (batch j of window ``window`` is run ``order[j]``)."""
    return np.random.default_rng([seed & 0xFFFFFFFF, _WINDOW_TAG, window]).permutation(size)


def _check_bucketing(bucketing: str, window: int, batch_size: int, parts: int) -> None:
    if bucketing not in BUCKETING:
        raise BcoderError(f"length_bucketing {bucketing!r}: expected one of {', '.join(BUCKETING)}")
    if window < 1:
        raise BcoderError(f"bucket_window must be >= 1, got {window}")
    if parts < 1 or batch_size % parts:
        raise BcoderError(f"global batch size {batch_size} is not a multiple of {parts} micro-batches")


def _check_resume_bucketing(state: dict[str, Any], bucketing: str, window: int, what: str) -> None:
    """A checkpoint from before length bucketing recorded no mode: its batches were ``off``'s."""
    was = state.get("length_bucketing", "off")
    if was != bucketing:
        raise BcoderError(
            f"cannot resume {what}: length_bucketing was {was} in the checkpoint, is {bucketing} now"
        )
    if bucketing == "window" and state.get("bucket_window", window) != window:
        raise BcoderError(
            f"cannot resume {what}: bucket_window was {state['bucket_window']} in the checkpoint, "
            f"is {window} now"
        )


def _lengths_for(bucketing: str, lengths: np.ndarray | None, n: int) -> np.ndarray:
    """The [n, 2] sort keys a bucketing mode needs (none for ``off``)."""
    if bucketing == "off":
        return np.zeros((0, 2), dtype=np.int64)  # never read
    if lengths is None:
        raise BcoderError(f"length_bucketing {bucketing}: the sampler needs the programs' lengths")
    keys = np.asarray(lengths, dtype=np.int64)
    if keys.ndim == 1:
        keys = length_keys(keys, np.zeros_like(keys))
    if keys.shape != (n, 2):
        raise BcoderError(f"length_bucketing: {keys.shape[0]} lengths for {n} records")
    return keys


def store_lengths(store: Any) -> np.ndarray:
    """Sort keys [n, 2] of a transition store (its ``record_lengths()``) or a sequence of records."""
    if hasattr(store, "record_lengths"):
        return np.asarray(store.record_lengths(), dtype=np.int64)
    return length_keys([len(r.program_ids) for r in store], [len(r.prompt_ids) for r in store])


class _WindowCache:
    """The last few windows' batches (a window is asked for once per step, from several threads)."""

    def __init__(self, build: Callable[[int], list[list[int]]], keep: int = 3) -> None:
        self._build, self._keep = build, keep
        self._windows: dict[int, list[list[int]]] = {}
        self._lock = threading.Lock()

    def get(self, window: int) -> list[list[int]]:
        with self._lock:
            got = self._windows.get(window)
        if got is None:
            got = self._build(window)
            with self._lock:
                self._windows[window] = got
                for old in sorted(self._windows)[: -self._keep]:
                    del self._windows[old]
        return got


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
    """Deterministic, infinite index batches over ``n`` examples, reshuffled every epoch (sft).

    ``lengths`` [n, 2] (:func:`length_keys`: program and prompt length of each example) is needed
    by the ``micro`` and ``window`` modes of ``bucketing`` (module docstring); ``grad_accum`` is the
    micro-batches per rank the loader cuts a rank's part into.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        *,
        lengths: np.ndarray | None = None,
        grad_accum: int = 1,
        bucketing: str = "off",
        bucket_window: int = 1,
    ) -> None:
        if n == 0:
            raise BcoderError("no training examples: the problem set has no usable reference solutions")
        _check_bucketing(bucketing, bucket_window, batch_size, world_size * grad_accum)
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.parts = world_size * grad_accum
        self.bucketing, self.bucket_window = bucketing, int(bucket_window)
        self._keys = _lengths_for(bucketing, lengths, n)
        self.step = 0
        self._perms: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()  # batch(k) may be asked for from loader threads
        self._windows = _WindowCache(self._window)

    def _perm(self, epoch: int) -> np.ndarray:
        with self._lock:
            if epoch not in self._perms:
                self._perms = {k: v for k, v in self._perms.items() if k >= epoch - 1}
                rng = np.random.default_rng([self.seed & 0xFFFFFFFF, epoch])
                self._perms[epoch] = rng.permutation(self.n)
            return self._perms[epoch]

    def _walk(self, step: int, count: int) -> list[int]:
        return _walk_epochs(self._perm, self.n, step * count, count)

    def _window(self, w: int) -> list[list[int]]:
        """The batches of window ``w``: off's examples of its batches cut by length, in a seeded order."""
        size = self.bucket_window
        rows = cut_by_length([self._walk(w, size * self.batch_size)], self._keys, size)
        return [rows[c].tolist() for c in _window_order(self.seed, w, size)]

    def global_batch(self, step: int) -> list[int]:
        """All ``batch_size`` indices of batch ``step`` (in the layout of the bucketing mode)."""
        if self.bucketing == "off":
            return self._walk(step, self.batch_size)
        if self.bucketing == "micro":
            return deal(self._walk(step, self.batch_size), self._keys, self.parts)
        w, j = divmod(step, self.bucket_window)
        return deal(self._windows.get(w)[j], self._keys, self.parts)

    def batch(self, step: int) -> list[int]:
        """This rank's part of batch ``step``."""
        return self.global_batch(step)[self.rank :: self.world_size]

    def __next__(self) -> list[int]:
        out = self.batch(self.step)
        self.step += 1
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step, "n": self.n, "batch_size": self.batch_size, "seed": self.seed,
            "length_bucketing": self.bucketing, "bucket_window": self.bucket_window,
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("n", "batch_size", "seed"):
            if state[key] != getattr(self, key):
                raise BcoderError(
                    f"cannot resume the sft data order: {key} was {state[key]}, is {getattr(self, key)}"
                )
        _check_resume_bucketing(state, self.bucketing, self.bucket_window, "the sft data order")
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
    ``r, r + W, r + 2W, ...`` of it (``B / W`` records; ``B`` must be a multiple of ``W``). Without
    length bucketing the global batch lists its ground-truth records first, so every rank gets
    ``n_real / W`` of them, rounded down or up; with it (``bucketing`` ``micro`` or ``window``,
    module docstring; ``grad_accum`` is the micro-batches per rank) a rank's share follows the
    lengths (the loss is the global batch's token mean either way). Ranks see disjoint parts that
    together are the global batch.

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
        *,
        grad_accum: int = 1,
        bucketing: str = "off",
        bucket_window: int = 1,
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
        _check_bucketing(bucketing, bucket_window, batch_size, world_size * grad_accum)
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
        self.parts = self.world_size * int(grad_accum)
        self.bucketing, self.bucket_window = bucketing, int(bucket_window)
        n = len(gt) + len(gen)
        self._keys = _lengths_for(bucketing, None if bucketing == "off" else store_lengths(store), n)
        self.step = 0
        self._perm_cache: dict[tuple[str, int], np.ndarray] = {}
        self._lock = threading.Lock()  # batch(k) may be asked for from loader threads
        self._windows = _WindowCache(self._window)

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

    def _mixed(self, step: int, times: int = 1) -> tuple[list[int], list[int]]:
        """The ground-truth and generated records of ``times`` batches from batch ``step·times`` on,
        in sampling order."""
        n_gt, n_gen = self.n_real * times, self.n_generated * times
        gt = self._take("gt", step * n_gt, n_gt) if n_gt else []
        gen = self._take("gen", step * n_gen, n_gen) if n_gen else []
        return gt, gen

    def _window(self, w: int) -> list[list[int]]:
        """The batches of window ``w``: off's records of its batches, each pool cut by length into
        runs of its count per batch; the i-th runs of the two pools make one batch (ground truth
        first); the batches in a seeded order."""
        size = self.bucket_window
        rows = cut_by_length(self._mixed(w, size), self._keys, size)
        return [rows[c].tolist() for c in _window_order(self.seed, w, size)]

    def global_batch(self, step: int) -> list[int]:
        """All ``batch_size`` indices of batch ``step``: without bucketing ground truth first, then
        generated; with it in the layout :func:`deal` gives the micro-batches."""
        if self.bucketing == "window":
            w, j = divmod(step, self.bucket_window)
            return deal(self._windows.get(w)[j], self._keys, self.parts)
        gt, gen = self._mixed(step)
        if self.bucketing == "micro":
            return deal(gt + gen, self._keys, self.parts)
        return gt + gen

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
            "length_bucketing": self.bucketing,
            "bucket_window": self.bucket_window,
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
        _check_resume_bucketing(state, self.bucketing, self.bucket_window, "the batch sampler")
        self.step = int(state["step"])


class BatchSampler(Protocol):
    """What the loops need of a sampler: this rank's batch ``k``, the next one, and the resume state."""

    def batch(self, step: int) -> list[int]: ...

    def __next__(self) -> list[int]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
