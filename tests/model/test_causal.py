"""CausalQModel (``model/causal.py``): the causal-LM family's parts by stage, its policy at init, padding,
saving and loading, tokenisation and sampling — the causal counterpart of ``test_model.py``.

Tiny random Llama, Qwen2 (tied embeddings) and GPT-2 (absolute positions) checkpoints with full
fine-tuning, and Llama with LoRA adapters (``helpers.models``); nothing is downloaded. References are
plain transformers runs of each row alone, without padding.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers.models import LORA, VOCAB, causal_config, load, make_batch, make_checkpoint
from helpers.rl import make_problems, one_thread, tiny_t5
from transformers import AutoModelForCausalLM

from bcoder_core.errors import BcoderError
from bcoder_core.model.causal import FAMILY, CausalQModel
from bcoder_core.model.causal_generate import left_align, position_ids
from bcoder_core.model.family import family_for_checkpoint
from bcoder_core.model.qmodel import (
    HEADS_WEIGHTS,
    MODEL_ROLES,
    PHI_CONFIG,
    PHI_HEAD_INIT_BIAS,
    PHI_WEIGHTS,
    BCoderModel,
)
from bcoder_core.model.t5 import FAMILY as T5_FAMILY
from bcoder_core.problems import Problem
from bcoder_core.prompts import build_prompt
from bcoder_core.rl.bounds import R_MAX, bound

VARIANTS = ("llama", "qwen2", "gpt2", "llama-lora")
FULL = ("llama", "qwen2", "gpt2")
BACKBONE = {"llama": "LlamaModel", "qwen2": "Qwen2Model", "gpt2": "GPT2Model", "llama-lora": "LlamaModel"}
CHAT_TEMPLATE = (
    "{% for m in messages %}<|user|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("causal")
    return {v: make_checkpoint(root, variant=v) for v in VARIANTS}


@pytest.fixture(scope="module")
def batch():
    return make_batch()


@pytest.fixture(scope="module")
def refs(ckpts, batch):
    """Per variant, the plain transformers logits of each row alone (see :func:`hf_rows`)."""
    return {v: hf_rows(AutoModelForCausalLM.from_pretrained(str(c)), batch) for v, c in ckpts.items()}


# ------------------------------------------------------------------------------------------ helpers
def row(batch, r):
    """Row r's prompt (unpadded) and program (ending in EOS) as lists."""
    prompt = batch["input_ids"][r][batch["attention_mask"][r].bool()].tolist()
    labels = batch["labels"][r]
    return prompt, labels[labels != -100].tolist()


def hf_rows(lm, batch):
    """Logits [n_r, V] at row r's program positions: the LM on [prompt; program[:-1]] alone, no padding."""
    lm = lm.eval()
    out = []
    for r in range(batch["input_ids"].shape[0]):
        prompt, program = row(batch, r)
        with torch.no_grad():
            logits = lm(input_ids=torch.tensor([prompt + program[:-1]])).logits[0]
        out.append(logits[len(prompt) - 1 :])
    return out


def assert_rows_close(logits, rows, tol=1e-5):
    """``logits`` [B, T, V] equal the per-row references at each row's program positions."""
    assert logits.shape[:2] == (len(rows), max(r.shape[0] for r in rows))
    for r, ref in enumerate(rows):
        torch.testing.assert_close(logits[r, : ref.shape[0]], ref, rtol=tol, atol=tol)


def theta_out(model, batch, ids=None, mask=None):
    ids = batch["input_ids"] if ids is None else ids
    mask = batch["attention_mask"] if mask is None else mask
    with torch.no_grad():
        return model.theta_outputs(model.encode(ids, mask), mask, batch["labels"])


def phi_out(model, batch, ids=None, mask=None):
    ids = batch["input_ids"] if ids is None else ids
    mask = batch["attention_mask"] if mask is None else mask
    with torch.no_grad():
        return model.phi_values(model.encode(ids, mask), mask, batch["labels"])


def ckpt_out(model, batch):
    return model.ckpt_logits(model.encode(batch["input_ids"], batch["attention_mask"]), batch["attention_mask"],
                             batch["labels"])  # fmt: skip


def names(params, model):
    ids = {id(p) for p in params}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def perturb(params, seed=0, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=g) * scale)


