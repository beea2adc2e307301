"""The transition store: programs with their per-token annotation columns (DESIGN §2.6, §2.7).

One record per program (ground truth or generated):

==================  ================================================================================
``problem_id``      the problem the program answers (str)
``sample_id``       generated: the sample's ``sample_id``; ground truth: the index of the solution
``prompt_ids``      the prompt's token ids (int32, as fed to the encoder)
``program_ids``     the program's token ids, ending in EOS (int32); the ``labels`` of a batch
``reward``          r(W): the execution reward, +1.0 for ground truth (float)
``is_gt``           True for reference programs of the training set
``ckpt_adv``        per program token: A_ckpt(s_t, a_t) (float32, ≤ 0)
``ckpt_greedy``     per program token: argmax_a ℓ_ckpt(s_t, a) (int32)
``v_phi``           per program token, optional: φ's raw value output u_φ(s_t) (float32)
==================  ================================================================================

On-disk format (a directory; ``bcoder annotate`` writes it, the trainers read it)::

    index.json              format name/version, totals, the list of shards, user metadata
    shard-00000.safetensors at most ``shard_size`` records each
    shard-00001.safetensors ...

Each shard is a safetensors file of flat ("ragged") arrays; record ``i`` of a shard owns the slice
``offsets[i]:offsets[i + 1]`` of every per-token array:

==================  ========  =========  =======================================================
tensor              dtype     shape      content
==================  ========  =========  =======================================================
``program_ids``     int32     [N_tok]    all programs' tokens, concatenated
``program_offsets`` int64     [n + 1]    record i's tokens: program_offsets[i]:program_offsets[i+1]
``ckpt_adv``        float32   [N_tok]    aligned with ``program_ids``
``ckpt_greedy``     int32     [N_tok]    aligned with ``program_ids``
``v_phi``           float32   [N_tok]    aligned with ``program_ids`` (only when annotated with φ)
``prompt_ids``      int32     [P_tok]    the shard's distinct prompts, concatenated (one per problem)
``prompt_offsets``  int64     [p + 1]    prompt j: prompt_offsets[j]:prompt_offsets[j+1]
``prompt_index``    int32     [n]        record i's prompt is prompt ``prompt_index[i]``
``reward``          float32   [n]
``is_gt``           uint8     [n]        1 for ground truth
``sample_id``       int64     [n]
==================  ========  =========  =======================================================

The shard's safetensors metadata holds ``problem_ids``: a JSON list, the problem id of each
distinct prompt (``problem_id`` of record i = ``problem_ids[prompt_index[i]]``).

A **sharded store** is what the pods of an Indexed annotate Job write: a directory (or S3 prefix)
of parts, each a complete store of its own with its own manifest, written by pod I of N::

    part-0-of-4/            index.json, shard-*.safetensors, manifest.json (a directory artifact)
    part-1-of-4/            ...

Read through the directory, it is one store: the parts' records in part order (part 0 first), its
counts the sums, its metadata part 0's. Only once all N parts are committed (each has its index,
and its manifest when it is an artifact); before that, opening it is one error naming the missing
parts, so a trainer never takes 3 of 4 parts for the whole (the same rule as sharded JSONL outputs
in ``bcoder_core.storage``).

Prompts are stored once per problem and shard, so a problem's many programs cost their program
tokens only. The writer keeps one shard in memory at a time; the reader memory-maps shards
(``safe_open``), keeps at most ``cache_shards`` of them open and reads a record's token slices on
demand, so neither writing nor reading holds the whole store in memory.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bcoder_core.errors import BcoderError
from bcoder_core.train.samplers import MixedBatchSampler  # noqa: F401  (moved; old import path)

FORMAT = "bcoder-transitions"
VERSION = 1
INDEX_FILE = "index.json"
SHARD_PATTERN = "shard-{:05d}.safetensors"
DEFAULT_SHARD_SIZE = 4096
IGNORE_INDEX = -100
PART_PATTERN = "part-{}-of-{}"
_PART = re.compile(r"^part-(\d+)-of-(\d+)$")


@dataclass
class Transition:
    """One program and its annotation columns (arrays are numpy, one entry per program token)."""

    problem_id: str
    sample_id: int
    prompt_ids: np.ndarray
    program_ids: np.ndarray
    reward: float
    is_gt: bool
    ckpt_adv: np.ndarray
    ckpt_greedy: np.ndarray
    v_phi: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.prompt_ids = np.asarray(self.prompt_ids, dtype=np.int32)
        self.program_ids = np.asarray(self.program_ids, dtype=np.int32)
        self.ckpt_adv = np.asarray(self.ckpt_adv, dtype=np.float32)
        self.ckpt_greedy = np.asarray(self.ckpt_greedy, dtype=np.int32)
        if self.v_phi is not None:
            self.v_phi = np.asarray(self.v_phi, dtype=np.float32)
        n = len(self.program_ids)
        if n == 0:
            raise BcoderError(f"transition {self.problem_id}/{self.sample_id}: empty program")
        for name in ("ckpt_adv", "ckpt_greedy", "v_phi"):
            col = getattr(self, name)
            if col is not None and len(col) != n:
                raise BcoderError(
                    f"transition {self.problem_id}/{self.sample_id}: column {name} has {len(col)} "
                    f"entries for {n} program tokens"
                )

    @property
    def num_tokens(self) -> int:
        return len(self.program_ids)


# --------------------------------------------------------------------------------------------------
# Writing


class TransitionWriter:
    """Streams records into a store directory, one shard in memory at a time.

    Use as a context manager; ``close()`` (called on a clean exit) flushes the last shard and writes
    ``index.json``. Either every record carries ``v_phi`` or none does.
    """

    def __init__(
        self, path: str | Path, *, shard_size: int = DEFAULT_SHARD_SIZE, metadata: dict | None = None
    ) -> None:
        if shard_size < 1:
            raise BcoderError(f"transition store {path}: shard_size must be >= 1, got {shard_size}")
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        if (self.path / INDEX_FILE).exists():
            raise BcoderError(f"transition store {self.path}: already exists (has {INDEX_FILE})")
        self.shard_size = shard_size
        self.metadata = dict(metadata or {})
        self._buffer: list[Transition] = []
        self._shards: list[dict[str, Any]] = []
        self._has_v_phi: bool | None = None
        self._closed = False

    @property
    def buffered(self) -> int:
        """Records held in memory, waiting for their shard to be written (≤ shard_size)."""
        return len(self._buffer)

    @property
    def num_records(self) -> int:
        return sum(s["num_records"] for s in self._shards) + len(self._buffer)

    def add(self, rec: Transition) -> None:
        if self._closed:
            raise RuntimeError("TransitionWriter is closed")
        has = rec.v_phi is not None
        if self._has_v_phi is None:
            self._has_v_phi = has
        elif has != self._has_v_phi:
            raise BcoderError(
                f"transition store {self.path}: record {rec.problem_id}/{rec.sample_id} "
                f"{'has' if has else 'lacks'} v_phi, unlike the records before it"
            )
        self._buffer.append(rec)
        if len(self._buffer) >= self.shard_size:
            self._flush()

    def extend(self, recs: Iterable[Transition]) -> None:
        for r in recs:
            self.add(r)

    def _flush(self) -> None:
        if not self._buffer:
            return
        from safetensors.numpy import save_file

        recs = self._buffer
        name = SHARD_PATTERN.format(len(self._shards))
        prompt_of: dict[str, int] = {}
        prompts: list[np.ndarray] = []
        prompt_index = np.empty(len(recs), dtype=np.int32)
        for i, r in enumerate(recs):
            j = prompt_of.get(r.problem_id)
            if j is None:
                j = prompt_of[r.problem_id] = len(prompts)
                prompts.append(r.prompt_ids)
            elif len(prompts[j]) != len(r.prompt_ids) or not np.array_equal(prompts[j], r.prompt_ids):
                raise BcoderError(
                    f"transition store {self.path}: problem {r.problem_id} has two different prompts"
                )
            prompt_index[i] = j
        lengths = np.array([r.num_tokens for r in recs], dtype=np.int64)
        tensors = {
            "program_ids": np.concatenate([r.program_ids for r in recs]),
            "program_offsets": _offsets(lengths),
            "ckpt_adv": np.concatenate([r.ckpt_adv for r in recs]),
            "ckpt_greedy": np.concatenate([r.ckpt_greedy for r in recs]),
            "prompt_ids": np.concatenate(prompts).astype(np.int32),
            "prompt_offsets": _offsets(np.array([len(p) for p in prompts], dtype=np.int64)),
            "prompt_index": prompt_index,
            "reward": np.array([r.reward for r in recs], dtype=np.float32),
            "is_gt": np.array([r.is_gt for r in recs], dtype=np.uint8),
            "sample_id": np.array([r.sample_id for r in recs], dtype=np.int64),
        }
        if self._has_v_phi:
            tensors["v_phi"] = np.concatenate([r.v_phi for r in recs])
        save_file(tensors, str(self.path / name), metadata={"problem_ids": json.dumps(list(prompt_of))})
        n_gt = int(tensors["is_gt"].sum())
        self._shards.append(
            {
                "file": name,
                "num_records": len(recs),
                "num_gt": n_gt,
                "num_tokens": int(lengths.sum()),
            }
        )
        self._buffer = []

    def close(self) -> dict[str, Any]:
        """Flush the last shard and write ``index.json``; returns the index."""
        if self._closed:
            return self.index
        self._flush()
        self._closed = True
        n = sum(s["num_records"] for s in self._shards)
        n_gt = sum(s["num_gt"] for s in self._shards)
        self.index = {
            "format": FORMAT,
            "version": VERSION,
            "num_records": n,
            "num_gt": n_gt,
            "num_generated": n - n_gt,
            "num_program_tokens": sum(s["num_tokens"] for s in self._shards),
            "shard_size": self.shard_size,
            "has_v_phi": bool(self._has_v_phi),
            "shards": self._shards,
            "metadata": self.metadata,
        }
        tmp = self.path / (INDEX_FILE + ".tmp")
        tmp.write_text(json.dumps(self.index, indent=1, sort_keys=True) + "\n")
        tmp.replace(self.path / INDEX_FILE)
        return self.index

    def __enter__(self) -> TransitionWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()


def _offsets(lengths: np.ndarray) -> np.ndarray:
    out = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=out[1:])
    return out


def write_transitions(
    path: str | Path,
    records: Iterable[Transition],
    *,
    shard_size: int = DEFAULT_SHARD_SIZE,
    metadata: dict | None = None,
) -> dict[str, Any]:
    """Write ``records`` as a store at ``path``; returns the index."""
    with TransitionWriter(path, shard_size=shard_size, metadata=metadata) as w:
        w.extend(records)
    return w.index


# --------------------------------------------------------------------------------------------------
# Reading


def _unreadable_shard(path: Path, exc: BaseException) -> BcoderError:
    from bcoder_core.model.files import first_line

    detail = f"no {exc}" if isinstance(exc, KeyError) else first_line(exc)
    return BcoderError(f"transition shard {path}: cannot be read ({detail})")


def _check_count(path: Path, found: int, info: dict[str, Any]) -> None:
    if found != info["num_records"]:
        raise BcoderError(
            f"transition shard {path}: holds {found} records, {INDEX_FILE} says {info['num_records']}"
        )


class _Shard:
    """A memory-mapped shard: small per-record arrays in memory, token arrays sliced on demand."""

    def __init__(self, path: Path, has_v_phi: bool) -> None:
        from safetensors import SafetensorError, safe_open

        # A store in a plain directory reaches this parser unverified (no manifest): a truncated or
        # garbage shard, or one that lacks a column, is one error naming the shard.
        try:
            f = self._f = safe_open(str(path), framework="np")
            self.problem_ids: list[str] = json.loads((f.metadata() or {})["problem_ids"])
            self.program_offsets = f.get_tensor("program_offsets")
            self.prompt_offsets = f.get_tensor("prompt_offsets")
            self.prompt_index = f.get_tensor("prompt_index")
            self.reward = f.get_tensor("reward")
            self.is_gt = f.get_tensor("is_gt")
            self.sample_id = f.get_tensor("sample_id")
            self.has_v_phi = has_v_phi
            self._slices = {
                k: f.get_slice(k)
                for k in ("program_ids", "ckpt_adv", "ckpt_greedy", "prompt_ids")
                + (("v_phi",) if has_v_phi else ())
            }
        except (OSError, SafetensorError, KeyError, TypeError, ValueError) as exc:
            raise _unreadable_shard(path, exc) from None
        problem = self._inconsistency()
        if problem:
            raise BcoderError(f"transition shard {path}: cannot be read ({problem})")

    def _inconsistency(self) -> str | None:
        """What makes the columns disagree with each other (record() would index out of them), if anything."""
        n = len(self.reward)
        for name in ("prompt_index", "is_gt", "sample_id"):
            if len(getattr(self, name)) != n:
                return f"{name} has {len(getattr(self, name))} entries for {n} records"
        for offsets, size, columns in (
            (self.program_offsets, n, ("program_ids", "ckpt_adv", "ckpt_greedy", "v_phi")),
            (self.prompt_offsets, len(self.problem_ids), ("prompt_ids",)),
        ):
            if len(offsets) != size + 1 or offsets[0] != 0 or np.any(np.diff(offsets) < 0):
                return "bad offsets"
            for col in columns:
                if col in self._slices and self._slices[col].get_shape() != [int(offsets[-1])]:
                    return f"{col} does not match its offsets"
        lo, hi = (int(self.prompt_index.min()), int(self.prompt_index.max())) if n else (0, -1)
        if lo < 0 or hi >= len(self.problem_ids):
            return "prompt_index out of range"
        return None

    def __len__(self) -> int:
        return len(self.reward)

    def record(self, i: int) -> Transition:
        a, b = int(self.program_offsets[i]), int(self.program_offsets[i + 1])
        j = int(self.prompt_index[i])
        pa, pb = int(self.prompt_offsets[j]), int(self.prompt_offsets[j + 1])
        s = self._slices
        return Transition(
            problem_id=self.problem_ids[j],
            sample_id=int(self.sample_id[i]),
            prompt_ids=s["prompt_ids"][pa:pb],
            program_ids=s["program_ids"][a:b],
            reward=float(self.reward[i]),
            is_gt=bool(self.is_gt[i]),
            ckpt_adv=s["ckpt_adv"][a:b],
            ckpt_greedy=s["ckpt_greedy"][a:b],
            v_phi=s["v_phi"][a:b] if self.has_v_phi else None,
        )


class TransitionStore:
    """Read access to a store directory: ``store[i]``, ``len(store)``, sequential iteration.

    Random access opens the record's shard lazily and keeps at most ``cache_shards`` shards open
    (least recently used first out). Per-record token arrays are read from the memory-mapped file
    on demand.
    """

    def __init__(
        self, path: str | Path, *, cache_shards: int = 4, parts: Sequence[Path] | None = None
    ) -> None:
        self.path = Path(path)
        index_path = self.path / INDEX_FILE
        if parts is None and not index_path.is_file():
            parts = committed_parts(self.path, [p.name for p in _subdirs(self.path)])
            parts = None if parts is None else [self.path / name for name in parts]
        if parts is None and not index_path.is_file():
            raise BcoderError(f"transition store {self.path}: no {INDEX_FILE} (not a transition store)")
        #: Directory of each shard's part (one entry, the store itself, unless it is sharded).
        self._roots: list[Path] = list(parts) if parts is not None else [self.path]
        if parts is None:
            self.index = _read_index(self.path)
        else:
            self.index = _joined_index(self.path, [_read_index(p) for p in self._roots])
            index_path = self._roots[0] / INDEX_FILE
        self.cache_shards = max(1, int(cache_shards))
        # The counts and shard list every reader relies on; a hand-edited or torn index fails here, named.
        try:
            self._shard_info = self.index["shards"]
            counts = [int(s["num_records"]) for s in self._shard_info]
            if not all(isinstance(s["file"], str) for s in self._shard_info):
                raise TypeError("a shard's file is not a name")
            for key in ("num_records", "num_gt", "num_generated", "has_v_phi"):
                int(self.index[key])
        except (KeyError, TypeError, ValueError) as exc:
            detail = f"no {exc}" if isinstance(exc, KeyError) else str(exc)
            raise BcoderError(f"transition store {index_path}: malformed index ({detail})") from None
        if sum(counts) != len(self):
            raise BcoderError(
                f"transition store {index_path}: malformed index (shards hold {sum(counts)} records, "
                f"num_records says {len(self)})"
            )
        self._starts = _offsets(np.array(counts, dtype=np.int64))
        self._cache: OrderedDict[int, _Shard] = OrderedDict()
        self._gt_mask: np.ndarray | None = None
        self._lengths: np.ndarray | None = None
        self.shard_loads = 0
        """How many times a shard was opened (for tests and diagnostics)."""

    def reopen(self) -> TransitionStore:
        """Another reader of the same store (same parts), e.g. one per loader thread."""
        parts = None if self._roots == [self.path] else self._roots
        return TransitionStore(self.path, cache_shards=self.cache_shards, parts=parts)

    def _file(self, info: dict[str, Any]) -> Path:
        """The shard file of index entry ``info`` (in its part's directory for a sharded store)."""
        return self._roots[int(info.get("part", 0))] / info["file"]

    # -- counts and metadata
    def __len__(self) -> int:
        return int(self.index["num_records"])

    @property
    def num_gt(self) -> int:
        return int(self.index["num_gt"])

    @property
    def num_generated(self) -> int:
        return int(self.index["num_generated"])

    @property
    def num_shards(self) -> int:
        return len(self._shard_info)

    @property
    def has_v_phi(self) -> bool:
        return bool(self.index["has_v_phi"])

    @property
    def metadata(self) -> dict[str, Any]:
        return self.index.get("metadata", {})

    @property
    def open_shards(self) -> list[int]:
        """Shards currently held open (at most ``cache_shards``)."""
        return list(self._cache)

    # -- random access
    def _locate(self, i: int) -> tuple[int, int]:
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"record {i} out of range for a store of {n}")
        k = int(np.searchsorted(self._starts, i, side="right")) - 1
        return k, i - int(self._starts[k])

    def _shard(self, k: int) -> _Shard:
        sh = self._cache.get(k)
        if sh is not None:
            self._cache.move_to_end(k)
            return sh
        info = self._shard_info[k]
        sh = _Shard(self._file(info), self.has_v_phi)
        _check_count(self._file(info), len(sh), info)
        self.shard_loads += 1
        self._cache[k] = sh
        while len(self._cache) > self.cache_shards:
            self._cache.popitem(last=False)
        return sh

    def __getitem__(self, i: int) -> Transition:
        k, j = self._locate(int(i))
        return self._shard(k).record(j)

    def get_many(self, indices: Sequence[int]) -> list[Transition]:
        """Records for ``indices``, in that order (reads grouped by shard)."""
        located = [self._locate(int(i)) for i in indices]
        out: list[Transition | None] = [None] * len(located)
        for k in sorted({k for k, _ in located}):
            sh = self._shard(k)
            for pos, (kk, j) in enumerate(located):
                if kk == k:
                    out[pos] = sh.record(j)
        return out  # type: ignore[return-value]

    # -- sequential access
    def __iter__(self) -> Iterator[Transition]:
        for k in range(self.num_shards):
            sh = self._shard(k)
            for j in range(len(sh)):
                yield sh.record(j)

    def is_gt_mask(self) -> np.ndarray:
        """Bool array [len(store)]: True where the record is ground truth (read shard by shard)."""
        if self._gt_mask is None:
            from safetensors import SafetensorError, safe_open

            parts = []
            for s in self._shard_info:
                path = self._file(s)
                try:
                    with safe_open(str(path), framework="np") as f:
                        parts.append(f.get_tensor("is_gt").astype(bool))
                except (OSError, SafetensorError) as exc:
                    raise _unreadable_shard(path, exc) from None
                _check_count(path, len(parts[-1]), s)
            self._gt_mask = np.concatenate(parts) if parts else np.zeros(0, dtype=bool)
        return self._gt_mask

    def record_lengths(self) -> np.ndarray:
        """Int64 [len(store), 2]: each record's program and prompt length in tokens (the sort keys
        of length-bucketed batches), read shard by shard from the offsets alone."""
        if self._lengths is None:
            from safetensors import SafetensorError, safe_open

            parts = []
            for s in self._shard_info:
                path = self._file(s)
                try:
                    with safe_open(str(path), framework="np") as f:
                        program = np.diff(f.get_tensor("program_offsets"))
                        prompt = np.diff(f.get_tensor("prompt_offsets"))[f.get_tensor("prompt_index")]
                except (OSError, SafetensorError, KeyError, IndexError) as exc:
                    raise _unreadable_shard(path, exc) from None
                _check_count(path, len(program), s)
                parts.append(np.stack([program, prompt], axis=1).astype(np.int64))
            self._lengths = np.concatenate(parts) if parts else np.zeros((0, 2), dtype=np.int64)
        return self._lengths

    def record_keys(self) -> list[tuple[str, bool, int]]:
        """(problem id, ground truth?, sample id) of every record in order, from the shards' small
        arrays (no token array is read)."""
        out: list[tuple[str, bool, int]] = []
        for k in range(self.num_shards):
            sh = self._shard(k)
            problems = [sh.problem_ids[int(j)] for j in sh.prompt_index]
            out.extend(zip(problems, sh.is_gt.astype(bool).tolist(), sh.sample_id.tolist(), strict=True))
        return out

    def prompt_token_count(self) -> int:
        """Tokens of the store's distinct prompts, shard by shard (each shard keeps a prompt once; a
        prompt in several shards counts once for each), from the offsets alone."""
        total = 0
        for k in range(self.num_shards):
            offsets = self._shard(k).prompt_offsets
            total += int(offsets[-1] - offsets[0]) if len(offsets) else 0
        return total

    def gt_indices(self) -> np.ndarray:
        return np.flatnonzero(self.is_gt_mask()).astype(np.int64)

    def generated_indices(self) -> np.ndarray:
        return np.flatnonzero(~self.is_gt_mask()).astype(np.int64)

    def close(self) -> None:
        self._cache.clear()


