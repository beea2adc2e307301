"""The transition store, collate and the ρ_real mixing sampler (DESIGN §2.6, §2.7)."""

from __future__ import annotations

import json
import logging
import tracemalloc

import numpy as np
import pytest
import torch

from bcoder_core.errors import BcoderError
from bcoder_core.rl.transitions import (
    IGNORE_INDEX,
    MixedBatchSampler,
    Transition,
    TransitionStore,
    TransitionWriter,
    collate,
    write_transitions,
)


def make_record(i: int, *, is_gt: bool | None = None, v_phi: bool = False, rng=None) -> Transition:
    rng = rng or np.random.default_rng(i)
    pid = f"p{i % 7}"
    prompt = (np.arange(5 + i % 7) * 3 + i % 7).astype(np.int32)  # a fixed prompt per problem
    t = 1 + (i * 5) % 13
    prog = rng.integers(5, 100, size=t).astype(np.int32)
    prog[-1] = 2
    return Transition(
        problem_id=pid,
        sample_id=i,
        prompt_ids=prompt,
        program_ids=prog,
        reward=1.0 if (is_gt if is_gt is not None else i % 3 == 0) else -0.3,
        is_gt=is_gt if is_gt is not None else i % 3 == 0,
        ckpt_adv=-rng.random(t).astype(np.float32),
        ckpt_greedy=rng.integers(0, 100, size=t).astype(np.int32),
        v_phi=rng.standard_normal(t).astype(np.float32) if v_phi else None,
    )


def assert_same(a: Transition, b: Transition) -> None:
    assert a.problem_id == b.problem_id and a.sample_id == b.sample_id
    assert a.is_gt == b.is_gt and a.reward == pytest.approx(b.reward)
    for k in ("prompt_ids", "program_ids", "ckpt_adv", "ckpt_greedy"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
    if a.v_phi is None:
        assert b.v_phi is None
    else:
        np.testing.assert_array_equal(a.v_phi, b.v_phi)


@pytest.mark.parametrize("v_phi", [False, True])
def test_roundtrip_across_shards(tmp_path, v_phi):
    recs = [make_record(i, v_phi=v_phi) for i in range(53)]
    index = write_transitions(tmp_path / "s", recs, shard_size=10, metadata={"pad_id": 0})
    assert [s["num_records"] for s in index["shards"]] == [10, 10, 10, 10, 10, 3]
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [
        "index.json",
        *[f"shard-{k:05d}.safetensors" for k in range(6)],
    ]
    store = TransitionStore(tmp_path / "s", cache_shards=2)
    assert len(store) == 53 and store.num_shards == 6 and store.has_v_phi == v_phi
    assert store.num_gt == sum(r.is_gt for r in recs) == 18
    assert store.num_generated == 53 - 18
    assert store.metadata == {"pad_id": 0}
    for i in [0, 52, 17, 3, 40, 11, -1]:
        assert_same(store[i], recs[i])
    for a, b in zip(store, recs, strict=True):
        assert_same(a, b)
    got = store.get_many([51, 0, 25, 26, 0])
    for a, i in zip(got, [51, 0, 25, 26, 0], strict=True):
        assert_same(a, recs[i])
    np.testing.assert_array_equal(store.gt_indices(), [i for i, r in enumerate(recs) if r.is_gt])
    np.testing.assert_array_equal(store.generated_indices(), [i for i, r in enumerate(recs) if not r.is_gt])
    with pytest.raises(IndexError):
        store[53]


def test_prompts_stored_once_per_problem_and_shard(tmp_path):
    recs = [make_record(i) for i in range(40)]
    write_transitions(tmp_path / "s", recs, shard_size=40)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "s" / "shard-00000.safetensors"), framework="np") as f:
        assert len(json.loads(f.metadata()["problem_ids"])) == 7
        assert len(f.get_tensor("prompt_offsets")) == 8


def test_reader_keeps_at_most_cache_shards_open(tmp_path):
    recs = [make_record(i) for i in range(50)]
    write_transitions(tmp_path / "s", recs, shard_size=5)
    store = TransitionStore(tmp_path / "s", cache_shards=2)
    seen = 0
    for _rec in store:
        assert len(store.open_shards) <= 2
        seen += 1
    assert seen == 50 and store.shard_loads == 10  # each shard opened once when iterating
    rng = np.random.default_rng(0)
    for i in rng.integers(0, 50, size=200):
        store[int(i)]
        assert len(store.open_shards) <= 2


