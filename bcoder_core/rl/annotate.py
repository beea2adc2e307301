"""The annotation pass (DESIGN §2.6): programs → transition store with the frozen models' columns.

For every program W of a problem (its reference solutions, re-indented with tabs, reward +1.0;
and generated programs, reward from their execution result) one teacher-forced pass of the frozen
checkpoint gives, per program token t,

- ``ckpt_adv[t]``    = A_ckpt(s_t, a_t) = α(ℓ_ckpt(s_t, a_t) − max_a ℓ_ckpt(s_t, a))
- ``ckpt_greedy[t]`` = argmax_a ℓ_ckpt(s_t, a)

and, with a trained φ (``--phi``), ``v_phi[t]`` = u_φ(s_t), φ's raw value output. The phi and theta
stages then never run these frozen decoders (§2.6: a theta step costs one decoder).

Tokenisation is the model family's (``model/family.py``), the same ids ``bcoder sample`` feeds
the model: for T5 the prompt is ``build_prompt`` encoded as ``<s> … </s>`` (≤ max_source_tokens)
and a program's labels are ``<s> tokens </s>`` (CodeT5/CodeRL's convention); for a causal LM the
prompt is the completion or chat prompt and the labels the program's tokens (fenced for chat) —
every program ends in EOS, the terminal step.

**Decision — programs longer than ``max_target_tokens`` (EOS included) are dropped and counted**,
not truncated: a truncated program has no EOS, so its last kept token is not terminal, yet the
reward r(W) belongs to the whole program; keeping it would teach Q that an unfinished prefix earns
the full program's reward. The counts (ground truth / generated) are printed and stored in the
store's metadata. (Sampling with ``--max-new-tokens`` ≤ max_target_tokens − 1 keeps generated
programs under the limit, up to re-tokenisation differences.)

Efficiency: programs are processed in windows of ``window_batches`` batches, batched by length
inside a window (:func:`batch_positions`). A T5 groups them by problem (the encoder runs once per
distinct prompt, its states are shared by that prompt's programs), a problem's programs by length
and the problems by their median length, so a batch holds few distinct prompts and little padding;
a causal LM, whose every row runs its own prompt, cuts them by program and prompt length as the
training stages do (DESIGN §2.7). Memory stays flat: the samples file is streamed, and the store is
written shard by shard.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bcoder_core.errors import BcoderError
from bcoder_core.rl.configs import AnnotateConfig
from bcoder_core.rl.transitions import Transition, TransitionWriter


@dataclass
class AnnotateSummary:
    out: str = ""
    gt: int = 0
    generated: int = 0
    dropped_gt: int = 0
    dropped_generated: int = 0
    tokens: int = 0
    has_v_phi: bool = False
    per_problem: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def programs(self) -> int:
        return self.gt + self.generated

    def line(self) -> str:
        s = (
            f"annotate: wrote {self.programs} programs ({self.gt} ground truth, {self.generated} "
            f"generated, {self.tokens} tokens{', with v_phi' if self.has_v_phi else ''}) to {self.out}"
        )
        if self.dropped_gt or self.dropped_generated:
            s += (
                f"; dropped {self.dropped_gt} ground-truth and {self.dropped_generated} generated "
                "programs longer than --max-target-tokens"
            )
        return s


@dataclass
class _Item:
    problem: int
    sample_id: int
    ids: np.ndarray
    reward: float
    is_gt: bool


# --------------------------------------------------------------------------------------------------
# Inputs


def load_results(path: str | Path) -> dict[tuple[str, int], float]:
    """(problem_id, sample_id) → reward from a results JSONL file or directory."""
    from bcoder_core.jsonl import read_keyed

    out: dict[tuple[str, int], float] = {}
    for rec in read_keyed(path, "result"):
        try:
            key = (str(rec["problem_id"]), _sample_id(rec["sample_id"]))
            reward = float(rec["reward"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BcoderError(
                f"{path}: result record without a valid problem_id/sample_id/reward: {exc}"
            ) from None
        if not math.isfinite(reward):
            raise BcoderError(f"{path}: result {key[0]}/{key[1]} has a non-finite reward")
        out[key] = reward
    return out


def _sample_id(v: Any) -> int:
    if isinstance(v, bool):
        raise ValueError(f"sample_id {v!r} is not an integer")
    if isinstance(v, int):
        return v
    if isinstance(v, str) and v.strip().lstrip("-").isdigit():
        return int(v)
    raise ValueError(f"sample_id {v!r} is not an integer")


def check_samples(samples: str | Path, results: dict[tuple[str, int], float], known: set[str]) -> int:
    """Validate the samples file before any model work; returns the number of samples.

    Every sample needs a result and a known problem; (problem_id, sample_id) pairs are unique.
    """
    from bcoder_core.jsonl import read_keyed

    seen: set[tuple[str, int]] = set()
    missing: list[str] = []
    unknown: set[str] = set()
    dup: list[str] = []
    for rec in read_keyed(samples, "sample", required=("problem_id", "sample_id", "code")):
        try:
            key = (str(rec["problem_id"]), _sample_id(rec["sample_id"]))
            if not isinstance(rec["code"], str):
                raise ValueError("code is not a string")
        except (KeyError, ValueError) as exc:
            raise BcoderError(
                f"{samples}: sample record without a valid problem_id/sample_id/code: {exc}"
            ) from None
        if key in seen:
            dup.append(f"{key[0]}/{key[1]}")
        seen.add(key)
        if key[0] not in known:
            unknown.add(key[0])
        if key not in results:
            missing.append(f"{key[0]}/{key[1]}")
    if unknown:
        names = sorted(unknown)
        raise BcoderError(
            f"{samples}: {len(names)} problem id(s) not in the problem set: {', '.join(names[:5])}"
            + (" ..." if len(names) > 5 else "")
        )
    if dup:
        raise BcoderError(
            f"{samples}: duplicate samples {', '.join(dup[:5])}" + (" ..." if len(dup) > 5 else "")
        )
    if missing:
        raise BcoderError(
            f"{len(missing)} sample(s) have no execution result: {', '.join(missing[:5])}"
            + (" ..." if len(missing) > 5 else "")
        )
    return len(seen)


class _Programs:
    """Streams tokenised programs (ground truth first, then samples), counting dropped ones."""

    def __init__(self, problems, tokenizer, cfg: AnnotateConfig, summary: AnnotateSummary, family) -> None:
        self.problems = problems
        self.tok = tokenizer
        self.family = family
        self.cfg = cfg
        self.summary = summary
        self.index = {p.id: k for k, p in enumerate(problems)}
        self.bar = None  # a progress bar: dropped programs count as done

    def _encode(self, code: str) -> np.ndarray | None:
        ids = self.family.program_ids(self.tok, code, self.cfg.prompt_format)
        if len(ids) > self.cfg.max_target_tokens:
            return None
        return np.asarray(ids, dtype=np.int32)

    def _dropped(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def ground_truth(self) -> Iterator[_Item]:
        from bcoder_core.prompts import reindent_with_tabs

        for k, p in enumerate(self.problems):
            for j, sol in enumerate(p.solutions):
                ids = self._encode(reindent_with_tabs(sol))
                if ids is None:
                    self.summary.dropped_gt += 1
                    self._dropped()
                    continue
                yield _Item(k, j, ids, 1.0, True)

    def generated(self, samples: str | Path, results: dict[tuple[str, int], float]) -> Iterator[_Item]:
        from bcoder_core.jsonl import read_jsonl

        for rec in read_jsonl(samples, "samples"):
            pid, sid = str(rec["problem_id"]), _sample_id(rec["sample_id"])
            if pid not in self.index:  # another shard's problem
                continue
            ids = self._encode(rec["code"])
            if ids is None:
                self.summary.dropped_generated += 1
                self._dropped()
                continue
            yield _Item(self.index[pid], sid, ids, results[(pid, sid)], False)


BATCH_ORDERS = ("problem", "length")
"""How a window's programs are batched (:func:`batch_positions`)."""