def open_store(path: str | Path, *, cache_shards: int = 4) -> TransitionStore:
    """The store at ``path``: a store directory, a directory of committed parts, or an S3 prefix
    of either (each part downloaded and verified against its manifest)."""
    from bcoder_core import storage

    uri = str(path)
    if storage.exists(uri):  # one committed store: read through its verified manifest
        return TransitionStore(storage.input_path(uri), cache_shards=cache_shards)
    if not storage.is_s3(uri):
        return TransitionStore(path, cache_shards=cache_shards)  # a plain directory, or one of parts
    names = committed_parts(
        uri, _s3_subprefixes(uri), committed=lambda n: storage.exists(storage.join(uri, n))
    )
    if names is None:
        raise BcoderError(f"transition store {uri}: no store here (no manifest, no part-I-of-N parts)")
    local = [storage.input_path(storage.join(uri, n)) for n in names]
    return TransitionStore(local[0].parent, cache_shards=cache_shards, parts=local)


def part_name(shard: tuple[int, int]) -> str:
    """The name of part I of N of a sharded store (``part-0-of-4``)."""
    return PART_PATTERN.format(*shard)


def committed_parts(where: str | Path, names: Iterable[str], *, committed: Any = None) -> list[str] | None:
    """The part names among ``names`` in part order, when all N are committed; None if there are none.

    ``committed(name)`` says whether a part is complete (default: a local part directory with its
    index: the writer writes it last). Parts of different
    splits, or a part not committed yet, are one error naming them.
    """
    found = {m.group(0): (int(m.group(1)), int(m.group(2))) for m in map(_PART.match, names) if m}
    if not found:
        return None
    counts = {n for _, n in found.values()}
    if len(counts) > 1:
        raise BcoderError(f"transition store {where}: parts of different splits: {', '.join(sorted(found))}")
    (n,) = counts
    if committed is None:
        root = Path(where)

        # The writer writes a part's index last, and a local artifact is renamed into place whole.
        def committed(name: str) -> bool:
            return (root / name / INDEX_FILE).is_file()

    want = [part_name((i, n)) for i in range(n)]
    missing = [name for name in want if name not in found or not committed(name)]
    if missing:
        raise BcoderError(
            f"transition store {where}: incomplete: {len(missing)} of {n} parts not committed yet "
            f"(missing {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''})"
        )
    return want