def test_writer_memory_is_flat(tmp_path):
    """The writer holds one shard: its peak memory does not grow with the size of the store."""

    def peak(n_records: int, name: str) -> tuple[int, int]:
        rng = np.random.default_rng(0)
        tracemalloc.start()
        max_buffered = 0
        with TransitionWriter(tmp_path / name, shard_size=20) as w:
            for i in range(n_records):
                w.add(make_record(i, rng=rng))
                max_buffered = max(max_buffered, w.buffered)
        _, pk = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return pk, max_buffered

    small, buf_small = peak(40, "a")
    large, buf_large = peak(400, "b")
    assert buf_small <= 20 and buf_large <= 20
    assert large < 1.5 * small + 50_000, (small, large)  # unflushed, 400 records take ~6x
    assert TransitionStore(tmp_path / "b").num_shards == 20


def test_writer_rejects_mixed_v_phi_and_reader_rejects_non_store(tmp_path):
    w = TransitionWriter(tmp_path / "s", shard_size=4)
    w.add(make_record(0, v_phi=True))
    with pytest.raises(BcoderError, match="v_phi"):
        w.add(make_record(1, v_phi=False))
    with pytest.raises(BcoderError, match="not a transition store"):
        TransitionStore(tmp_path / "nothing")


def test_collate_pads_as_the_contract_says():
    recs = [make_record(i, v_phi=True) for i in (1, 4, 6)]
    b = collate(recs, pad_id=0)
    assert set(b) == {
        "input_ids",
        "attention_mask",
        "labels",
        "reward",
        "is_gt",
        "ckpt_adv",
        "ckpt_greedy",
        "v_phi",
        "prompt_keys",
    }
    B, S, T = 3, max(len(r.prompt_ids) for r in recs), max(r.num_tokens for r in recs)
    assert b["input_ids"].shape == (B, S) and b["labels"].shape == (B, T)
    assert b["input_ids"].dtype == torch.long and b["labels"].dtype == torch.long
    assert b["ckpt_greedy"].dtype == torch.long and b["ckpt_adv"].dtype == torch.float32
    assert b["is_gt"].dtype == torch.bool and b["reward"].dtype == torch.float32
    for k, r in enumerate(recs):
        p, t = len(r.prompt_ids), r.num_tokens
        assert b["attention_mask"][k].tolist() == [1] * p + [0] * (S - p)
        assert b["input_ids"][k, p:].eq(0).all()
        assert b["labels"][k, :t].tolist() == r.program_ids.tolist()
        assert b["labels"][k, t:].eq(IGNORE_INDEX).all()
        assert b["ckpt_adv"][k, t:].eq(0).all() and b["ckpt_greedy"][k, t:].eq(0).all()
        assert b["v_phi"][k, t:].eq(0).all()
        np.testing.assert_array_equal(b["v_phi"][k, :t].numpy(), r.v_phi)
        assert bool(b["is_gt"][k]) == r.is_gt
        # the prompt's identity for the encoder cache: its ids, 4 bytes each, on the host
        assert (
            b["prompt_keys"][k] == r.prompt_ids.astype(np.int32).tobytes()
            and len(b["prompt_keys"][k]) == 4 * p
        )
    assert "v_phi" not in collate([make_record(1)], pad_id=0)


# -- the sampler


def pools_store(tmp_path, n_gt, n_gen, shard_size=16):
    recs = [make_record(i, is_gt=True) for i in range(n_gt)]
    recs += [make_record(n_gt + i, is_gt=False) for i in range(n_gen)]
    order = np.random.default_rng(1).permutation(len(recs))  # interleave GT and generated
    write_transitions(tmp_path / "s", [recs[i] for i in order], shard_size=shard_size)
    return TransitionStore(tmp_path / "s")