def batch_order_for(model: Any) -> str:
    """``problem`` for a T5 (its encoder runs once per distinct prompt of a batch: a problem's
    programs together save encoder work), ``length`` for a causal LM (every row runs its prompt)."""
    return "problem" if getattr(model, "family", "t5") == "t5" else "length"


def batch_positions(
    problems: Sequence[int],
    programs: Sequence[int],
    prompts: Sequence[int] | None,
    batch_size: int,
    by: str = "problem",
) -> list[int]:
    """Positions of a window's programs in batching order (cut every ``batch_size``; DESIGN §2.7).

    ``problem``: grouped by problem, a problem's programs by length (then position), the problems
    ordered by their median program length in the window (then index), so that a batch spanning
    two problems joins programs of similar lengths. ``length``: the training stages' 2-D length cut
    (``train.samplers.batch_order``: program length, then prompt length in groups), problems mixed;
    needs the ``prompts`` lengths. Deterministic.
    """
    n = len(problems)
    if n == 0:
        return []
    problem = np.asarray(problems, dtype=np.int64)
    program = np.asarray(programs, dtype=np.int64)
    if by == "length":
        from bcoder_core.train.samplers import batch_order, length_keys

        prompt = np.asarray(prompts if prompts is not None else np.zeros(n), dtype=np.int64)
        return batch_order(np.arange(n), length_keys(program, prompt), batch_size).tolist()
    if by != "problem":
        raise BcoderError(f"batch order {by!r}: expected one of {', '.join(BATCH_ORDERS)}")
    uniq, inverse = np.unique(problem, return_inverse=True)
    median = np.array([np.median(program[inverse == u]) for u in range(len(uniq))])[inverse]
    return np.lexsort((np.arange(n), program, problem, median)).tolist()


