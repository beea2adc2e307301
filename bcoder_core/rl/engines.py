"""Sampling engines of ``bcoder sample``: the reference KV-cache loop, and CTranslate2 for T5.

An engine turns (θ's directory, problems, ``SamplingConfig``) into sample records. Every engine
writes the same records (``rl/sampling.py``) with two provenance fields, ``engine`` and
``engine_version``, and reads prompts through the model family (``model/family.py``), so a
program's text is cut the same way whatever generated it.

- ``reference``: the family's own loop (``sample_problems``): per-sample random streams, so a
  sample depends on (seed, problem, sample index) only — not on its batch or shard.
- ``ctranslate2`` (T5 family; CPU and CUDA): θ converted once per model artifact with CTranslate2's
  Transformers converter and cached under ``$BCODER_CACHE`` (default ``~/.cache/bcoder``) by the
  sha256 of the weights and config, so the conversion is paid once per θ. Tokens travel as ids:
  the converted vocabulary is the id strings ``"0" … "V-1"``, so any tokenizer works. Sampling
  uses CTranslate2's own generator, seeded once per run: a run's samples are reproducible on the
  same machine with the same problems, batch size and thread count, but a sample depends on the
  batches before it and on the shard (unlike ``reference``). The converted model's log-probabilities
  are the model's (θ's untied head unscaled: see ``_Converter``) and greedy decoding (T = 0) gives
  the reference loop's programs.

**Decision — the default stays ``reference``; the demo picks ``ctranslate2``.** Which engine is
faster depends on the model: on the demo's T5 (2M parameters, 1,024-token vocabulary; the test split,
m = 8, T = 0.8, 1 thread) CTranslate2 samples 3,040 tokens/s against the reference loop's 1,980
(reference / CTranslate2 = 0.65), so ``configs/demo.yaml`` sets it; on a random 23.8M T5 with
CodeT5's 32,100-token vocabulary (``bench/bench_sample_rank.py --engines``, 2 threads) it is the other
way round, 371 against 729 tokens/s (its top-p over the whole vocabulary, every step). The reference
loop is also the engine whose samples do not depend on batching or sharding. ``auto`` picks
CTranslate2 for a T5. GPU rates are unmeasured (``bench/gpu_all.sh``). vLLM for causal LMs on GPU is
not wired in: it needs a CUDA machine to build and test against.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from bcoder_core.errors import BcoderError
from bcoder_core.rl.configs import SamplingConfig

__all__ = ["ENGINES", "CTranslate2Engine", "Engine", "ReferenceEngine", "cache_root", "select_engine"]

ENGINES: tuple[str, ...] = ("auto", "reference", "ctranslate2")


class Engine(Protocol):
    """A sampling engine (module docstring)."""

    name: str
    version: str

    def sample(
        self,
        tokenizer: Any,
        problems: Sequence[Any],
        cfg: SamplingConfig,
        *,
        model_name: str = "",
        progress: bool = True,
        on_batch: Callable[[int], None] | None = None,
    ) -> Iterator[dict[str, Any]]: ...


def cache_root() -> Path:
    """Where converted models are cached (``$BCODER_CACHE`` or ``~/.cache/bcoder``)."""
    return Path(os.environ.get("BCODER_CACHE") or Path.home() / ".cache" / "bcoder")


class ReferenceEngine:
    """The family's KV-cache loop on the plain Hugging Face model (``sampling.sample_problems``)."""

    name = "reference"

    def __init__(self, model_dir: str, device: str | None, dtype: str) -> None:
        import transformers

        from bcoder_core.rl.sampling import load_theta

        self.version = f"transformers-{transformers.__version__}"
        self.model = load_theta(model_dir, device, dtype)

    def sample(self, tokenizer, problems, cfg, *, model_name="", progress=True, on_batch=None):
        from bcoder_core.rl.sampling import sample_problems

        for rec in sample_problems(
            self.model, tokenizer, problems, cfg, model_name=model_name, progress=progress, on_batch=on_batch
        ):
            yield {**rec, "engine": self.name, "engine_version": self.version}