@pytest.mark.parametrize(("bsz", "rho"), [(16, 0.5), (10, 0.3), (7, 0.5), (8, 0.0), (8, 1.0)])
def test_mixing_is_exact_per_batch(tmp_path, bsz, rho):
    store = pools_store(tmp_path, 13, 61)
    mask = store.is_gt_mask()
    s = MixedBatchSampler(store, bsz, rho, seed=3)
    want = int(np.floor(rho * bsz + 0.5))
    for _ in range(40):  # crosses several epochs of the GT pool
        b = next(s)
        assert len(b) == bsz
        assert int(mask[b].sum()) == want


def test_each_epoch_covers_the_pool_and_reshuffles(tmp_path):
    store = pools_store(tmp_path, 12, 24)
    mask = store.is_gt_mask()
    s = MixedBatchSampler(store, 8, 0.5, seed=0)
    gt_seq = []
    for _ in range(6):  # 6 batches x 4 GT = 24 = two GT epochs
        gt_seq += [i for i in next(s) if mask[i]]
    e0, e1 = gt_seq[:12], gt_seq[12:]
    assert sorted(e0) == sorted(e1) == sorted(store.gt_indices().tolist())
    assert e0 != e1


def test_determinism_and_seed(tmp_path):
    store = pools_store(tmp_path, 9, 30)
    a = [next(MixedBatchSampler(store, 6, 0.5, seed=7)) for _ in range(1)]
    s1, s2, s3 = (MixedBatchSampler(store, 6, 0.5, seed=x) for x in (7, 7, 8))
    b1 = [next(s1) for _ in range(25)]
    assert b1 == [next(s2) for _ in range(25)]
    assert b1 != [next(s3) for _ in range(25)]
    assert a[0] == b1[0]


def test_resume_mid_stream(tmp_path):
    store = pools_store(tmp_path, 11, 37)
    full = MixedBatchSampler(store, 8, 0.5, seed=5)
    ref = [next(full) for _ in range(30)]
    first = MixedBatchSampler(store, 8, 0.5, seed=5)
    for _ in range(13):
        next(first)
    state = json.loads(json.dumps(first.state_dict()))  # survives a checkpoint file
    resumed = MixedBatchSampler(store, 8, 0.5, seed=5)
    resumed.load_state_dict(state)
    assert [next(resumed) for _ in range(17)] == ref[13:]
    other = MixedBatchSampler(store, 8, 0.5, seed=6)
    with pytest.raises(BcoderError, match="seed"):
        other.load_state_dict(state)