def _subdirs(path: Path) -> list[Path]:
    try:
        return sorted(p for p in path.iterdir() if p.is_dir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def _s3_subprefixes(uri: str) -> list[str]:
    """The "directories" directly under an S3 prefix (the parts of a sharded store)."""
    from bcoder_core.storage import s3

    bucket, key = s3.split(uri.rstrip("/"))
    names: list[str] = []
    with s3._s3_call(uri):
        for page in (
            s3.client()
            .get_paginator("list_objects_v2")
            .paginate(Bucket=bucket, Prefix=key + "/", Delimiter="/")
        ):
            names.extend(p["Prefix"][len(key) + 1 :].rstrip("/") for p in page.get("CommonPrefixes", []))
    return sorted(names)


def _read_index(path: Path) -> dict[str, Any]:
    index_path = path / INDEX_FILE
    try:
        index = json.loads(index_path.read_text())
    except OSError as exc:
        raise BcoderError(f"transition store {path}: no {INDEX_FILE} ({exc.strerror or exc})") from None
    except ValueError as exc:  # JSONDecodeError, and UnicodeDecodeError for a binary file
        raise BcoderError(f"transition store {index_path}: broken JSON ({exc})") from exc
    if not isinstance(index, dict):
        raise BcoderError(f"transition store {index_path}: expected a JSON object")
    if index.get("format") != FORMAT or index.get("version") != VERSION:
        raise BcoderError(
            f"transition store {path}: format {index.get('format')!r} version "
            f"{index.get('version')!r}, expected {FORMAT!r} version {VERSION}"
        )
    return index


def _joined_index(path: Path, indexes: list[dict[str, Any]]) -> dict[str, Any]:
    """One index for the parts of a sharded store: their shards in part order, their counts summed."""
    try:
        with_records = [ix for ix in indexes if int(ix["num_records"])]
        v_phi = {bool(ix["has_v_phi"]) for ix in with_records}
        totals = {
            key: sum(int(ix[key]) for ix in indexes)
            for key in ("num_records", "num_gt", "num_generated", "num_program_tokens")
        }
        shards = [{**s, "part": k} for k, ix in enumerate(indexes) for s in ix["shards"]]
    except (KeyError, TypeError, ValueError) as exc:
        detail = f"no {exc}" if isinstance(exc, KeyError) else str(exc)
        raise BcoderError(f"transition store {path}: malformed part index ({detail})") from None
    if len(v_phi) > 1:
        raise BcoderError(f"transition store {path}: some parts have v_phi and some do not")
    metadata = {k: v for k, v in indexes[0].get("metadata", {}).items() if k != "shard"}
    for key in ("dropped_gt", "dropped_generated"):
        if key in metadata:
            metadata[key] = sum(int(ix.get("metadata", {}).get(key, 0)) for ix in indexes)
    return {
        **indexes[0],
        **totals,
        "has_v_phi": v_phi.pop() if v_phi else False,
        "shards": shards,
        "metadata": metadata,
        "parts": len(indexes),
    }


# --------------------------------------------------------------------------------------------------
# Batches


def prompt_key(prompt_ids: Any) -> bytes:
    """A prompt's identity in a batch (``prompt_keys``): its token ids as int32 bytes, 4 a token."""
    return np.ascontiguousarray(prompt_ids, dtype=np.int32).tobytes()


def collate(records: Sequence[Transition], pad_id: int) -> dict[str, Any]:
    """The training batch of docs/architecture.md from records (right padding).

    ``input_ids``/``attention_mask`` [B,S] (prompts, padded with ``pad_id``/0), ``labels`` [B,T]
    (programs, padded with -100), ``reward`` [B] float32, ``is_gt`` [B] bool, ``ckpt_adv`` [B,T]
    float32 and ``ckpt_greedy`` [B,T] long (padded with 0), ``v_phi`` [B,T] float32 when every
    record has it (padded with 0), and ``prompt_keys``: each row's :func:`prompt_key` (a tuple, on
    the host: what the phi and theta stages' encoder cache looks prompts up by).
    """
    import torch

    if not records:
        raise ValueError("collate: no records")
    bsz = len(records)
    s_len = max(len(r.prompt_ids) for r in records)
    t_len = max(r.num_tokens for r in records)
    with_v = [r.v_phi is not None for r in records]
    if any(with_v) and not all(with_v):
        raise BcoderError("collate: some records have v_phi and some do not")

    input_ids = np.full((bsz, s_len), pad_id, dtype=np.int64)
    attention_mask = np.zeros((bsz, s_len), dtype=np.int64)
    labels = np.full((bsz, t_len), IGNORE_INDEX, dtype=np.int64)
    ckpt_adv = np.zeros((bsz, t_len), dtype=np.float32)
    ckpt_greedy = np.zeros((bsz, t_len), dtype=np.int64)
    v_phi = np.zeros((bsz, t_len), dtype=np.float32) if all(with_v) else None
    for b, r in enumerate(records):
        p, t = len(r.prompt_ids), r.num_tokens
        input_ids[b, :p] = r.prompt_ids
        attention_mask[b, :p] = 1
        labels[b, :t] = r.program_ids
        ckpt_adv[b, :t] = r.ckpt_adv
        ckpt_greedy[b, :t] = r.ckpt_greedy
        if v_phi is not None:
            v_phi[b, :t] = r.v_phi
    batch = {
        "input_ids": torch.from_numpy(input_ids),
        "attention_mask": torch.from_numpy(attention_mask),
        "labels": torch.from_numpy(labels),
        "reward": torch.tensor([r.reward for r in records], dtype=torch.float32),
        "is_gt": torch.tensor([r.is_gt for r in records], dtype=torch.bool),
        "ckpt_adv": torch.from_numpy(ckpt_adv),
        "ckpt_greedy": torch.from_numpy(ckpt_greedy),
    }
    if v_phi is not None:
        batch["v_phi"] = torch.from_numpy(v_phi)
    batch["prompt_keys"] = tuple(prompt_key(r.prompt_ids) for r in records)
    return batch