def windows(
    items: Iterable[_Item],
    batch_size: int,
    window_batches: int,
    *,
    by: str = "problem",
    prompt_len: Any = None,
) -> Iterator[list[_Item]]:
    """Batches of ``items``: each window of batch_size × window_batches items in the order of
    :func:`batch_positions` (``prompt_len(problem)``: prompt lengths, for ``by="length"``)."""
    size = batch_size * window_batches
    buf: list[_Item] = []

    def flush() -> Iterator[list[_Item]]:
        prompts = [prompt_len(it.problem) for it in buf] if by == "length" else None
        order = batch_positions(
            [it.problem for it in buf], [len(it.ids) for it in buf], prompts, batch_size, by
        )
        ordered = [buf[i] for i in order]
        for i in range(0, len(ordered), batch_size):
            yield ordered[i : i + batch_size]
        buf.clear()

    for it in items:
        buf.append(it)
        if len(buf) >= size:
            yield from flush()
    yield from flush()


# --------------------------------------------------------------------------------------------------
# The teacher-forced pass


def prompt_batch(prompts: Sequence[np.ndarray], pad_id: int):
    """Distinct prompts → (input_ids, attention_mask) [P, S] (right padding)."""
    import torch

    s = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), s), pad_id, dtype=torch.long)
    am = torch.zeros((len(prompts), s), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, : len(p)] = torch.as_tensor(np.asarray(p, dtype=np.int64))
        am[i, : len(p)] = 1
    return ids, am


def label_batch(programs: Sequence[np.ndarray]):
    import torch

    t = max(len(p) for p in programs)
    labels = torch.full((len(programs), t), -100, dtype=torch.long)
    for i, p in enumerate(programs):
        labels[i, : len(p)] = torch.as_tensor(np.asarray(p, dtype=np.int64))
    return labels


def encode_shared(model, prompt_keys: Sequence[Any], prompt_of, pad_id: int, device):
    """Encoder states for rows whose prompts are ``prompt_keys``: each distinct prompt encoded once.

    Returns (enc [B,S,d], attention_mask [B,S]) for the rows, in order.
    """
    import torch

    distinct = list(dict.fromkeys(prompt_keys))
    slot = {k: i for i, k in enumerate(distinct)}
    ids, am = prompt_batch([prompt_of(k) for k in distinct], pad_id)
    ids, am = ids.to(device), am.to(device)
    enc = model.encode(ids, am)
    rows = torch.tensor([slot[k] for k in prompt_keys], device=device)
    return enc.index_select(0, rows), am.index_select(0, rows)


