"""LoRA adapters on one frozen causal LM (bcoder_core.model.lora): identity at init, switching adapters,
gradients, exact state round trips, and the two exports of θ (merged HF model, PEFT adapter directory).

Tiny random Llama / Qwen2 (tied embeddings) / GPT-2 (Conv1D) models; nothing is downloaded.
"""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, Qwen2Config

from bcoder_core.errors import BcoderError
from bcoder_core.model.lora import (
    active,
    adapter_parameters,
    adapter_state,
    attach_adapters,
    load_adapter_state,
    merged_state_dict,
    save_adapter,
    save_merged,
)

VOCAB = 300
FAMILIES = ["llama", "qwen2", "gpt2"]
NAMES = ("phi", "theta")
LORA = {"r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": "all-linear"}
_LAYOUT = {"vocab_size": VOCAB, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}


def config(family: str):
    if family == "gpt2":
        return GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=32, **_LAYOUT)
    shape = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
    if family == "llama":
        return LlamaConfig(num_key_value_heads=2, tie_word_embeddings=False, **shape, **_LAYOUT)
    return Qwen2Config(num_key_value_heads=2, tie_word_embeddings=True, **shape, **_LAYOUT)


def base_model(family: str, seed: int = 0):
    """The same random weights for the same (family, seed), without disturbing the test's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config(family)).eval()


def attached(family: str, seed: int = 0, **lora):
    return attach_adapters(base_model(family), NAMES, **{**LORA, **lora}, seed=seed)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread is faster, and far faster when other test runs share the CPUs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, VOCAB, (2, 9), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 6:] = 0  # one right-padded row
    input_ids[1, 6:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def perturb(peft_model) -> None:
    """Give every adapter a non-zero ΔW, different per adapter (lora_B starts at zero)."""
    with torch.no_grad():
        for i, name in enumerate(NAMES):
            g = torch.Generator().manual_seed(100 + i)
            for pname, p in peft_model.named_parameters():
                if f".lora_B.{name}." in pname:
                    p.copy_(0.1 * torch.randn(p.shape, generator=g))


def lora_names(peft_model, name: str) -> list[str]:
    return [n for n, _ in peft_model.named_parameters() if f".lora_A.{name}." in n or f".lora_B.{name}." in n]


# --- attach / identity --------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_every_adapter_starts_as_the_identity(family, batch):
    original = logits(base_model(family), batch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = attached(family)
    assert [str(w.message) for w in caught] == []  # no fan_in_fan_out / deprecation noise from peft
    assert model.active_adapter == "phi"
    for name in (None, *NAMES):
        with active(model, name):
            torch.testing.assert_close(logits(model, batch), original, atol=1e-6, rtol=0)
    # only adapter weights train; both adapters are trainable (which one runs is chosen by `active`)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(lora_names(model, "phi")) | set(lora_names(model, "theta"))
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)


def test_all_linear_targets_every_projection_but_not_the_lm_head():
    llama, gpt2 = attached("llama"), attached("gpt2")
    assert sorted(m.split(".")[-1] for m in llama.peft_config["theta"].target_modules) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"] * 2
    )
    # GPT-2's Conv1D layers are targeted, with fan_in_fan_out (its weights are stored transposed)
    assert sorted(m.split(".")[-1] for m in gpt2.peft_config["theta"].target_modules) == sorted(
        ["c_attn", "c_proj", "c_fc", "c_proj"] * 2
    )
    assert gpt2.peft_config["theta"].fan_in_fan_out and not llama.peft_config["theta"].fan_in_fan_out
    for model in (llama, gpt2):
        assert not any("lm_head" in n for n in lora_names(model, "theta"))


def test_adapter_parameters_are_the_adapters_lora_weights_in_a_stable_order():
    model = attached("llama")
    by_id = {id(p): n for n, p in model.named_parameters()}
    for name in NAMES:
        params = adapter_parameters(model, name)
        assert [by_id[id(p)] for p in params] == lora_names(model, name)
        assert [by_id[id(p)] for p in adapter_parameters(model, name)] == [by_id[id(p)] for p in params]
    assert len(adapter_parameters(model, "phi")) == 2 * 7 * 2  # A and B, 7 projections, 2 layers


def test_bad_arguments_are_bcoder_errors():
    with pytest.raises(BcoderError, match="distinct"):
        attach_adapters(base_model("llama"), ["phi", "phi"], **LORA)
    with pytest.raises(BcoderError, match="no adapter names"):
        attach_adapters(base_model("llama"), [], **LORA)
    with pytest.raises(BcoderError, match="r must be"):
        attach_adapters(base_model("llama"), NAMES, **{**LORA, "r": 0})
    model = attached("llama")
    with pytest.raises(BcoderError, match="already has adapters"):
        attach_adapters(model, ["psi"], **LORA)
    for call in (lambda: adapter_parameters(model, "psi"), lambda: adapter_state(model, "psi")):
        with pytest.raises(BcoderError, match="no LoRA adapter named 'psi'"):
            call()
    with pytest.raises(BcoderError, match="no LoRA adapter named 'psi'"), active(model, "psi"):
        pass


# --- switching adapters -------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_adapters_differ_and_disabled_is_still_the_base(family, batch):
    original = logits(base_model(family), batch)
    model = attached(family)
    perturb(model)
    with active(model, "theta"):
        theta = logits(model, batch)
    with active(model, "phi"):
        phi = logits(model, batch)
    with active(model, None):
        none = logits(model, batch)
    assert torch.equal(none, original)
    for a, b in ((theta, phi), (theta, none), (phi, none)):
        assert (a - b).abs().max() > 1e-3


def test_active_restores_the_previous_state_and_nests(batch):
    model = attached("llama")
    perturb(model)
    with active(model, "theta"):
        theta = logits(model, batch)
    with active(model, None):
        none = logits(model, batch)
    phi = logits(model, batch)  # attach leaves "phi" active
    flags = [p.requires_grad for p in model.parameters()]
    with active(model, None):
        with active(model, "theta"):
            assert torch.equal(logits(model, batch), theta)
            with active(model, None):
                assert torch.equal(logits(model, batch), none)
            assert torch.equal(logits(model, batch), theta)
        assert torch.equal(logits(model, batch), none)
    assert model.active_adapter == "phi"
    assert torch.equal(logits(model, batch), phi)
    with pytest.raises(RuntimeError, match="boom"), active(model, "theta"):
        raise RuntimeError("boom")
    assert torch.equal(logits(model, batch), phi)
    assert [p.requires_grad for p in model.parameters()] == flags  # switching never changes trainability


# --- gradients ----------------------------------------------------------------------------------


def _theta_loss(model, batch) -> torch.Tensor:
    out = model(**batch).logits
    return torch.nn.functional.cross_entropy(
        out[:, :-1].reshape(-1, VOCAB), batch["input_ids"][:, 1:].reshape(-1)
    )


def _grads(model, name) -> list[torch.Tensor | None]:
    return [p.grad for p in adapter_parameters(model, name)]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("backward_inside", [True, False])
def test_gradients_reach_only_the_active_adapter(family, backward_inside, batch):
    model = attached(family)
    perturb(model)  # with lora_B = 0 the gradient of lora_A would be zero
    with active(model, "theta"):
        loss = _theta_loss(model, batch)
        if backward_inside:
            loss.backward()
    if not backward_inside:
        loss.backward()
    theta = _grads(model, "theta")
    assert all(g is not None and g.abs().sum() > 0 for g in theta)
    assert all(g is None or not g.any() for g in _grads(model, "phi"))
    base = [p for n, p in model.named_parameters() if "lora_" not in n]
    assert base and all(not p.requires_grad and p.grad is None for p in base)
    with active(model, None):
        assert not model(**batch).logits.requires_grad  # θ_ckpt depends on no trainable weight


def test_gradient_checkpointing_with_backward_inside_the_block(batch):
    plain, ckpt = attached("llama"), attached("llama")
    perturb(plain)
    perturb(ckpt)
    ckpt.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    assert ckpt.get_base_model().is_activation_checkpointing
    for model in (plain, ckpt):
        model.train()
        with active(model, "theta"):
            _theta_loss(model, batch).backward()
    for a, b in zip(_grads(plain, "theta"), _grads(ckpt, "theta"), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert all(g is None for g in _grads(ckpt, "phi"))


# --- adapter state ------------------------------------------------------------------------------


def test_adapter_state_round_trip_is_bit_identical(batch):
    source = attached("qwen2")
    perturb(source)
    state = adapter_state(source, "theta")
    with active(source, "theta"):
        want = logits(source, batch)
    target = attached("qwen2", seed=1)  # different lora_A
    assert not all(torch.equal(state[k], v) for k, v in adapter_state(target, "theta").items())
    load_adapter_state(target, "theta", state)
    got = adapter_state(target, "theta")
    assert got.keys() == state.keys()
    assert all(torch.equal(got[k], state[k]) and got[k].dtype == state[k].dtype for k in state)
    with active(target, "theta"):
        assert torch.equal(logits(target, batch), want)
    # the keys carry no adapter name: θ's state can be loaded into another adapter slot
    load_adapter_state(target, "phi", state)
    with active(target, "phi"):
        assert torch.equal(logits(target, batch), want)
    # a snapshot, not a view of the live weights
    with torch.no_grad():
        adapter_parameters(source, "theta")[0].add_(1.0)
    assert not torch.equal(adapter_state(source, "theta")[next(iter(state))], state[next(iter(state))])


def test_mismatched_adapter_state_is_a_bcoder_error_and_changes_nothing():
    model = attached("llama")
    good = adapter_state(model, "theta")
    key = next(iter(good))
    bigger = adapter_state(attached("llama", r=8), "theta")
    bad = {
        "missing": ({k: v for k, v in good.items() if k != key}, "1 missing key"),
        "unexpected": ({**good, "base_model.model.extra.lora_A.weight": good[key]}, "1 unexpected key"),
        "shape": (bigger, "has shape"),
        "dtype": ({**good, key: good[key].double()}, "float64"),
        "type": ({**good, key: good[key].tolist()}, "not a tensor"),
    }
    for state, message in bad.values():
        with pytest.raises(BcoderError, match=message) as err:
            load_adapter_state(model, "theta", state)
        assert "\n" not in str(err.value)
    now = adapter_state(model, "theta")
    assert all(torch.equal(now[k], good[k]) for k in good)


# --- exports ------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_save_merged_is_a_plain_hf_model_with_theta(family, batch, tmp_path):
    model = attached(family)
    perturb(model)
    with active(model, "theta"):
        theta = logits(model, batch)
    phi, none = logits(model, batch), None
    with active(model, None):
        none = logits(model, batch)

    save_merged(model, "theta", tmp_path / "merged")

    # the live model is untouched
    assert torch.equal(logits(model, batch), phi)
    with active(model, "theta"):
        assert torch.equal(logits(model, batch), theta)
    with active(model, None):
        assert torch.equal(logits(model, batch), none)

    out = tmp_path / "merged"
    assert {"config.json", "generation_config.json", "model.safetensors"} <= {p.name for p in out.iterdir()}
    assert not (out / "adapter_config.json").exists()
    with safe_open(out / "model.safetensors", framework="pt") as f:
        keys = set(f.keys())
    tied = config(family).tie_word_embeddings
    assert keys == set(base_model(family).state_dict()) - ({"lm_head.weight"} if tied else set())
    loaded, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert json.loads((out / "config.json").read_text())["architectures"] == [type(loaded).__name__]
    torch.testing.assert_close(logits(loaded.eval(), batch), theta, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("family", "dtype"), [(f, torch.float32) for f in FAMILIES] + [("qwen2", torch.bfloat16)]
)
def test_merged_state_dict_equals_peft_merge_and_unload(family, dtype):
    model = attach_adapters(base_model(family).to(dtype), NAMES, **LORA)
    perturb(model)
    ours = merged_state_dict(model, "theta")
    assert {v.dtype for v in ours.values()} == {dtype}  # (peft keeps the adapters themselves in fp32)
    assert not any("base_layer" in k or "lora_" in k for k in ours)
    copied = copy.deepcopy(model)
    copied.set_adapter("theta")
    reference = copied.merge_and_unload().state_dict()
    if config(family).tie_word_embeddings:
        reference.pop("lm_head.weight")
    assert ours.keys() == reference.keys()
    assert all(torch.equal(ours[k], reference[k]) for k in ours)


@pytest.mark.parametrize("family", FAMILIES)
def test_save_adapter_loads_with_peft_on_the_base(family, batch, tmp_path):
    from peft import PeftModel

    model = attached(family)
    perturb(model)
    with active(model, "theta"):
        theta = logits(model, batch)
    out = tmp_path / "theta-adapter"
    save_adapter(model, "theta", out)
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["theta-adapter"]  # no temporary directory left behind
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
        loaded = PeftModel.from_pretrained(base_model(family), out).eval()
    torch.testing.assert_close(logits(loaded, batch), theta, atol=1e-6, rtol=0)
    with active(model, "phi"):
        assert not torch.allclose(logits(model, batch), theta, atol=1e-3)


# --- determinism --------------------------------------------------------------------------------


def test_same_seed_same_adapters_and_the_global_rng_is_untouched():
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    first = attached("gpt2", seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    second = attached("gpt2", seed=7)
    other = attached("gpt2", seed=8)
    for name in NAMES:
        a, b, c = (adapter_state(m, name) for m in (first, second, other))
        assert a.keys() == b.keys() == c.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert not all(torch.equal(a[k], c[k]) for k in a if ".lora_A." in k)
    # the two adapters are drawn one after the other, so they differ from each other too
    assert not torch.equal(adapter_parameters(first, "phi")[0], adapter_parameters(first, "theta")[0])