@pytest.mark.parametrize("world", [2, 4])
def test_ddp_shards_are_disjoint_and_cover_the_global_batch(tmp_path, world):
    store = pools_store(tmp_path, 10, 50)
    mask = store.is_gt_mask()
    glob = MixedBatchSampler(store, 8, 0.5, seed=1)
    ranks = [MixedBatchSampler(store, 8, 0.5, seed=1, rank=r, world_size=world) for r in range(world)]
    for _ in range(20):
        g = next(glob)
        parts = [next(r) for r in ranks]
        assert all(len(p) == 8 // world for p in parts)
        assert parts == [g[r::world] for r in range(world)]  # disjoint positions of the global batch
        assert sorted(i for p in parts for i in p) == sorted(g)  # together: the global batch
        assert [mask[p].sum() for p in parts] == [4 // world] * world  # GT spread evenly
    with pytest.raises(BcoderError, match="multiple"):
        MixedBatchSampler(store, 6, 0.5, seed=1, rank=0, world_size=4)


def test_empty_pool_fills_from_the_other_and_says_so_once(tmp_path, caplog):
    store = pools_store(tmp_path, 0, 20)
    with caplog.at_level(logging.WARNING):
        s = MixedBatchSampler(store, 8, 0.5, seed=0)
        batches = [next(s) for _ in range(5)]
    assert all(len(b) == 8 for b in batches)
    msgs = [r for r in caplog.records if "no ground-truth" in r.getMessage()]
    assert len(msgs) == 1


def test_gt_only_store(tmp_path, caplog):
    store = pools_store(tmp_path, 5, 0)
    with caplog.at_level(logging.WARNING):
        s = MixedBatchSampler(store, 4, 0.5, seed=0)
    assert all(store.is_gt_mask()[next(s)].all() for _ in range(4))
    assert sum("no generated" in r.getMessage() for r in caplog.records) == 1


# --------------------------------------------------------------------------------------------------
# A store in a plain directory (no manifest): corrupt files are one BcoderError naming the file


@pytest.fixture
def store_dir(tmp_path):
    write_transitions(tmp_path / "s", [make_record(i, v_phi=True) for i in range(20)], shard_size=16)
    return tmp_path / "s"  # shard 0: 16 records, shard 1: 4


def _read_everything(path) -> None:
    store = TransitionStore(path)
    store.gt_indices()  # what the sampler reads first: every shard's is_gt
    list(TransitionStore(path))  # every record, through the memory-mapped shard reader


@pytest.mark.parametrize("how", ["truncated", "garbage", "empty"])
@pytest.mark.parametrize("name", ["shard-00000.safetensors", "shard-00001.safetensors", "index.json"])
def test_corrupt_store_file_is_an_error_naming_it(store_dir, name, how):
    target = store_dir / name
    data = target.read_bytes()
    target.write_bytes(
        {"truncated": data[: len(data) // 2], "garbage": b"\x93NUMPY\x00" * 50, "empty": b""}[how]
    )
    with pytest.raises(BcoderError, match=r"cannot be read|broken JSON") as err:
        _read_everything(store_dir)
    assert str(target) in str(err.value) and "\n" not in str(err.value)


def test_shard_reader_names_a_corrupt_shard_without_the_mask(store_dir):
    """Random access opens a shard on its own (another thread, another reader): the same error."""
    (store_dir / "shard-00001.safetensors").write_bytes(b"garbage")
    with pytest.raises(BcoderError, match=r"shard-00001\.safetensors: cannot be read"):
        TransitionStore(store_dir)[17]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda ix: [], "expected a JSON object"),
        (lambda ix: {k: v for k, v in ix.items() if k != "shards"}, r"malformed index \(no 'shards'\)"),
        (lambda ix: {**ix, "shards": [{"num_records": 16}]}, r"malformed index \(no 'file'\)"),
        (lambda ix: {**ix, "num_records": "many"}, "malformed index"),
        (lambda ix: {**ix, "num_records": 21}, "shards hold 20 records, num_records says 21"),
    ],
)
def test_malformed_index_is_an_error_naming_it(store_dir, edit, message):
    index_file = store_dir / "index.json"
    index_file.write_text(json.dumps(edit(json.loads(index_file.read_text()))))
    with pytest.raises(BcoderError, match=message) as err:
        TransitionStore(store_dir)
    assert str(index_file) in str(err.value)


def test_shard_that_parses_but_disagrees_is_an_error_naming_it(store_dir):
    from safetensors import safe_open
    from safetensors.numpy import save_file

    shard0, shard1 = store_dir / "shard-00000.safetensors", store_dir / "shard-00001.safetensors"
    with safe_open(str(shard0), framework="np") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()  # noqa: SIM118

    def rewrite(**changes) -> None:
        cols = {k: v for k, v in {**tensors, **changes}.items() if v is not None}
        save_file(cols, str(shard0), metadata=meta)

    rewrite(reward=None)
    with pytest.raises(BcoderError, match=r"shard-00000\.safetensors: cannot be read \(.*reward"):
        TransitionStore(store_dir)[0]
    rewrite(program_offsets=tensors["program_offsets"][::-1].copy())
    with pytest.raises(BcoderError, match=r"shard-00000\.safetensors: cannot be read \(bad offsets\)"):
        TransitionStore(store_dir)[0]
    rewrite(ckpt_adv=tensors["ckpt_adv"][:-1].copy())
    with pytest.raises(BcoderError, match=r"cannot be read \(ckpt_adv does not match its offsets\)"):
        TransitionStore(store_dir)[0]
    rewrite(prompt_index=tensors["prompt_index"] + 100)
    with pytest.raises(BcoderError, match=r"cannot be read \(prompt_index out of range\)"):
        TransitionStore(store_dir)[0]
    shard0.write_bytes(shard1.read_bytes())  # a shard swapped for another
    with pytest.raises(BcoderError, match=r"shard-00000\.safetensors: holds 4 records, index\.json says 16"):
        TransitionStore(store_dir).gt_indices()
    with pytest.raises(BcoderError, match=r"shard-00000\.safetensors: holds 4 records, index\.json says 16"):
        TransitionStore(store_dir)[0]