# Part of the cache key: bumped when a conversion made before would now come out differently
# (2: θ's untied head no longer scaled by d_model^-0.5).
_CONVERSION = "bcoder-ctranslate2-conversion-2"


def _digest(model_dir: Path) -> str:
    """sha256 over θ's config and weights (what the conversion reads), in a fixed order."""
    h = hashlib.sha256(_CONVERSION.encode() + b"\0")
    names = ["config.json", *sorted(p.name for p in model_dir.glob("model*.safetensors"))]
    for name in names:
        path = model_dir / name
        if not path.is_file():
            continue
        h.update(name.encode() + b"\0")
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


class CTranslate2Engine:
    """T5 sampling with CTranslate2 (module docstring): conversion cached by the weights' digest."""

    name = "ctranslate2"

    def __init__(self, model_dir: str, device: str | None, dtype: str) -> None:
        try:
            import ctranslate2
        except ImportError:
            raise BcoderError("--engine ctranslate2: the ctranslate2 package is not installed") from None
        from bcoder_core.model import files
        from bcoder_core.model.family import family_for_checkpoint

        self.version = f"ctranslate2-{ctranslate2.__version__}"
        self._ct2 = ctranslate2
        local = Path(model_dir)
        if family_for_checkpoint(local).name != "t5":
            raise BcoderError("--engine ctranslate2: CTranslate2 samples T5 checkpoints only here")
        self.config = files.read_json_object(local / "config.json")
        cuda = ctranslate2.get_cuda_device_count() > 0
        self.device = "cuda" if (device or ("cuda" if cuda else "cpu")).startswith("cuda") else "cpu"
        if self.device == "cuda" and not cuda:
            raise BcoderError("--engine ctranslate2: no CUDA device for CTranslate2")
        want_bf16 = dtype == "bf16" or (dtype == "auto" and self.device == "cuda")
        self.compute_type = "bfloat16" if want_bf16 else "float32"
        self.converted = self._converted(local)

    def _converted(self, local: Path) -> Path:
        """The converted model for θ in ``local``, converting it once (atomic: tmp dir, then rename)."""
        from bcoder_core.model.files import check_t5_dir

        check_t5_dir(local)  # a truncated or garbage file: one error naming it, not the converter's
        out = cache_root() / "ctranslate2" / f"{_digest(local)}"
        if (out / "model.bin").is_file():
            return out
        from ctranslate2.converters import TransformersConverter

        from bcoder_core.model.t5 import _quiet_untied_notice

        class _Converter(TransformersConverter):
            def load_model(self, model_class, model_name_or_path, **kwargs):
                model = super().load_model(model_class, model_name_or_path, **kwargs)
                # CTranslate2 scales T5's decoder output by d_model^-0.5 when the config says the
                # head is tied; transformers 5.x reports tie_word_embeddings true even for θ's
                # untied, unscaled head (scale_decoder_outputs false): without this, θ's logits
                # shrink by d_model^-0.5 and its samples are near uniform (greedy, an argmax, hides it).
                scale = getattr(model.config, "scale_decoder_outputs", None)
                if scale is not None:
                    model.config.tie_word_embeddings = bool(scale)
                return model

        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f".{out.name}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            with _quiet_untied_notice(), contextlib.redirect_stdout(None):
                _Converter(str(local)).convert(str(tmp), force=True)
            vocab = int(self.config.get("vocab_size") or 0)
            # Ids as tokens: CTranslate2 then needs no tokenizer, and ours keeps its exact spacing.
            (tmp / "shared_vocabulary.json").write_text(json.dumps([str(i) for i in range(vocab)]))
            cfg_file = tmp / "config.json"
            ct2_cfg = json.loads(cfg_file.read_text())
            start = int(self.config.get("decoder_start_token_id") or 0)
            ct2_cfg.update(
                bos_token=str(start),
                decoder_start_token=str(start),
                eos_token=str(int(self.config.get("eos_token_id", 2))),
                unk_token=str(3 if vocab > 3 else 0),
            )
            cfg_file.write_text(json.dumps(ct2_cfg, indent=2))
            try:
                tmp.rename(out)
            except OSError:  # another process converted it first: use theirs
                shutil.rmtree(tmp, ignore_errors=True)
        except Exception as exc:  # the converter raises whatever its loaders raise
            shutil.rmtree(tmp, ignore_errors=True)
            raise BcoderError(f"--engine ctranslate2: cannot convert {local} ({exc})") from exc
        return out

    def sample(self, tokenizer, problems, cfg, *, model_name="", progress=True, on_batch=None):
        from bcoder_core.model.t5 import FAMILY
        from bcoder_core.rl.sampling import progress_bar, sample_record

        fmt = cfg.prompt_format
        prompts = [
            [str(i) for i in FAMILY.prompt_ids(p, tokenizer, cfg.max_source_tokens, fmt)] for p in problems
        ]
        eos = sorted(FAMILY.eos_ids(tokenizer, None))
        rows = [(k, j) for k in range(len(problems)) for j in range(cfg.num_samples)]
        greedy = cfg.temperature == 0
        # CTranslate2's generators are seeded when its worker thread starts: one translator per run,
        # made after the seed is set, makes a run's samples reproducible (the stream runs on across
        # batches, so a sample depends on the batches before it).
        self._ct2.set_random_seed(cfg.seed & 0x7FFFFFFF)
        translator = self._ct2.Translator(
            str(self.converted), device=self.device, compute_type=self.compute_type, inter_threads=1
        )
        bar = progress_bar(len(rows), "sample", progress)
        try:
            for b0 in range(0, len(rows), cfg.batch_size):
                chunk = rows[b0 : b0 + cfg.batch_size]
                results = translator.translate_batch(
                    [prompts[k] for k, _ in chunk],
                    beam_size=1,
                    num_hypotheses=1,
                    sampling_topk=1 if greedy else 0,
                    sampling_topp=1.0 if greedy else cfg.top_p,
                    sampling_temperature=1.0 if greedy else cfg.temperature,
                    max_decoding_length=cfg.max_new_tokens,
                    max_input_length=0,
                    end_token=eos,
                    return_end_token=True,
                )
                for (k, j), res in zip(chunk, results, strict=True):
                    toks = [int(t) for t in res.hypotheses[0]]
                    finished = bool(toks) and toks[-1] in eos
                    if finished:
                        toks = toks[:-1]
                    code = FAMILY.program_text(tokenizer, toks, fmt)
                    rec = sample_record(problems[k].id, j, code, cfg, model_name, len(toks), finished)
                    yield {**rec, "engine": self.name, "engine_version": self.version}
                bar.update(len(chunk))
                if on_batch is not None:
                    on_batch(len(chunk))
        finally:
            bar.close()


def select_engine(name: str, model_dir: str, device: str | None, dtype: str) -> Engine:
    """The engine ``name`` for θ in ``model_dir``; ``auto``: CTranslate2 for a T5 when installed."""
    if name not in ENGINES:
        raise BcoderError(f"--engine {name!r}: expected one of {', '.join(ENGINES)}")
    if name == "reference":
        return ReferenceEngine(model_dir, device, dtype)
    if name == "ctranslate2":
        return CTranslate2Engine(model_dir, device, dtype)
    from bcoder_core.model.family import family_for_checkpoint

    if family_for_checkpoint(model_dir).name == "t5":
        try:
            import ctranslate2  # noqa: F401
        except ImportError:
            pass
        else:
            return CTranslate2Engine(model_dir, device, dtype)
    return ReferenceEngine(model_dir, device, dtype)