def freeze(model):
    """Trainable parameters off (the reference for a frozen reload: same kernels as a frozen model)."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def pad_right(ids, mask, k, seed=0):
    """``k`` more pad columns on the right, holding random (masked) ids: nothing may read them."""
    junk = torch.randint(5, VOCAB, (ids.shape[0], k), generator=torch.Generator().manual_seed(seed))
    return torch.cat([ids, junk], 1), torch.cat([mask, torch.zeros_like(junk)], 1)


def write_config(directory: Path, fields: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(fields))
    return directory


# --------------------------------------------------------------------------------- 1. the family
@pytest.mark.parametrize("variant", FULL)
def test_causal_checkpoints_are_the_causal_family(ckpts, variant):
    assert family_for_checkpoint(ckpts[variant]) is FAMILY
    for stage in MODEL_ROLES:
        model = BCoderModel.from_pretrained(str(ckpts[variant]), stage=stage)
        assert isinstance(model, CausalQModel)
        assert (model.family, model.stage) == ("causal", stage)
        assert (model.vocab_size, model.pad_token_id) == (VOCAB, 0)


def test_t5_checkpoint_is_the_t5_family(tmp_path):
    assert family_for_checkpoint(make_checkpoint(tmp_path)) is T5_FAMILY


@pytest.mark.parametrize("kind", ["bart", "vit"])
def test_unsupported_model_type_is_one_error_naming_it(tmp_path, kind):
    from transformers import BartConfig

    # a real BART config.json (an encoder-decoder), and a type with no causal LM at all
    fields = BartConfig(d_model=16).to_dict() if kind == "bart" else {"model_type": "vit"}
    d = write_config(tmp_path / kind, fields)
    for call in (lambda: family_for_checkpoint(d), lambda: BCoderModel.from_pretrained(d, stage="theta")):
        with pytest.raises(BcoderError, match=f"model type '{kind}' is not supported") as err:
            call()
        assert "\n" not in str(err.value) and str(d) in str(err.value)


def test_encoder_only_checkpoint_is_refused(tmp_path):
    from transformers import BertConfig

    cfg = BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32)  # fmt: skip
    d = write_config(tmp_path / "bert", {**cfg.to_dict(), "architectures": ["BertForMaskedLM"]})
    with pytest.raises(BcoderError, match="model type 'bert' is not supported"):
        family_for_checkpoint(d)


def test_a_directory_without_config_json_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    for call in (
        lambda: family_for_checkpoint(tmp_path / "empty"),
        lambda: BCoderModel.from_pretrained(tmp_path / "empty", stage="eval"),
    ):
        with pytest.raises(BcoderError, match=r"no config\.json"):
            call()
    with pytest.raises(BcoderError, match="no such directory"):
        family_for_checkpoint(tmp_path / "missing")


# ------------------------------------------------------------------------ 2. parts and parameters
@pytest.mark.parametrize("stage", MODEL_ROLES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_parts_and_trainable_parameters(ckpts, variant, stage):
    lora = variant.endswith("-lora") and stage in ("phi", "theta")
    model = load(ckpts[variant], stage)
    trainable = model.trainable_parameters()
    got = names(trainable, model)
    everything = {n for n, _ in model.named_parameters()}
    # requires_grad is set on exactly the trainable set, and trainable_parameters lists no duplicate
    assert {n for n, p in model.named_parameters() if p.requires_grad} == got
    assert len({id(p) for p in trainable}) == len(trainable)
    heads = {"phi_head": model.phi_head, "h1": model.h1, "h2": model.h2}
    present = {"sft": [], "annotate": [], "phi": ["phi_head"], "theta": ["h1", "h2"], "eval": ["h1", "h2"]}
    assert {k for k, v in heads.items() if v is not None} == set(present[stage])
    assert not model.has_phi or stage == "phi"
    if stage == "sft":
        assert got == everything and model.lm is not None and model.phi_net is None
        assert not hasattr(model.lm, "peft_config")
    elif stage in ("annotate", "eval"):
        assert got == set() and model.lm is not None and not hasattr(model.lm, "peft_config")
    elif stage == "phi" and not lora:
        assert model.lm is None and type(model.phi_net).__name__ == BACKBONE[variant]
        assert got == everything == {n for n in everything if n.startswith(("phi_net.", "phi_head."))}
        assert not any("lm_head" in n for n in everything)
        with pytest.raises(BcoderError, match="no language model"):
            _ = model.base_lm
    elif stage == "theta" and not lora:
        lm = {f"lm.{n}" for n, _ in model.lm.named_parameters()}
        assert got == lm | {"h1.weight", "h1.bias"} and everything == got | {"h2.weight", "h2.bias"}
        assert any("embed" in n or "wte" in n for n in got)  # full fine-tuning trains the embedding too
    else:  # LoRA: only the stage's own adapter and head
        adapter, head = ("phi", "phi_head.") if stage == "phi" else ("theta", "h1.")
        assert model.phi_net is None and set(model.lm.peft_config) == {adapter}
        net = {n for n in got if not n.startswith(head)}
        assert net and all(".lora_" in n and f".{adapter}." in n for n in net)
        assert {n for n in everything if ".lora_" in n} == net
        assert got - net == {f"{head}weight", f"{head}bias"}
        # all-linear: every projection of both layers gets A and B (7 per Llama layer), not the LM head
        assert len(net) == 2 * 7 * 2 and not any("lm_head" in n for n in net)
    if stage in ("annotate", "eval"):
        with pytest.raises(BcoderError, match=r"no (phi|theta) parameters"):
            model.trainable_parameters("theta" if stage == "annotate" else "phi")


def test_sft_with_lora_and_theta_with_phi_path_are_refused(ckpts, tmp_path):
    with pytest.raises(BcoderError, match="sft stage fine-tunes the whole model"):
        BCoderModel.from_pretrained(ckpts["llama"], stage="sft", lora=LORA)
    with pytest.raises(BcoderError, match="v_phi"):
        BCoderModel.from_pretrained(ckpts["llama"], stage="theta", phi_path=tmp_path)
    with pytest.raises(BcoderError, match="stage"):
        BCoderModel.from_pretrained(ckpts["llama"], stage="bogus")
    with pytest.raises(BcoderError, match=r"no phi\.safetensors"):
        BCoderModel.from_pretrained(ckpts["llama"], stage="eval", phi_path=tmp_path)


@pytest.mark.parametrize("variant", ["llama", "gpt2"])
def test_frozen_parts_stay_in_eval_mode_and_dropout_is_overridden(ckpts, batch, variant, tmp_path):
    ckpt = ckpts[variant]
    load(ckpt, "phi").save_pretrained(tmp_path / "phi")
    for stage in ("annotate", "eval"):
        model = BCoderModel.from_pretrained(ckpt, stage=stage, phi_path=tmp_path / "phi", dropout=0.5).train()
        assert model.training and model.phi_net is not None
        assert not any(m.training for m in [*model.lm.modules(), *model.phi_net.modules()])
        if stage == "annotate":  # deterministic although train() was called and dropout is 0.5
            assert torch.equal(ckpt_out(model, batch), ckpt_out(model, batch))
        assert torch.equal(phi_out(model, batch), phi_out(model, batch))
    theta = load(ckpt, "theta", dropout=0.5).train()
    assert theta.lm.training and all(m.training for m in theta.lm.modules())
    assert not torch.equal(theta_out(theta, batch)[0], theta_out(theta, batch)[0])  # dropout is on
    theta.eval()
    assert torch.equal(theta_out(theta, batch)[0], theta_out(theta, batch)[0])


# ------------------------------------------------------------------------ 3. the policy at init
@pytest.mark.parametrize("variant", VARIANTS)
def test_checkpoint_policy_at_init(ckpts, refs, batch, variant):
    """ℓ_θ (theta at init), ℓ_ckpt (annotate), sft's logits and plain transformers agree row by row.

    make_batch's prompts have 0, 1 and 2 pads: left alignment and mask-derived position ids make each
    padded row compute what the row computes alone.
    """
    ckpt, ref = ckpts[variant], refs[variant]
    assert len({len(row(batch, r)[0]) for r in range(4)}) == 3  # mixed prompt padding
    theta = load(ckpt, "theta").eval()
    logits, u_r = theta_out(theta, batch)
    assert logits.shape == (*batch["labels"].shape, VOCAB)
    assert_rows_close(logits, ref)
    assert (u_r == 0).all() and u_r.shape == batch["labels"].shape
    ann = load(ckpt, "annotate")
    ckpt_logits = ckpt_out(ann, batch)
    assert_rows_close(ckpt_logits, ref)
    torch.testing.assert_close(ckpt_logits, logits, rtol=1e-6, atol=1e-6)
    sft = load(ckpt, "sft").eval()
    with torch.no_grad():
        assert_rows_close(sft.sft_logits(batch["input_ids"], batch["attention_mask"], batch["labels"]), ref)
    # the forward() entry point (DDP) gives the same numbers
    with torch.no_grad():
        out = theta("theta", batch["input_ids"], batch["attention_mask"], batch["labels"])
    assert torch.equal(out["logits"], logits) and torch.equal(out["u_r"], u_r)


@pytest.mark.parametrize("variant", VARIANTS)
def test_phi_starts_at_its_optimistic_value(ckpts, batch, variant):
    phi = load(ckpts[variant], "phi").eval()
    u = phi_out(phi, batch)
    assert u.shape == batch["labels"].shape
    assert (u == torch.tensor(PHI_HEAD_INIT_BIAS)).all()
    want = R_MAX - math.log(math.cosh(PHI_HEAD_INIT_BIAS / 2))
    torch.testing.assert_close(bound(u), torch.full_like(u, want), rtol=0, atol=1e-6)
    assert (bound(u) < R_MAX).all()


# --------------------------------------------------------------------------- 4. prompt padding
@pytest.mark.parametrize("variant", VARIANTS)
def test_outputs_do_not_depend_on_prompt_padding(ckpts, batch, variant):
    theta = load(ckpts[variant], "theta").eval()
    perturb(theta.trainable_parameters())  # θ ≠ θ_ckpt and u_r ≠ 0
    phi = load(ckpts[variant], "phi").eval()
    perturb(phi.trainable_parameters(), scale=0.1)
    logits, u_r = theta_out(theta, batch)
    u = phi_out(phi, batch)
    assert (u_r != 0).all()
    ids, mask = batch["input_ids"], batch["attention_mask"]
    # left-padded prompts (as a causal model's store may hold them): the same left-aligned input
    left_ids, left_mask = left_align(ids, mask)
    assert not torch.equal(left_mask, mask)
    l2, u_r2 = theta_out(theta, batch, left_ids, left_mask)
    assert torch.equal(l2, logits) and torch.equal(u_r2, u_r)
    assert torch.equal(phi_out(phi, batch, left_ids, left_mask), u)
    # more pad columns (holding junk ids under a zero mask): fp32 rounding only
    drift = {}
    for k in (1, 3, 40):
        more_ids, more_mask = pad_right(ids, mask, k, seed=k)
        l3, u_r3 = theta_out(theta, batch, more_ids, more_mask)
        u3 = phi_out(phi, batch, more_ids, more_mask)
        drift[k] = max(float((l3 - logits).abs().max()), float((u_r3 - u_r).abs().max()),
                       float((u3 - u).abs().max()))  # fmt: skip
    assert drift[1] < 1e-5 and drift[3] < 1e-5, drift
    assert drift[40] < 1e-4, drift  # measured ~3e-6 on every variant


@pytest.mark.parametrize("variant", FULL)
def test_position_ids_are_what_makes_left_padding_harmless(ckpts, batch, variant):
    """A left-padded row with the mask alone shifts its positions by the pad count: GPT-2's absolute
    position embeddings then read other rows of the table and its logits change completely."""
    lm = AutoModelForCausalLM.from_pretrained(str(ckpts[variant])).eval()
    prompt = torch.tensor([row(batch, 0)[0]])
    ids = torch.cat([torch.zeros(1, 40, dtype=torch.long), prompt], 1)
    mask = torch.cat([torch.zeros(1, 40, dtype=torch.long), torch.ones_like(prompt)], 1)
    with torch.no_grad():
        alone = lm(input_ids=prompt).logits[0, -1]
        with_pos = lm(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits[0, -1]
        mask_only = lm(input_ids=ids, attention_mask=mask).logits[0, -1]
    torch.testing.assert_close(with_pos, alone, rtol=1e-5, atol=1e-5)
    if variant == "gpt2":
        assert float((mask_only - alone).abs().max()) > 0.1
    else:  # rotary positions: a common shift cancels in q·k up to rounding (bf16 shows it: ~4e-2)
        torch.testing.assert_close(mask_only, alone, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------- 5. saving and loading
@pytest.mark.parametrize("variant", FULL)
def test_saved_full_theta_is_a_plain_hf_model(ckpts, batch, variant, tmp_path):
    theta = load(ckpts[variant], "theta").eval()
    theta.alpha = 0.5
    perturb(theta.trainable_parameters())
    logits, u_r = theta_out(theta, batch)
    assert (u_r != 0).any()
    out = tmp_path / "theta"
    theta.save_pretrained(out)
    assert {"config.json", "model.safetensors", HEADS_WEIGHTS} <= {p.name for p in out.iterdir()}
    assert not (out / "adapter").exists()
    hf = AutoModelForCausalLM.from_pretrained(str(out))
    assert_rows_close(logits, hf_rows(hf, batch))
    base = AutoModelForCausalLM.from_pretrained(str(ckpts[variant]))
    emb = base.get_input_embeddings().weight
    assert not torch.equal(hf.get_input_embeddings().weight, emb)  # the embedding trained too
    for stage in ("eval", "theta"):
        again = BCoderModel.from_pretrained(out, stage=stage).eval()
        logits2, u_r2 = theta_out(again, batch)
        assert torch.equal(logits2, logits) and torch.equal(u_r2, u_r), stage
        assert again.alpha == 0.5
    assert family_for_checkpoint(out) is FAMILY


# peft's own PeftModel.from_pretrained probes a deprecated transformers attribute
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_saved_lora_theta_merged_and_as_a_peft_adapter(ckpts, batch, tmp_path, monkeypatch):
    from peft import PeftModel
    from safetensors import safe_open

    ckpt = ckpts["llama-lora"]
    # loaded through a relative path: the adapter must still name the base absolutely
    monkeypatch.chdir(Path(ckpt).parent)
    theta = load(make_relative(ckpt), "theta").eval()
    perturb(theta.trainable_parameters())
    logits, u_r = theta_out(theta, batch)
    out = tmp_path / "theta"
    theta.save_pretrained(out)
    monkeypatch.chdir(tmp_path)
    adapter_files = {p.name for p in (out / "adapter").iterdir()}
    assert adapter_files >= {"adapter_config.json", "adapter_model.safetensors"}
    assert (out / HEADS_WEIGHTS).is_file()
    meta = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert meta["base_model_name_or_path"] == str(Path(ckpt).resolve())
    assert Path(meta["base_model_name_or_path"]).is_absolute()
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert not any("lora_" in k or "base_layer" in k for k in f.keys())  # noqa: SIM118
    # the merged model: what sample reads
    assert_rows_close(logits, hf_rows(AutoModelForCausalLM.from_pretrained(str(out)), batch))
    # the adapter on a fresh copy of the base, with peft alone
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(ckpt)), str(out / "adapter"))
    assert_rows_close(logits, hf_rows(peft, batch))
    # the base is untouched: the plain checkpoint is still θ_ckpt, not θ
    plain = hf_rows(AutoModelForCausalLM.from_pretrained(str(ckpt)), batch)
    assert float((logits[0, : plain[0].shape[0]] - plain[0]).abs().max()) > 1e-3
    for stage in ("eval", "theta"):
        again = BCoderModel.from_pretrained(out, stage=stage).eval()
        logits2, u_r2 = theta_out(again, batch)
        assert torch.equal(logits2, logits) and torch.equal(u_r2, u_r), stage
        assert set(again.lm.peft_config) == {"theta"}
        if stage == "theta":  # resumed: θ's adapter trains again, the base stays frozen
            got = names(again.trainable_parameters(), again)
            assert got and all(".lora_" in n or n.startswith("h1.") for n in got)
            assert {n for n, p in again.named_parameters() if p.requires_grad} == got


def make_relative(ckpt):
    rel = type(ckpt)(Path(ckpt).name)
    rel.variant = ckpt.variant
    return rel


@pytest.fixture(scope="module")
def lora_theta_dir(ckpts, batch, tmp_path_factory):
    """A saved LoRA θ (perturbed) of the llama-lora checkpoint and its logits."""
    theta = load(ckpts["llama-lora"], "theta").eval()
    perturb(theta.trainable_parameters(), seed=3)
    out = tmp_path_factory.mktemp("lora-theta") / "theta"
    theta.save_pretrained(out)
    return out, theta_out(theta, batch)[0]


@pytest.mark.parametrize("variant", VARIANTS)
def test_phi_save_and_load_everywhere(ckpts, refs, batch, variant, tmp_path, lora_theta_dir):
    ckpt = ckpts[variant]
    phi = load(ckpt, "phi").eval()
    perturb(phi.trainable_parameters(), scale=0.1)
    u_train = phi_out(phi, batch)
    assert (u_train != PHI_HEAD_INIT_BIAS).all()
    phi.save_pretrained(tmp_path / "phi")
    meta = json.loads((tmp_path / "phi" / PHI_CONFIG).read_text())
    assert (meta["format"], meta["family"], meta["d_model"], meta["vocab_size"]) == ("bcoder-phi/1", "causal", 32,
                                                                                     VOCAB)  # fmt: skip
    from safetensors import safe_open

    with safe_open(str(tmp_path / "phi" / PHI_WEIGHTS), framework="pt") as f:
        keys = set(f.keys())
    prefix = "adapter." if ckpt.lora else "decoder."
    assert {"head.weight", "head.bias"} <= keys and all(k.startswith((prefix, "head.")) for k in keys)
    if ckpt.lora:
        assert meta["lora"]["r"] == LORA["r"] and meta["base_embedding_fingerprint"] is not None
        assert all(".lora_" in k for k in keys - {"head.weight", "head.bias"})
    else:
        assert meta["lora"] is None and meta["base_embedding_fingerprint"] is None
    # resumed φ: identical, and trainable again
    resumed = load(ckpt, "phi", phi_path=tmp_path / "phi").eval()
    assert torch.equal(phi_out(resumed, batch), u_train)
    assert names(resumed.trainable_parameters(), resumed) == names(phi.trainable_parameters(), phi)
    u = phi_out(freeze(phi), batch)  # frozen references: the kernels a frozen model runs
    torch.testing.assert_close(u, u_train, rtol=1e-6, atol=1e-6)
    # annotate: v_phi next to the checkpoint's logits (still θ_ckpt's)
    ann = BCoderModel.from_pretrained(ckpt, stage="annotate", phi_path=tmp_path / "phi").eval()
    assert ann.has_phi and not any(p.requires_grad for p in ann.parameters())
    assert torch.equal(phi_out(ann, batch), u)
    assert_rows_close(ckpt_out(ann, batch), refs[variant])
    # eval: ranking with θ and φ (a LoRA φ needs a LoRA θ of the same base)
    theta_dir, theta_logits = lora_theta_dir if ckpt.lora else (ckpt, None)
    ev = BCoderModel.from_pretrained(theta_dir, stage="eval", phi_path=tmp_path / "phi").eval()
    assert ev.has_phi and not any(p.requires_grad for p in ev.parameters())
    assert torch.equal(phi_out(ev, batch), u)
    if theta_logits is not None:
        assert set(ev.lm.peft_config) == {"theta", "phi"}
        assert torch.equal(theta_out(ev, batch)[0], theta_logits)
    with torch.no_grad():
        fwd = ev("eval", batch["input_ids"], batch["attention_mask"], batch["labels"])
    assert torch.equal(fwd["u_phi"], u)
    # eval saves θ and φ side by side
    ev.save_pretrained(tmp_path / "both")
    ev2 = BCoderModel.from_pretrained(tmp_path / "both", stage="eval", phi_path=tmp_path / "both").eval()
    assert torch.equal(phi_out(ev2, batch), u)


def test_full_phi_carries_its_own_network(ckpts, batch, tmp_path, lora_theta_dir):
    """A full φ joins any checkpoint of the same vocabulary (a LoRA θ's too): its values do not depend
    on the base."""
    phi = load(ckpts["llama"], "phi").eval()
    perturb(phi.trainable_parameters(), scale=0.1)
    phi.save_pretrained(tmp_path / "phi")
    u = phi_out(freeze(phi), batch)
    other = make_checkpoint(tmp_path, seed=1, variant="llama")
    ann = BCoderModel.from_pretrained(other, stage="annotate", phi_path=tmp_path / "phi")
    assert torch.equal(phi_out(ann, batch), u)
    theta_dir, theta_logits = lora_theta_dir
    ev = BCoderModel.from_pretrained(theta_dir, stage="eval", phi_path=tmp_path / "phi").eval()
    assert set(ev.lm.peft_config) == {"theta"} and type(ev.phi_net).__name__ == "LlamaModel"
    assert torch.equal(phi_out(ev, batch), u) and torch.equal(theta_out(ev, batch)[0], theta_logits)
    bigger = make_checkpoint(tmp_path, seed=1, variant="llama", vocab_size=VOCAB + 3)
    with pytest.raises(BcoderError, match="another vocabulary"):
        BCoderModel.from_pretrained(bigger, stage="annotate", phi_path=tmp_path / "phi")


def test_lora_phi_on_another_base_is_refused(ckpts, tmp_path):
    load(ckpts["llama-lora"], "phi").save_pretrained(tmp_path / "phi")
    other = make_checkpoint(tmp_path, seed=1, variant="llama-lora")
    for stage in ("annotate", "phi"):
        with pytest.raises(BcoderError, match="different checkpoint"):
            load(other, stage, phi_path=tmp_path / "phi")


def test_lora_phi_with_a_full_theta_in_eval_is_refused(ckpts, tmp_path):
    load(ckpts["llama-lora"], "phi").save_pretrained(tmp_path / "phi")
    # a full θ of the same checkpoint (no adapter/ directory)
    BCoderModel.from_pretrained(ckpts["llama-lora"], stage="theta").save_pretrained(tmp_path / "theta")
    for theta in (ckpts["llama-lora"], tmp_path / "theta"):
        with pytest.raises(BcoderError, match="LoRA adapter of the checkpoint; rank it with a LoRA") as e:
            BCoderModel.from_pretrained(theta, stage="eval", phi_path=tmp_path / "phi")
        assert "\n" not in str(e.value)
    # and resuming φ with other LoRA settings than it was trained with
    with pytest.raises(BcoderError, match="disagree on LoRA"):
        BCoderModel.from_pretrained(ckpts["llama-lora"], stage="phi", phi_path=tmp_path / "phi")


def test_t5_phi_cannot_join_a_causal_lm(ckpts, tmp_path):
    t5 = make_checkpoint(tmp_path)
    BCoderModel.from_pretrained(t5, stage="phi").save_pretrained(tmp_path / "phi")
    with pytest.raises(BcoderError, match="a t5 phi cannot join a causal LM"):
        BCoderModel.from_pretrained(ckpts["llama"], stage="annotate", phi_path=tmp_path / "phi")


@pytest.mark.parametrize("variant", FULL)
def test_sft_trains_everything_and_saves_a_plain_hf_model(ckpts, batch, variant, tmp_path):
    sft = load(ckpts[variant], "sft").eval()
    perturb(sft.trainable_parameters())
    with torch.no_grad():
        logits = sft.sft_logits(batch["input_ids"], batch["attention_mask"], batch["labels"])
    sft.save_pretrained(tmp_path / "sft")
    assert not (tmp_path / "sft" / HEADS_WEIGHTS).exists()
    assert_rows_close(logits, hf_rows(AutoModelForCausalLM.from_pretrained(str(tmp_path / "sft")), batch))
    with pytest.raises(BcoderError, match="no sft model"):
        load(ckpts[variant], "theta").save_pretrained(tmp_path / "x", "sft")


def test_generation_model(ckpts):
    theta = load(ckpts["llama"], "theta").train()
    view = theta.generation_model("theta")
    assert view is theta.lm and not view.training
    with pytest.raises(BcoderError, match="merged export"):
        load(ckpts["llama-lora"], "theta").generation_model("theta")
    with pytest.raises(BcoderError, match="no theta to generate"):
        load(ckpts["llama"], "phi").generation_model("theta")


# ------------------------------------------------------------------------------- 6. tokenisation
@pytest.fixture(scope="module")
def problems():
    return make_problems(3)


@pytest.fixture(scope="module", params=["tiny-bpe", "codet5"])
def tok(request, problems):
    from bcoder_core.model.tokenizer import load_tokenizer, train_tiny_tokenizer

    if request.param == "codet5":
        return load_tokenizer("codet5")
    texts = [p.question for p in problems] + [s for p in problems for s in p.solutions]
    return train_tiny_tokenizer(texts, vocab_size=400)


def long_problem(n_words=400):
    return Problem(id="toy/train/long", source="toy", split="train", question="word " * n_words, format="stdin",
                   tests={"inputs": ["1\n"], "outputs": ["1\n"]})  # fmt: skip


def decode(tok, ids):
    return tok.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


def with_template(tok):
    import copy

    tok = copy.deepcopy(tok)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def test_completion_prompt_ids(tok, problems):
    p = problems[1]
    ids = FAMILY.prompt_ids(p, tok, 600, "completion")
    assert ids[0] == tok.bos_token_id and tok.eos_token_id not in ids
    assert decode(tok, ids[1:]) == build_prompt(p, tok, 600)
    # a long question is cut; the format line and ANSWER: stay, within the budget
    ids = FAMILY.prompt_ids(long_problem(), tok, 60, "completion")
    text = decode(tok, ids[1:])
    assert len(ids) <= 60 and ids[-1] != tok.eos_token_id
    assert text.startswith("\nQUESTION:\nword word")
    assert text.endswith("\nUse Standard Input format\nANSWER:\n")
    assert text.count("word") < 400


def test_program_ids_and_text(tok, problems):
    for code in [s for p in problems for s in p.solutions]:
        ids = FAMILY.program_ids(tok, code, "completion")
        assert ids[-1] == tok.eos_token_id and ids.count(tok.eos_token_id) == 1
        assert tok.bos_token_id not in ids
        assert FAMILY.program_text(tok, ids[:-1], "completion") == code
        chat = FAMILY.program_ids(tok, code, "chat")
        assert chat[-1] == tok.eos_token_id and tok.bos_token_id not in chat
        assert decode(tok, chat[:-1]) == f"```python\n{code}\n```"
        assert FAMILY.program_text(tok, chat[:-1], "chat") == code


def test_chat_prompt_ids(tok, problems):
    p = problems[0]
    with pytest.raises(BcoderError, match="no chat template"):
        FAMILY.prompt_ids(p, tok, 600, "chat")
    tok = with_template(tok)
    ids = FAMILY.prompt_ids(p, tok, 600, "chat")
    text = decode(tok, ids)
    assert text.startswith("<|user|>" + build_prompt(p, tok, 600)) and text.endswith("\n<|assistant|>")
    # exactly the template's rendering of one user turn + the generation prompt, no BOS/EOS added
    content = text.removeprefix("<|user|>").removesuffix("\n<|assistant|>")
    rendered = tok.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                       add_generation_prompt=True)  # fmt: skip
    assert rendered == text and ids == tok(rendered, add_special_tokens=False)["input_ids"]
    assert tok.bos_token_id not in ids and tok.eos_token_id not in ids
    # a realistic chat answer: prose around the block, an untagged example block after it
    code = p.solutions[0]
    answer = (f"Sure! Here is a solution:\n\n```python\n{code}\n```\n\nIt reads the number and prints the "
              "answer. For example:\n```\n1\n```\n")  # fmt: skip
    ids = tok(answer, add_special_tokens=False)["input_ids"]
    assert FAMILY.program_text(tok, ids, "chat") == code
    assert FAMILY.program_text(tok, ids, "completion") == code  # a tagged fence after prose


def test_chat_prompt_truncation_keeps_the_template(problems):
    from bcoder_core.model.tokenizer import load_tokenizer

    tok = with_template(load_tokenizer("codet5"))
    for budget in (80, 200):
        ids = FAMILY.prompt_ids(long_problem(), tok, budget, "chat")
        text = decode(tok, ids)
        assert len(ids) <= budget
        assert text.startswith("<|user|>\nQUESTION:\nword word")
        assert "\nUse Standard Input format\nANSWER:\n" in text and text.endswith("\n<|assistant|>")


def test_chat_prompt_truncation_keeps_the_template_with_a_small_vocabulary():
    from bcoder_core.model.tokenizer import load_tokenizer

    tok = with_template(load_tokenizer("tiny"))
    ids = FAMILY.prompt_ids(long_problem(), tok, 200, "chat")
    assert len(ids) <= 200
    assert decode(tok, ids).startswith("<|user|>\nQUESTION:\nword word")


def test_t5_family_refuses_chat(problems):
    from bcoder_core.model.tokenizer import load_tokenizer

    tok = with_template(load_tokenizer("tiny"))
    with pytest.raises(BcoderError, match="completion prompts only"):
        T5_FAMILY.prompt_ids(problems[0], tok, 600, "chat")
    with pytest.raises(BcoderError, match="completion prompts only"):
        T5_FAMILY.program_ids(tok, "x = 1\n", "chat")
    with pytest.raises(BcoderError, match="expected completion or chat"):
        FAMILY.prompt_ids(problems[0], tok, 600, "markdown")


# ------------------------------------------------------------------------------------ 7. eos ids
def test_eos_ids_include_the_generation_config(problems):
    from bcoder_core.model.tokenizer import load_tokenizer

    tok = load_tokenizer("tiny")
    model = FAMILY.random_model(causal_config("llama"))
    assert FAMILY.eos_ids(tok, model) == {2}
    model.generation_config.eos_token_id = [2, 5]
    assert FAMILY.eos_ids(tok, model) == {2, 5}
    model.generation_config.eos_token_id = 7
    assert FAMILY.eos_ids(tok, model) == {2, 7}
    model.generation_config.eos_token_id = None
    assert FAMILY.eos_ids(tok, model) == {2}


# ------------------------------------------------------------------------------------ 8. sampling
@pytest.mark.parametrize("variant", VARIANTS)
def test_greedy_sampling_equals_transformers_generate(variant, problems, tmp_path):
    from bcoder_core.model.tokenizer import load_tokenizer
    from bcoder_core.rl.sampling import SamplingConfig, load_theta, sample_problems

    tok = load_tokenizer("tiny")
    ckpt = make_checkpoint(tmp_path, variant=variant, vocab_size=len(tok))
    model_dir = ckpt
    if ckpt.lora:  # a LoRA θ samples from its merged export
        theta = load(ckpt, "theta")
        perturb(theta.trainable_parameters())
        theta.save_pretrained(tmp_path / "theta")
        model_dir = tmp_path / "theta"
    model = load_theta(str(model_dir), device="cpu", dtype="fp32")
    assert not model.training and not hasattr(model, "peft_config")
    cfg = SamplingConfig(num_samples=2, temperature=0.0, max_new_tokens=12, batch_size=3,
                         max_source_tokens=200)  # fmt: skip
    prompts = [FAMILY.prompt_ids(p, tok, cfg.max_source_tokens, "completion") for p in problems]

    def hf_greedy(prompt):
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                 do_sample=False, max_new_tokens=cfg.max_new_tokens)  # fmt: skip
        return out[0, len(prompt) :].tolist()

    # a token the model emits mid-program becomes a second EOS (generation_config), so rows end early
    first = hf_greedy(prompts[0])
    extra = next((t for i, t in enumerate(first) if i >= 2 and t != 2 and t not in first[:i]), None)
    eos = {2} if extra is None else {2, extra}
    model.generation_config.eos_token_id = sorted(eos)
    got = list(sample_problems(model, tok, problems, cfg, model_name="m", progress=False))
    assert [(r["problem_id"], r["sample_id"]) for r in got] == [(p.id, j) for p in problems for j in range(2)]
    for r in got:
        k = next(i for i, p in enumerate(problems) if p.id == r["problem_id"])
        want = hf_greedy(prompts[k])
        cut = next((i for i, t in enumerate(want) if t in eos), None)
        toks, finished = (want, False) if cut is None else (want[:cut], True)
        assert r["code"] == FAMILY.program_text(tok, toks, "completion")
        assert (r["finished"], r["num_tokens"]) == (finished, len(toks) + int(finished))
    assert got[0]["finished"] and 3 <= got[0]["num_tokens"] <= len(first)
    assert got[0] == {**got[1], "sample_id": 0}  # greedy: the m samples of a problem agree
    # the same record as a T5 sample
    t5 = list(sample_problems(tiny_t5(len(tok)), tok, problems[:1], cfg, model_name="m", progress=False))
    assert [sorted(r) for r in t5] == [sorted(r) for r in got[:2]]
    assert all(type(t5[0][k]) is type(got[0][k]) for k in t5[0])
