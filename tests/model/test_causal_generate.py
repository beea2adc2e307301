"""The causal KV-cache sampling loop (``model/causal_generate.py``) on tiny random Llama, Qwen2 and GPT-2.

Nothing is downloaded: the models are built from configs. ``initializer_range`` is large so that a
random model's greedy output varies from step to step (with the default 0.02 it repeats one token),
which makes a wrong cache, mask or position show up as a different token.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, Qwen2Config

from bcoder_core.model.causal_generate import generate_causal, left_align, position_ids

PAD, BOS, EOS = 0, 1, 2
VOCAB = 300
_COMMON = {
    "vocab_size": VOCAB,
    "pad_token_id": PAD,
    "bos_token_id": BOS,
    "eos_token_id": EOS,
    "initializer_range": 0.3,
}
_SHAPE = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
}


def _config(family: str):
    if family == "llama":
        return LlamaConfig(**_SHAPE, **_COMMON)
    if family == "qwen2":
        return Qwen2Config(**_SHAPE, tie_word_embeddings=True, **_COMMON)
    return GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=128, **_COMMON)


@pytest.fixture(scope="module", params=["llama", "qwen2", "gpt2"])
def model(request):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(_config(request.param), dtype=torch.float32).eval()


def _prompts(lengths, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in lengths]


def _right_padded(prompts):
    s = max(map(len, prompts))
    ids = torch.full((len(prompts), s), PAD, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, : len(p)] = torch.tensor(p)
        mask[i, : len(p)] = 1
    return ids, mask


def _alone(prompt):
    ids = torch.tensor([prompt])
    return ids, torch.ones_like(ids)


def _hf_greedy(model, prompt, n, eos):
    ids, mask = _alone(prompt)
    with torch.inference_mode():
        out = model.generate(
            ids, attention_mask=mask, do_sample=False, max_new_tokens=n, eos_token_id=eos, pad_token_id=PAD
        )[0, len(prompt) :].tolist()
    if eos in out:
        return out[: out.index(eos)], True
    return out, False


def _uniforms(rows, steps, seed=7):
    return torch.rand(rows, steps, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _greedy(model, ids, mask, n, eos_ids):
    u = torch.zeros(ids.shape[0], n, dtype=torch.float64)
    return generate_causal(model, ids, mask, u, temperature=0.0, top_p=1.0, max_new_tokens=n, eos_ids=eos_ids)


# --------------------------------------------------------------------------------------------------
# left_align / position_ids


def test_left_align_right_left_and_mixed_padding():
    ids = torch.tensor(
        [
            [5, 6, 7, 0, 0],  # right
            [0, 0, 8, 9, 10],  # left
            [0, 11, 0, 12, 0],  # mixed
            [13, 14, 15, 16, 17],  # none
        ]
    )
    mask = (ids != 0).long()
    a_ids, a_mask = left_align(ids, mask)
    assert a_ids.tolist() == [
        [0, 0, 5, 6, 7],
        [0, 0, 8, 9, 10],
        [0, 0, 0, 11, 12],
        [13, 14, 15, 16, 17],
    ]
    assert a_mask.tolist() == [[0, 0, 1, 1, 1], [0, 0, 1, 1, 1], [0, 0, 0, 1, 1], [1, 1, 1, 1, 1]]
    assert a_mask.dtype == mask.dtype


def test_left_align_keeps_pad_ids_and_bool_masks():
    ids = torch.tensor([[4, 3, 99, 98]])  # pads with ids other than the real pad id keep their ids
    mask = torch.tensor([[True, True, False, False]])
    a_ids, a_mask = left_align(ids, mask)
    assert a_ids.tolist() == [[99, 98, 4, 3]]
    assert a_mask.tolist() == [[False, False, True, True]]


def test_position_ids_count_real_tokens_before():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    assert position_ids(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4], [0, 0, 0, 0, 0]]


# --------------------------------------------------------------------------------------------------
# Greedy: equal to Hugging Face generate on each prompt alone


def test_greedy_batched_right_padded_equals_hf_generate_alone(model):
    n = 10
    prompts = _prompts((5, 9, 2, 7))
    ids, mask = _right_padded(prompts)
    got = _greedy(model, ids, mask, n, {EOS})
    assert got == [_hf_greedy(model, p, n, EOS) for p in prompts]
    # An EOS that does occur: a token of row 0's greedy output ends rows early, as in HF generate.
    eos = got[0][0][3]
    got = _greedy(model, ids, mask, n, {eos})
    want = [_hf_greedy(model, p, n, eos) for p in prompts]
    assert got == want
    assert got[0][1] and len(got[0][0]) <= 3


# --------------------------------------------------------------------------------------------------
# Sampling with rows_of_prompt: a row's output does not depend on its batch


@pytest.mark.parametrize(("temperature", "top_p"), [(0.8, 0.9), (1.0, 1.0)])
def test_rows_of_prompt_are_batch_independent(model, temperature, top_p):
    n = 10
    prompts = _prompts((6, 3, 8), seed=2)
    rows = [2, 0, 1, 0, 2, 2, 1]
    u = _uniforms(len(rows), n + 3)  # more steps than needed: only the first n are read
    ids, mask = _right_padded(prompts)

    def run(eos_ids):
        batched = generate_causal(
            model,
            ids,
            mask,
            u,
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=n,
            eos_ids=eos_ids,
            rows_of_prompt=rows,
        )
        alone = [
            generate_causal(
                model,
                *_alone(prompts[k]),
                u[b : b + 1],
                temperature=temperature,
                top_p=top_p,
                max_new_tokens=n,
                eos_ids=eos_ids,
            )[0]
            for b, k in enumerate(rows)
        ]
        assert batched == alone
        return batched

    free = run(())
    assert all(len(t) == n and not e for t, e in free)
    assert len({tuple(t) for t, _ in free}) > 3  # the uniforms matter: rows of one prompt differ
    # EOS ids taken from the outputs, so that rows end at different steps and leave the batch.
    ended = run({free[0][0][2], free[4][0][6]})
    assert ended[0][1] and ended[4][1]
    assert len({len(t) for t, _ in ended}) > 1


def test_rows_of_prompt_as_tensor_and_left_padded_input(model):
    n = 6
    prompts = _prompts((4, 7), seed=3)
    ids, mask = _right_padded(prompts)
    l_ids, l_mask = left_align(ids, mask)
    u = _uniforms(3, n)
    kw = {"temperature": 0.8, "top_p": 0.9, "max_new_tokens": n, "eos_ids": {EOS}}
    a = generate_causal(model, ids, mask, u, rows_of_prompt=[1, 0, 1], **kw)
    b = generate_causal(model, l_ids, l_mask, u, rows_of_prompt=torch.tensor([1, 0, 1]), **kw)
    assert a == b


# --------------------------------------------------------------------------------------------------
# EOS sets and the max_new_tokens cut


def test_two_eos_ids_either_ends_a_row(model):
    n = 10
    prompts = _prompts((5, 8, 3), seed=4)
    ids, mask = _right_padded(prompts)
    free = _greedy(model, ids, mask, n, ())
    assert all(len(t) == n and not e for t, e in free)  # no EOS: cut at max_new_tokens
    a, b = free[0][0][2], free[1][0][4]
    got = _greedy(model, ids, mask, n, [a, b])
    for (toks, _), out in zip(free, got, strict=True):
        cut = next((i for i, tok in enumerate(toks) if tok in (a, b)), None)
        assert out == ((toks[:cut], True) if cut is not None else (toks, False))
    assert got[0][1] and got[1][1]


def test_max_new_tokens_cut_is_a_prefix(model):
    prompts = _prompts((5, 8), seed=5)
    ids, mask = _right_padded(prompts)
    long = _greedy(model, ids, mask, 9, ())
    short = _greedy(model, ids, mask, 3, ())
    assert short == [(t[:3], False) for t, _ in long]
    assert _greedy(model, ids, mask, 0, {EOS}) == [([], False), ([], False)]


# --------------------------------------------------------------------------------------------------
# Wrappers and errors


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")  # peft calls it
def test_peft_lora_model_equals_its_own_hf_generate():
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(_config("llama"), dtype=torch.float32).eval()
    lora = peft.LoraConfig(
        task_type="CAUSAL_LM", r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    wrapped = peft.get_peft_model(base, lora).eval()
    n = 8
    prompts = _prompts((4, 9), seed=6)
    got = _greedy(wrapped, *_right_padded(prompts), n, {EOS})
    assert got == [_hf_greedy(wrapped, p, n, EOS) for p in prompts]
    with wrapped.disable_adapter():  # the adapter is live: without it the output differs
        assert _greedy(wrapped, *_right_padded(prompts), n, {EOS}) != got


def test_bad_inputs_raise(model):
    ids, mask = _right_padded(_prompts((3, 4)))
    kw = {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": 4, "eos_ids": {EOS}}
    with pytest.raises(ValueError, match="uniforms"):
        generate_causal(model, ids, mask, _uniforms(2, 3), **kw)
    with pytest.raises(ValueError, match="uniforms"):
        generate_causal(model, ids, mask, _uniforms(2, 4), rows_of_prompt=[0, 1, 1], **kw)
    mask[1] = 0
    with pytest.raises(ValueError, match="no real token"):
        generate_causal(model, ids, mask, _uniforms(2, 4), **kw)
