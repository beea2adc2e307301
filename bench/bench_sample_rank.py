"""CPU benchmark: ranking m programs by R̃ against sampling them (DESIGN §2.8).

DESIGN §2.8 scores programs with ONE batched teacher-forced pass of θ and φ after generation, not
inside the autoregressive loop. This script measures what that costs next to the sampling itself:
a random T5 of a small shape (``configs/models/<shape>.json`` with CodeT5's 32,100-token
vocabulary) is saved as a checkpoint, θ and φ are made from it and saved, then in one run

    sample  ``bcoder sample``'s kernel: m programs per problem, top-p, KV cache (θ as plain HF T5)
    rank    ``bcoder rank``'s kernel: R̃ of every sampled program (θ + φ, stage eval)

are timed on the same problems (model loading excluded), and the ratio rank / sample is printed
(target ≤ 0.30).

A random T5's next-token distribution is flat (logits of std ≈ 1: the top-p nucleus holds about
two thirds of the vocabulary), unlike a trained model's, and that makes nucleus sampling look
slow. θ's LM head is therefore scaled by ``--logit-scale`` (default 3: top-1 probability ≈ 0.94,
median nucleus 1 token, mean ≈ 35 at T = 0.8, a heavy tail like a trained code model's);
``--logit-scale 1`` measures the flat worst case. Programs end at EOS or ``--max-new-tokens``.

    python bench/bench_sample_rank.py                 # small shape, 4 problems x 8 samples x 128 tokens
    python bench/bench_sample_rank.py --shape tiny    # seconds
    python bench/bench_sample_rank.py --engines       # + CTranslate2's tokens/s against the reference loop

Numbers depend on the machine and its load; compare only within one run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bcoder_core.model.build import model_config, save_random_checkpoint  # noqa: E402
from bcoder_core.model.qmodel import BCoderModel  # noqa: E402
from bcoder_core.model.tokenizer import load_tokenizer  # noqa: E402
from bcoder_core.problems import Problem  # noqa: E402
from bcoder_core.rl.ranking import RankConfig, RankSummary, score_samples  # noqa: E402
from bcoder_core.rl.sampling import SamplingConfig, load_theta, sample_problems  # noqa: E402

STATEMENT = (
    "You are given an array of n integers a_1, ..., a_n. In one move you may pick two adjacent "
    "elements and replace them by their sum. Find the minimum number of moves needed to make all "
    "elements of the array equal, or print -1 if it is impossible.\n\n-----Input-----\n\nThe first "
    "line contains one integer t - the number of test cases. Each test case consists of two lines: "
    "n, then the n integers.\n\n-----Output-----\n\nFor each test case print one integer.\n"
)


def problems(n: int) -> list[Problem]:
    return [
        Problem(
            id=f"bench/{i}",
            source="bench",
            split="test",
            question=f"Variant {i}. " + STATEMENT * (1 + i % 2),
            format="stdin",
            tests={"inputs": ["1\n"], "outputs": ["1\n"]},
        )
        for i in range(n)
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="small", help="model shape in configs/models (tiny, small, mid)")
    ap.add_argument("--problems", type=int, default=4)
    ap.add_argument("--num-samples", "-m", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16, help="programs per batch, both kernels")
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--repeat", type=int, default=2, help="timed repetitions (the best is kept)")
    ap.add_argument("--logit-scale", type=float, default=3.0, help="scale of theta's LM head (1: flat)")
    ap.add_argument("--rank-dtype", default="fp32", help="fp32 (bcoder rank's default) or bf16 (autocast)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda: where every kernel and engine runs")
    ap.add_argument(
        "--dtype", default="fp32", help="sampling precision: fp32, or bf16 (the GPU's; θ loaded in bf16)"
    )
    ap.add_argument("--json", default=None, help="write the measured rates here (bench/apps_walltime.py)")
    ap.add_argument(
        "--engines",
        action="store_true",
        help="also time the CTranslate2 engine on the same θ, prompts and settings (tokens/s ratio)",
    )
    ap.add_argument(
        "--compare-generate",
        action="store_true",
        help="also time transformers' generate(do_sample=True) on the same prompts, as a sampling baseline",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    tok = load_tokenizer("codet5")
    cfg = model_config(args.shape, vocab_size=len(tok), dropout_rate=0.0)
    probs = problems(args.problems)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        save_random_checkpoint(cfg, root / "ckpt", seed=0, tokenizer=tok)
        theta = BCoderModel.from_pretrained(root / "ckpt", stage="theta")
        with torch.no_grad():
            theta.lm_head.weight.mul_(args.logit_scale)
        theta.save_pretrained(root / "theta", "theta")
        BCoderModel.from_pretrained(root / "ckpt", stage="phi").save_pretrained(root / "phi", "phi")
        theta_hf = load_theta(str(root / "theta"), device=args.device, dtype=args.dtype)
        ranker = BCoderModel.from_pretrained(root / "theta", stage="eval", phi_path=root / "phi").eval()
        ranker = ranker.to(args.device)
        ct2_engine = None
        if args.engines:
            # a fresh conversion (timed apart) in a cache that outlives the checkpoint's temp dir
            import atexit
            import os
            import shutil

            from bcoder_core.rl.engines import CTranslate2Engine

            os.environ["BCODER_CACHE"] = cache = tempfile.mkdtemp(prefix="bcoder-bench-ct2-")
            atexit.register(shutil.rmtree, cache, ignore_errors=True)
            t0 = time.perf_counter()
            ct2_engine = CTranslate2Engine(str(root / "theta"), args.device, args.dtype)
            convert_s = time.perf_counter() - t0

    scfg = SamplingConfig(
        num_samples=args.num_samples,
        temperature=args.temperature,
        top_p=0.95,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        seed=0,
    )
    rcfg = RankConfig(batch_size=args.batch_size)
    device = torch.device(args.device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    sample_times, rank_times = [], []
    samples: list[dict] = []
    summary = RankSummary()
    for _ in range(args.repeat):
        sync()
        t0 = time.perf_counter()
        samples = list(sample_problems(theta_hf, tok, probs, scfg, progress=False))
        sync()
        sample_times.append(time.perf_counter() - t0)
        summary = RankSummary()
        t0 = time.perf_counter()
        ranked = list(
            score_samples(
                ranker, tok, probs, samples, rcfg, device=device, dtype=args.rank_dtype, summary=summary
            )
        )
        sync()
        rank_times.append(time.perf_counter() - t0)
        assert len(ranked) == len(samples)

    n_prog = len(samples)
    tokens = sum(s["num_tokens"] for s in samples)
    ts, tr = min(sample_times), min(rank_times)
    n_params = sum(p.numel() for p in theta_hf.parameters())
    print(
        f"shape {args.shape} ({n_params / 1e6:.1f}M parameters, vocab {len(tok)}), "
        f"logit scale {args.logit_scale}, {args.device} {args.dtype}, {torch.get_num_threads()} threads, "
        f"{args.problems} problems x {args.num_samples} samples, "
        f"{tokens} tokens sampled (max {args.max_new_tokens} per program), batch {args.batch_size}"
    )
    print(f"sample: {ts:8.3f} s  ({n_prog / ts:7.1f} programs/s, {tokens / ts:8.0f} tokens/s)")
    print(f"rank:   {tr:8.3f} s  ({n_prog / tr:7.1f} programs/s)  [{summary.truncated} truncated]")
    print(f"ratio rank/sample = {tr / ts:.3f}  (target <= 0.30; rank in {args.rank_dtype})")
    if ct2_engine is not None:
        ct2_times, ct2_tokens = [], 0
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            out = list(ct2_engine.sample(tok, probs, scfg, progress=False))
            ct2_times.append(time.perf_counter() - t0)
            ct2_tokens = sum(s["num_tokens"] for s in out)
        tc = min(ct2_times)
        ref_rate, ct2_rate = tokens / ts, ct2_tokens / tc
        print(
            f"ctranslate2: {tc:8.3f} s  ({len(out) / tc:7.1f} programs/s, {ct2_rate:8.0f} tokens/s; "
            f"conversion once {convert_s:.1f} s, cached)"
        )
        print(f"tokens/s reference / ctranslate2 = {ref_rate / ct2_rate:.2f}  (the engine ratio)")
        print(f"ratio rank/sample with ctranslate2 sampling = {tr / tc:.3f}  (target <= 0.30)")
    if args.json:
        import json

        rates = {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "shape": args.shape,
            "dtype": args.dtype,
            "reference": {"tokens_per_s": tokens / ts, "programs_per_s": n_prog / ts},
            "rank": {"programs_per_s": n_prog / tr, "rank_over_sample": tr / ts},
        }
        if ct2_engine is not None:
            rates["ctranslate2"] = {"tokens_per_s": ct2_rate, "programs_per_s": len(out) / tc}
        # what bench/apps_walltime.py reads: the faster engine's rate
        best = max(("reference", "ctranslate2"), key=lambda e: rates.get(e, {}).get("tokens_per_s", 0.0))
        rates["engine"], rates["tokens_per_s"] = best, rates[best]["tokens_per_s"]
        Path(args.json).write_text(json.dumps(rates, indent=1) + "\n")
    if args.compare_generate:
        tg = time_generate(theta_hf, tok, probs, scfg)
        print(
            f"transformers generate: {tg:8.3f} s  -> bcoder sample is {tg / ts:.2f}x as fast; rank/generate = {tr / tg:.3f}"
        )


def time_generate(model, tok, probs, scfg: SamplingConfig) -> float:
    """transformers' own sampler on the same rows and batches (a baseline for the sampler)."""
    from bcoder_core.rl.sampling import encode_prompt

    rows = [encode_prompt(p, tok, scfg.max_source_tokens) for p in probs for _ in range(scfg.num_samples)]
    sampling = {"do_sample": True, "temperature": scfg.temperature, "top_p": scfg.top_p}
    t0 = time.perf_counter()
    for b0 in range(0, len(rows), scfg.batch_size):
        chunk = rows[b0 : b0 + scfg.batch_size]
        s = max(map(len, chunk))
        ids = torch.zeros(len(chunk), s, dtype=torch.long)
        am = torch.zeros(len(chunk), s, dtype=torch.long)
        for i, r in enumerate(chunk):
            ids[i, : len(r)] = torch.tensor(r)
            am[i, : len(r)] = 1
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=am, max_new_tokens=scfg.max_new_tokens, **sampling)
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