def autocast_context(device, dtype: str):
    import contextlib

    import torch

    if dtype == "auto":
        dtype = "bf16" if device.type == "cuda" else "fp32"
    if dtype == "fp32":
        return contextlib.nullcontext()
    if dtype == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    raise BcoderError(f"--dtype {dtype!r}: expected auto, fp32 or bf16")


class ReusedColumns:
    """The checkpoint's columns (``ckpt_adv``, ``ckpt_greedy``) of an earlier annotation of the same
    programs (``--columns-from``), so that the pass that adds ``v_phi`` runs the φ decoder only, not
    θ_ckpt's decoder a second time.

    A program is found by (problem, ground truth or generated, sample index). The store must have
    been annotated with the same checkpoint and α, and each program's tokens must be the stored
    ones; otherwise (other samples, tokenizer or settings) annotate stops with one error.
    """

    def __init__(self, uri: str, *, model: str, alpha: float) -> None:
        from bcoder_core.rl.transitions import open_store

        self.uri = uri
        self.store = open_store(uri)
        meta = self.store.metadata
        if meta.get("model") != model:
            raise BcoderError(
                f"annotate: --columns-from {uri} was annotated with model {meta.get('model')}, not {model}"
            )
        if float(meta.get("alpha", 1.0)) != alpha:
            raise BcoderError(
                f"annotate: --columns-from {uri} has alpha {meta.get('alpha', 1.0)}, --alpha is {alpha}"
            )
        self.where = {key: i for i, key in enumerate(self.store.record_keys())}

    def columns(self, batch: list[_Item], problems: Sequence[Any], width: int) -> dict[str, np.ndarray]:
        """The stored columns of ``batch``'s programs, [B, width] (padding 0)."""
        adv = np.zeros((len(batch), width), dtype=np.float32)
        greedy = np.zeros((len(batch), width), dtype=np.int32)
        keys = [(problems[it.problem].id, it.is_gt, int(it.sample_id)) for it in batch]
        missing = [k for k in keys if k not in self.where]
        if missing:
            pid, gt, sid = missing[0]
            raise BcoderError(
                f"annotate: --columns-from {self.uri} has no {'reference solution' if gt else 'sample'} "
                f"{sid} of problem {pid} (annotated from other programs?)"
            )
        for b, (it, rec) in enumerate(
            zip(batch, self.store.get_many([self.where[k] for k in keys]), strict=True)
        ):
            if not np.array_equal(rec.program_ids, it.ids):
                raise BcoderError(
                    f"annotate: --columns-from {self.uri}: program {keys[b][2]} of problem {keys[b][0]} "
                    "has other tokens than the stored one (another tokenizer or settings?)"
                )
            adv[b, : rec.num_tokens] = rec.ckpt_adv
            greedy[b, : rec.num_tokens] = rec.ckpt_greedy
        return {"ckpt_adv": adv, "ckpt_greedy": greedy}


def _own_part(uri: str, shard: tuple[int, int]) -> str:
    """Shard I/N of a pass reads only part I of N of a store of parts made with the same shards (on
    S3 the other parts are not downloaded); else the whole store."""
    from bcoder_core import storage
    from bcoder_core.rl.transitions import part_name
    from bcoder_core.shards import WHOLE

    if shard != WHOLE:
        part = storage.join(uri, part_name(shard))
        if storage.exists(part):
            return part
    return uri


def annotate_batch(
    model,
    batch: list[_Item],
    prompt_of,
    pad_id: int,
    device,
    alpha: float,
    reused: tuple[ReusedColumns, Sequence[Any]] | None = None,
) -> dict[str, Any]:
    """One teacher-forced pass: the columns [B,T] of ``batch`` (numpy, padding included); with
    ``reused`` (the columns' source and the problems) the checkpoint's columns are read, not computed."""
    import torch

    from bcoder_core.rl.losses import ckpt_columns

    labels = label_batch([it.ids for it in batch]).to(device)
    with torch.no_grad():
        enc, am = encode_shared(model, [it.problem for it in batch], prompt_of, pad_id, device)
        if reused is None:
            logits = model.ckpt_logits(enc, am, labels)
            adv, greedy = ckpt_columns(logits, labels, alpha)
            del logits
            out = {
                "ckpt_adv": adv.float().cpu().numpy(),
                "ckpt_greedy": greedy.cpu().numpy().astype(np.int32),
            }
        else:
            source, problems = reused
            out = source.columns(batch, problems, labels.shape[1])
        if model.has_phi:
            out["v_phi"] = model.phi_values(enc, am, labels).float().cpu().numpy()
    return out


