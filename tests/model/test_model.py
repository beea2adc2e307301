"""BCoderModel (DESIGN §2.2): parts by stage, the checkpoint's policy at init, saving and loading."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.models import VOCAB, make_batch, make_checkpoint, tiny_config
from transformers import T5ForConditionalGeneration

from bcoder_core.errors import BcoderError
from bcoder_core.model.build import count_parameters, model_config
from bcoder_core.model.qmodel import (
    HEADS_WEIGHTS,
    PHI_CONFIG,
    PHI_HEAD_INIT_BIAS,
    PHI_WEIGHTS,
    BCoderModel,
)
from bcoder_core.model.t5 import T5QModel, shift_right
from bcoder_core.rl.bounds import R_MAX, bound


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def batch():
    return make_batch()


def hf_logits(path, batch):
    t5 = T5ForConditionalGeneration.from_pretrained(str(path)).eval()
    with torch.no_grad():
        return t5(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        ).logits


def theta_logits(model, batch):
    enc = model.encode(batch["input_ids"], batch["attention_mask"])
    with torch.no_grad():
        return model.theta_outputs(enc, batch["attention_mask"], batch["labels"])


def names(params, model):
    ids = {id(p) for p in params}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_shift_right():
    labels = torch.tensor([[5, 6, 2, -100], [7, 2, -100, -100]])
    assert shift_right(labels).tolist() == [[0, 5, 6, 2], [0, 7, 2, 0]]


@pytest.mark.parametrize(
    ("stage", "present", "absent", "trainable_prefixes"),
    [
        ("sft", ["t5"], ["encoder", "theta_decoder", "phi_decoder", "ckpt_decoder"], ["t5."]),
        ("annotate", ["encoder", "ckpt_decoder", "ckpt_lm_head"], ["phi_decoder", "theta_decoder", "t5"], []),
        ("phi", ["encoder", "phi_decoder", "phi_head"], ["ckpt_decoder", "theta_decoder", "t5"],
         ["phi_decoder.block", "phi_decoder.final_layer_norm", "phi_head."]),
        ("theta", ["encoder", "theta_decoder", "lm_head", "h1", "h2"], ["ckpt_decoder", "phi_decoder", "t5"],
         ["theta_decoder.block", "theta_decoder.final_layer_norm", "lm_head.", "h1."]),
        ("eval", ["encoder", "theta_decoder", "lm_head", "h1", "h2"], ["ckpt_decoder", "phi_decoder", "t5"], []),
    ],
)  # fmt: skip
def test_parts_and_trainable_parameters(ckpt, stage, present, absent, trainable_prefixes):
    model = BCoderModel.from_pretrained(ckpt, stage=stage)
    for part in present:
        assert getattr(model, part) is not None, part
    for part in absent:
        assert getattr(model, part) is None, part
    trainable = model.trainable_parameters(stage)
    got = names(trainable, model)
    assert all(any(n.startswith(p) for p in trainable_prefixes) for n in got), got
    # requires_grad is set on exactly the trainable set
    assert {n for n, p in model.named_parameters() if p.requires_grad} == got
    if stage in ("phi", "theta"):
        assert not any("embed_tokens" in n or n.startswith(("shared", "encoder", "h2")) for n in got)
        assert any(n.startswith(trainable_prefixes[-1]) for n in got)


def test_checkpoint_policy_at_init(ckpt, batch):
    """ℓ_ckpt (annotate), ℓ_θ (theta at init) and plain transformers agree: π_φ = π_θ = π_ckpt."""
    ref = hf_logits(ckpt, batch)
    ann = BCoderModel.from_pretrained(ckpt, stage="annotate")
    enc = ann.encode(batch["input_ids"], batch["attention_mask"])
    ckpt_logits = ann.ckpt_logits(enc, batch["attention_mask"], batch["labels"])
    torch.testing.assert_close(ckpt_logits, ref, rtol=0, atol=0)
    theta = BCoderModel.from_pretrained(ckpt, stage="theta")
    logits, u_r = theta_logits(theta, batch)
    # d_model = 64: the d_model**-0.5 rescale is a power of two, folding it into the head is exact
    torch.testing.assert_close(logits, ref, rtol=0, atol=0)
    assert (u_r == 0).all()
    torch.testing.assert_close(torch.softmax(logits, -1), torch.softmax(ref, -1))


def test_untied_head_matches_when_rescale_is_not_a_power_of_two(tmp_path, batch):
    ckpt = make_checkpoint(tmp_path, d_model=48, d_kv=12)
    ref = hf_logits(ckpt, batch)
    logits, _ = theta_logits(BCoderModel.from_pretrained(ckpt, stage="theta"), batch)
    torch.testing.assert_close(logits, ref, rtol=1e-5, atol=1e-5)


def test_phi_starts_near_r_max(ckpt, batch):
    phi = BCoderModel.from_pretrained(ckpt, stage="phi")
    enc = phi.encode(batch["input_ids"], batch["attention_mask"])
    u = phi.phi_values(enc, batch["attention_mask"], batch["labels"])
    assert u.shape == batch["labels"].shape
    # zero weight, bias PHI_HEAD_INIT_BIAS: uniform and optimistic, V = R_max − log cosh(0.05)
    assert (u == torch.tensor(PHI_HEAD_INIT_BIAS)).all()
    v = bound(u)
    assert (v < R_MAX).all() and (v > R_MAX - 0.002).all()


def _perturb(params, seed=0, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=g) * scale)


def test_saving_keeps_the_train_mode(ckpt, tmp_path):
    theta = BCoderModel.from_pretrained(ckpt, stage="theta").train()
    theta.save_pretrained(tmp_path / "theta")
    assert theta.theta_decoder.training and theta.lm_head.training and not theta.encoder.training
    theta.generation_model("theta")  # switches the shared modules to eval for sampling
    assert not theta.theta_decoder.training
    theta.train()
    assert theta.theta_decoder.training and not theta.encoder.training


def test_saved_theta_loads_in_plain_transformers(ckpt, batch, tmp_path):
    theta = BCoderModel.from_pretrained(ckpt, stage="theta").eval()
    _perturb(theta.trainable_parameters())
    logits, u_r = theta_logits(theta, batch)
    assert (u_r != 0).any()
    theta.save_pretrained(tmp_path / "theta")
    cfg = json.loads((tmp_path / "theta" / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is False and cfg["scale_decoder_outputs"] is False
    assert (tmp_path / "theta" / HEADS_WEIGHTS).is_file()
    hf = T5ForConditionalGeneration.from_pretrained(str(tmp_path / "theta")).eval()
    assert hf.lm_head.weight is not hf.shared.weight
    torch.testing.assert_close(hf_logits(tmp_path / "theta", batch), logits, rtol=0, atol=0)
    # reloaded as θ (eval, and resumed theta): same logits and the same residual value
    for stage in ("eval", "theta"):
        again = BCoderModel.from_pretrained(tmp_path / "theta", stage=stage).eval()
        logits2, u_r2 = theta_logits(again, batch)
        torch.testing.assert_close(logits2, logits, rtol=0, atol=0)
        torch.testing.assert_close(u_r2, u_r, rtol=0, atol=0)
    # the encoder and embedding were frozen: they are still the checkpoint's
    base = T5ForConditionalGeneration.from_pretrained(str(ckpt))
    torch.testing.assert_close(hf.shared.weight, base.shared.weight, rtol=0, atol=0)
    torch.testing.assert_close(hf.encoder.block[0].layer[0].SelfAttention.q.weight,
                               base.encoder.block[0].layer[0].SelfAttention.q.weight, rtol=0, atol=0)  # fmt: skip


def test_phi_save_and_load_everywhere(ckpt, batch, tmp_path):
    phi = BCoderModel.from_pretrained(ckpt, stage="phi").eval()
    _perturb(phi.trainable_parameters(), scale=0.1)
    enc = phi.encode(batch["input_ids"], batch["attention_mask"])
    with torch.no_grad():
        u = phi.phi_values(enc, batch["attention_mask"], batch["labels"])
    assert (u != 0).all()
    phi.save_pretrained(tmp_path / "phi")
    assert (tmp_path / "phi" / PHI_WEIGHTS).is_file() and (tmp_path / "phi" / PHI_CONFIG).is_file()
    for stage in ("phi", "annotate", "eval"):
        m = BCoderModel.from_pretrained(ckpt, stage=stage, phi_path=tmp_path / "phi").eval()
        with torch.no_grad():
            u2 = m.phi_values(m.encode(batch["input_ids"], batch["attention_mask"]), batch["attention_mask"],
                              batch["labels"])  # fmt: skip
        torch.testing.assert_close(u2, u, rtol=0, atol=0)
        if stage != "phi":
            assert not any(p.requires_grad for p in m.parameters())
    # φ side by side with θ in one directory (stage eval saves both)
    ev = BCoderModel.from_pretrained(ckpt, stage="eval", phi_path=tmp_path / "phi")
    ev.save_pretrained(tmp_path / "both")
    ev2 = BCoderModel.from_pretrained(tmp_path / "both", stage="eval", phi_path=tmp_path / "both").eval()
    with torch.no_grad():
        u3 = ev2.phi_values(ev2.encode(batch["input_ids"], batch["attention_mask"]), batch["attention_mask"],
                            batch["labels"])  # fmt: skip
    torch.testing.assert_close(u3, u, rtol=0, atol=0)


def test_phi_from_another_checkpoint_is_refused(ckpt, tmp_path):
    BCoderModel.from_pretrained(ckpt, stage="phi").save_pretrained(tmp_path / "phi")
    other = make_checkpoint(tmp_path, seed=1)
    with pytest.raises(BcoderError, match="different checkpoint"):
        BCoderModel.from_pretrained(other, stage="eval", phi_path=tmp_path / "phi")


def test_errors(ckpt, tmp_path):
    with pytest.raises(BcoderError, match="stage"):
        BCoderModel.from_pretrained(ckpt, stage="bogus")
    with pytest.raises(BcoderError, match="v_phi"):
        BCoderModel.from_pretrained(ckpt, stage="theta", phi_path=tmp_path)
    with pytest.raises(BcoderError, match="cannot load"):
        BCoderModel.from_pretrained(tmp_path / "nothing-here", stage="theta")
    with pytest.raises(BcoderError, match=r"no phi\.safetensors"):
        BCoderModel.from_pretrained(ckpt, stage="eval", phi_path=tmp_path)
    model = BCoderModel.from_pretrained(ckpt, stage="annotate")
    with pytest.raises(BcoderError, match="no theta"):
        model.theta_outputs(None, None, torch.zeros(1, 1, dtype=torch.long))
    with pytest.raises(BcoderError, match="no phi parameters"):
        model.trainable_parameters("phi")


def test_frozen_parts_stay_in_eval_mode(tmp_path, batch):
    ckpt = make_checkpoint(tmp_path, dropout_rate=0.5)
    theta = BCoderModel.from_pretrained(ckpt, stage="theta").train()
    assert theta.theta_decoder.training and not theta.encoder.training
    a = theta.encode(batch["input_ids"], batch["attention_mask"])
    b = theta.encode(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # no dropout in the frozen encoder
    no_drop = BCoderModel.from_pretrained(ckpt, stage="theta", dropout=0.0)
    assert no_drop.config.dropout_rate == 0.0


def test_generation_view_shares_weights_and_decodes_greedily(ckpt, batch):
    theta = BCoderModel.from_pretrained(ckpt, stage="theta").eval()
    view = theta.generation_model("theta")
    assert view.lm_head.weight is theta.lm_head.weight and view.decoder is theta.theta_decoder
    out = view.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], do_sample=False,
                        max_new_tokens=6, min_new_tokens=6)  # fmt: skip
    assert (out[:, 0] == 0).all()
    # teacher-forcing the generated tokens: each one is the argmax of θ's logits at its position
    labels = out[:, 1:]
    logits, _ = theta_logits(theta, {**batch, "labels": labels})
    eos_free = labels != 2
    assert (logits.argmax(-1)[eos_free] == labels[eos_free]).all()
    ann = BCoderModel.from_pretrained(ckpt, stage="annotate").eval()
    out_ckpt = ann.generation_model("ckpt").generate(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], do_sample=False,
        max_new_tokens=6, min_new_tokens=6,
    )  # fmt: skip
    assert torch.equal(out, out_ckpt)  # θ at init decodes as the checkpoint


def test_sft_stage_trains_everything_and_saves_a_plain_t5(ckpt, batch, tmp_path):
    sft = BCoderModel.from_pretrained(ckpt, stage="sft").eval()
    assert {id(p) for p in sft.trainable_parameters()} == {id(p) for p in sft.parameters()}
    _perturb(sft.trainable_parameters())
    with torch.no_grad():
        logits = sft.sft_logits(batch["input_ids"], batch["attention_mask"], batch["labels"])
    sft.save_pretrained(tmp_path / "sft")
    torch.testing.assert_close(hf_logits(tmp_path / "sft", batch), logits, rtol=0, atol=0)


def test_from_config_is_seeded_and_leaves_global_rng_alone():
    cfg = tiny_config()
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = BCoderModel.from_config(cfg, stage="theta", seed=7)
    after = torch.rand(1)
    b = BCoderModel.from_config(cfg, stage="theta", seed=7)
    assert torch.equal(before, after)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert a.vocab_size == VOCAB


def test_codet5_large_shape_on_meta():
    cfg = model_config("codet5-large")
    assert (cfg.d_model, cfg.d_ff, cfg.d_kv, cfg.num_heads) == (1024, 4096, 64, 16)
    assert (cfg.num_layers, cfg.num_decoder_layers, cfg.vocab_size) == (24, 24, 32100)
    assert cfg.feed_forward_proj == "relu" and cfg.tie_word_embeddings and cfg.scale_decoder_outputs
    assert (cfg.pad_token_id, cfg.eos_token_id, cfg.decoder_start_token_id) == (0, 2, 0)
    tied = count_parameters(cfg)
    untied = count_parameters(cfg, untied_lm_head=True)
    assert tied == 737_639_424  # T5-large with a 32,100 vocabulary ("770M" counts the head twice)
    assert untied == 770_509_824 == tied + 32100 * 1024
    with torch.device("meta"):
        model = T5QModel(T5ForConditionalGeneration(cfg), "theta")
    assert sum(p.numel() for p in model.parameters()) == untied + 2 * (1024 + 1)  # + h1, h2
    decoder_own = sum(p.numel() for n, p in model.theta_decoder.named_parameters() if "embed_tokens" not in n)
    trainable = sum(p.numel() for p in model.trainable_parameters())
    assert trainable == decoder_own + 32100 * 1024 + 1024 + 1  # θ decoder, untied LM head, h1


# --------------------------------------------------------------------------------------------------
# A user's plain model directory (no manifest): a corrupt file is one BcoderError naming it


@pytest.fixture(scope="module")
def saved_dir(ckpt, tmp_path_factory):
    """θ, φ and a tokenizer in one directory, as `train theta` exports them with phi set."""
    from bcoder_core.model.tokenizer import load_tokenizer

    out = tmp_path_factory.mktemp("saved") / "theta"
    BCoderModel.from_pretrained(ckpt, stage="eval").save_pretrained(
        out, "theta", tokenizer=load_tokenizer("tiny")
    )
    BCoderModel.from_pretrained(ckpt, stage="phi").save_pretrained(out, "phi")
    return out


@pytest.mark.parametrize("how", ["truncated", "garbage", "empty"])
@pytest.mark.parametrize(
    "name",
    ["model.safetensors", "config.json", HEADS_WEIGHTS, PHI_WEIGHTS, PHI_CONFIG, "tokenizer.json",
     "tokenizer_config.json"],
)  # fmt: skip
def test_corrupt_model_file_is_an_error_naming_it(saved_dir, tmp_path, name, how):
    import shutil

    from bcoder_core.model.tokenizer import load_tokenizer

    bad = shutil.copytree(saved_dir, tmp_path / "bad")
    data = (bad / name).read_bytes()
    (bad / name).write_bytes(
        {"truncated": data[: len(data) // 2], "garbage": b"\x93x\x00" * 99, "empty": b""}[how]
    )
    with pytest.raises(BcoderError) as err:
        if name.startswith("tokenizer"):
            load_tokenizer(str(bad))
        else:
            BCoderModel.from_pretrained(bad, stage="eval", phi_path=bad)
    assert str(bad / name) in str(err.value) and "\n" not in str(err.value)


def test_model_files_that_parse_but_are_not_objects_are_named(saved_dir, tmp_path):
    import shutil

    from bcoder_core.model.t5 import load_t5

    bad = shutil.copytree(saved_dir, tmp_path / "bad")
    (bad / PHI_CONFIG).write_text("[1, 2]")
    with pytest.raises(BcoderError, match=rf"{PHI_CONFIG}: expected a JSON object, found list"):
        BCoderModel.from_pretrained(bad, stage="eval", phi_path=bad)
    (bad / "config.json").write_text("null")
    with pytest.raises(BcoderError, match=r"config\.json: expected a JSON object, found NoneType"):
        load_t5(str(bad))
    shape = tmp_path / "shape.json"
    shape.write_bytes(b"\x93\x00binary")
    with pytest.raises(BcoderError, match=r"model shape .*shape\.json: not JSON"):
        model_config(shape)
    shape.write_text("[]")
    with pytest.raises(BcoderError, match=r"model shape .*shape\.json: expected a JSON object"):
        model_config(shape)