def annotate_items(
    model,
    items: Iterable[_Item],
    *,
    problems,
    prompt_of,
    pad_id: int,
    cfg: AnnotateConfig,
    device,
    dtype: str = "fp32",
    progress=None,
    reused: ReusedColumns | None = None,
) -> Iterator[Transition]:
    """Transition records of ``items`` (in the order of their sorted windows)."""
    with_phi = model.has_phi
    source = None if reused is None else (reused, problems)
    by = batch_order_for(model)
    for batch in windows(
        items, cfg.batch_size, cfg.window_batches, by=by, prompt_len=lambda k: len(prompt_of(k))
    ):
        with autocast_context(device, dtype):
            cols = annotate_batch(model, batch, prompt_of, pad_id, device, cfg.alpha, source)
        for b, it in enumerate(batch):
            t = len(it.ids)
            yield Transition(
                problem_id=problems[it.problem].id,
                sample_id=it.sample_id,
                prompt_ids=prompt_of(it.problem),
                program_ids=it.ids,
                reward=it.reward,
                is_gt=it.is_gt,
                ckpt_adv=cols["ckpt_adv"][b, :t],
                ckpt_greedy=cols["ckpt_greedy"][b, :t],
                v_phi=cols["v_phi"][b, :t] if with_phi else None,
            )
        if progress is not None:
            progress.update(len(batch))


class PromptCache:
    """Prompt token ids per problem index (computed on first use, kept as int32 arrays)."""

    def __init__(
        self, problems, tokenizer, max_source_tokens: int, family=None, prompt_format: str = "completion"
    ) -> None:
        from bcoder_core.model.family import get_family

        self.problems = problems
        self.tok = tokenizer
        self.max_source_tokens = max_source_tokens
        self.family = family or get_family("t5")
        self.prompt_format = prompt_format
        self._cache: dict[int, np.ndarray] = {}

    def __call__(self, k: int) -> np.ndarray:
        p = self._cache.get(k)
        if p is None:
            ids = self.family.prompt_ids(
                self.problems[k], self.tok, self.max_source_tokens, self.prompt_format
            )
            p = np.asarray(ids, dtype=np.int32)
            self._cache[k] = p
        return p


def run_annotate(
    *,
    model: str,
    problems: str,
    out: str,
    cfg: AnnotateConfig,
    phi: str | None = None,
    samples: str | None = None,
    results: str | None = None,
    progress: bool = True,
    shard: str | None = None,
    columns_from: str | None = None,
) -> AnnotateSummary:
    """The ``bcoder annotate`` stage (module docstring).

    ``shard`` ("I/N", ``bcoder_core.shards``): only the problems whose index is I mod N and their
    samples; ``out`` is then part I of N of one store (``.../part-I-of-N``, see
    ``bcoder_core.rl.transitions``). A shard may hold no programs (more pods than problems): its
    part is an empty store, so that the N parts are still complete.

    ``columns_from``: a store of the same programs annotated before with the same ``model`` (the
    first pass); its ``ckpt_adv`` and ``ckpt_greedy`` are copied (:class:`ReusedColumns`), so that
    a pass with ``phi`` runs only φ's decoder.
    """
    from bcoder_core import storage
    from bcoder_core.model.family import get_family
    from bcoder_core.model.qmodel import BCoderModel
    from bcoder_core.problems import read_problems
    from bcoder_core.rl.sampling import load_tokenizer_for, pick_device, progress_bar, resolve_model_dir
    from bcoder_core.shards import WHOLE, parse_shard, shard_items

    tokenizer, device, dtype = cfg.tokenizer, cfg.device, cfg.dtype

    if (samples is None) != (results is None):
        raise BcoderError("annotate: --samples and --results go together")
    if not cfg.ground_truth and samples is None:
        raise BcoderError("annotate: nothing to annotate (--no-ground-truth and no --samples)")
    shard_spec = parse_shard(shard)
    storage.check_output(out, kind="transitions")  # before the model is loaded
    all_probs = read_problems(storage.input_path(problems))
    probs = shard_items(all_probs, shard_spec)
    samples_path = results_map = None
    n_samples = 0
    if samples is not None:
        samples_path = storage.input_path(samples)
        results_map = load_results(storage.input_path(results))
        n_samples = check_samples(samples_path, results_map, {p.id for p in all_probs})
    n_gt = sum(len(p.solutions) for p in probs) if cfg.ground_truth else 0
    sharded = shard_spec != WHOLE
    if n_gt + n_samples == 0 and not sharded:
        raise BcoderError(f"annotate: no programs: {problems} has no solutions and no samples were given")

    reused = None
    if columns_from is not None:
        reused = ReusedColumns(_own_part(columns_from, shard_spec), model=model, alpha=cfg.alpha)
    model_dir = resolve_model_dir(model)
    tok = load_tokenizer_for(model_dir, tokenizer)
    dev = pick_device(device)
    phi_dir = resolve_model_dir(phi) if phi else None
    m = BCoderModel.from_pretrained(model_dir, stage="annotate", phi_path=phi_dir, device=dev).eval()
    if len(tok) > m.vocab_size:
        raise BcoderError(f"tokenizer has {len(tok)} tokens but the model {model} only {m.vocab_size}")

    family = get_family(m.family)
    summary = AnnotateSummary(out=out, has_v_phi=phi is not None)
    programs = _Programs(probs, tok, cfg, summary, family)
    prompt_of = PromptCache(probs, tok, cfg.max_source_tokens, family, cfg.prompt_format)

    def items() -> Iterator[_Item]:
        if cfg.ground_truth:
            yield from programs.ground_truth()
        if samples_path is not None:
            yield from programs.generated(samples_path, results_map)

    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    config = {
        "command": "annotate",
        "model": model,
        "phi": phi,
        "problems": problems,
        "samples": samples,
        "results": results,
        "shard": list(shard_spec),
        "columns_from": columns_from,
        **asdict(cfg),
    }
    bar = progress_bar(n_gt + n_samples, "annotate", progress)
    programs.bar = bar
    try:
        with storage.output_path(out, kind="transitions", config=config) as local:
            if local.suffix:
                raise BcoderError(f"annotate: --out {out} must name a directory (a transition store)")
            metadata = {
                "model": model,
                "phi": phi,
                "problems": problems,
                "samples": samples,
                "results": results,
                "tokenizer_size": len(tok),
                "family": m.family,
                "prompt_format": cfg.prompt_format,
                "pad_id": pad,
                "eos_id": tok.eos_token_id,
                "max_source_tokens": cfg.max_source_tokens,
                "max_target_tokens": cfg.max_target_tokens,
                "alpha": cfg.alpha,
                "shard": list(shard_spec),
            }
            with TransitionWriter(local, shard_size=cfg.shard_size, metadata=metadata) as writer:
                for rec in annotate_items(
                    m,
                    items(),
                    problems=probs,
                    prompt_of=prompt_of,
                    pad_id=pad,
                    cfg=cfg,
                    device=dev,
                    dtype=dtype,
                    progress=bar,
                    reused=reused,
                ):
                    writer.add(rec)
                    summary.tokens += rec.num_tokens
                    if rec.is_gt:
                        summary.gt += 1
                    else:
                        summary.generated += 1
                writer.metadata["dropped_gt"] = summary.dropped_gt
                writer.metadata["dropped_generated"] = summary.dropped_generated
            if summary.programs == 0 and not (sharded and n_gt + summary.dropped_generated == 0):
                raise BcoderError(
                    f"annotate: every program is longer than --max-target-tokens {cfg.max_target_tokens}"
                )
    finally:
        bar.close()
    return summary
