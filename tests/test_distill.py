"""The draft's warm start on target-written chains (`training.distill`).

`target_chains` is tested with the generation replaced by known texts (so the grading,
step cutting, filtering and record bookkeeping are checked against what was written), and
`ChainRecords` through the real SFT pipeline. The stage itself runs in test_train.py and,
on an imported training set from checkpoints, in test_real_configs.py.
"""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamr_jax.data import synthetic
from dreamr_jax.data.pipeline import PipelineConfig, make_dataset
from dreamr_jax.models import hf
from dreamr_jax.models.sharding import make_mesh
from dreamr_jax.processing import ImageProcessorConfig, load_tokenizer
from dreamr_jax.rl.rollout import chain_token_ids
from dreamr_jax.spec.roles import builtin_checkpoint
from dreamr_jax.training import distill, sft
from dreamr_jax.training.sapo import make_prompts

SYNTH = synthetic.SyntheticConfig(image_size=64, families=("bars",))


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    path = builtin_checkpoint(tmp_path_factory.mktemp("t") / "target", seed=0, dtype=jnp.float32)
    model, _ = hf.load_pretrained(path, dtype=jnp.float32)
    return model, load_tokenizer(path), ImageProcessorConfig.from_pretrained(path)


def _records(n: int) -> list[dict]:
    return [synthetic.to_record(synthetic.make_example(i, "train", SYNTH)) for i in range(n)]


def _chain_text(record: dict, right: bool) -> str:
    steps = list(record["steps"])
    if not right:  # another option letter, or another number
        gold = record["answer"]
        wrong = ("A" if gold != "A" else "B") if gold.isalpha() else str(int(gold) + 1)
        steps[-1] = f"Answer: {wrong}"
    return "\n\n".join(steps)


def _fake_generate(prompts, texts, tokenizer, eos: int, calls: list):
    """`generate` that writes ``texts[i]`` for the ``i``-th prompt it is given, checking
    that the rows come in record order (their ids are ``prompts.ids[i]``)."""

    def generate(model, batch, sampling, rng):
        del model, rng
        calls.append((batch.input_ids.shape[0], sampling.temperature, sampling.max_new_tokens))
        rows = []
        ids_masks = zip(np.asarray(batch.input_ids), np.asarray(batch.attention_mask), strict=True)
        for ids, mask in ids_masks:
            i = len(generate.seen)
            assert ids[mask.astype(bool)].tolist() == list(prompts.ids[i])
            generate.seen.append(i)
            rows.append(tokenizer.encode(texts[i], add_special_tokens=False) + [eos])
        n = max(len(r) for r in rows)
        tokens = np.zeros((len(rows), n), np.int32)
        for i, r in enumerate(rows):
            tokens[i, : len(r)] = r
        return types.SimpleNamespace(tokens=tokens, lengths=np.asarray([len(r) for r in rows]))

    generate.seen = []
    return generate


@pytest.mark.parametrize("keep", ["correct", "all"])
def test_target_chains_grades_cuts_and_keeps(target, monkeypatch, keep):
    model, tok, image_cfg = target
    records = _records(5)
    right = [True, False, True, True, False]
    prompts, _ = make_prompts(records, tok, image_cfg)
    texts = [_chain_text(r, ok) for r, ok in zip(records, right, strict=True)]
    texts[3] = "  \n\n  "  # a chain without a step is dropped
    eos_ids, pad_id = chain_token_ids(tok)
    calls = []
    fake = _fake_generate(prompts, texts, tok, eos_ids[0], calls)
    monkeypatch.setattr(distill, "generate", fake)
    cfg = distill.ChainsConfig(source="target", keep=keep, batch_size=2, max_new_tokens=64)
    chains = distill.target_chains(
        model, records, tok, image_cfg, cfg, delimiter="\n\n", eos_ids=eos_ids, pad_id=pad_id
    )
    assert [c[0] for c in calls] == [2, 2, 1] and calls[0][1:] == (0.0, 64)
    assert fake.seen == [0, 1, 2, 3, 4]
    want = [0, 2] if keep == "correct" else [0, 1, 2, 4]
    assert [c.record for c in chains] == want
    for c in chains:
        assert c.correct == right[c.record]
        assert list(c.steps) == _chain_text(records[c.record], right[c.record]).split("\n\n")


def test_unreadable_gold_is_refused_before_generation(target, monkeypatch):
    model, tok, image_cfg = target
    records = _records(4)
    records[3] = {**records[3], "answer": "about seven"}  # a "number" answer
    monkeypatch.setattr(distill, "generate", lambda *a, **kw: pytest.fail("generated"))
    eos_ids, pad_id = chain_token_ids(tok)
    cfg = distill.ChainsConfig(source="target", batch_size=2)
    with pytest.raises(ValueError, match="'about seven'.*not a number") as err:
        distill.target_chains(
            model, records, tok, image_cfg, cfg, delimiter="\n\n", eos_ids=eos_ids, pad_id=pad_id
        )
    assert repr(records[3]["id"]) in str(err.value)


def test_target_chains_runs_the_real_generation(target):
    """Unpatched: greedy chains of a random model are its greedy completions, cut."""
    model, tok, image_cfg = target
    records = _records(2)
    eos_ids, pad_id = chain_token_ids(tok)
    cfg = distill.ChainsConfig(source="target", keep="all", max_new_tokens=12, batch_size=4)
    a = distill.target_chains(
        model, records, tok, image_cfg, cfg, delimiter="\n\n", eos_ids=eos_ids, pad_id=pad_id
    )
    b = distill.target_chains(
        model, records, tok, image_cfg, cfg, delimiter="\n\n", eos_ids=eos_ids, pad_id=pad_id
    )
    assert a == b and all(not c.correct for c in a)  # noise answers nothing
    assert all(c.steps and all(s == s.strip() and s for s in c.steps) for c in a)


def test_chain_records_feed_the_sft_pipeline(target, tmp_path):
    _, tok, image_cfg = target
    records = _records(3)
    chains = [
        distill.Chain(2, ("Reading: the bars.", "Answer: 7"), True),
        distill.Chain(0, ("Answer: 5",), False),
    ]
    data = distill.ChainRecords(records, chains)
    assert len(data) == 2
    item = data[0]
    assert item["question"] == records[2]["question"] and item["answer"] == records[2]["answer"]
    assert item["steps"] == ["Reading: the bars.", "Answer: 7"]
    assert item["image"].shape == (64, 64, 3) and item["image"].dtype == np.uint8
    with pytest.raises(IndexError):
        data[2]
    path = tmp_path / "chains.json"
    distill.save_chains(path, chains, asked=3)
    assert distill.load_chains(path) == chains

    cfg = PipelineConfig(batch_size=2, seq_len=256, num_patches=128, shuffle=False, num_epochs=1)
    batch = next(iter(make_dataset(data, cfg, tok, image_cfg)))
    rows = zip(batch["input_ids"], batch["loss_mask"], strict=True)
    texts = [tok.decode(row[mask.astype(bool)]) for row, mask in rows]
    assert texts[0].startswith("Reading: the bars.\n\nAnswer: 7")
    assert texts[1].startswith("Answer: 5")


def test_no_usable_chain_is_a_clear_error():
    with pytest.raises(ValueError, match="no usable chain.*keep='all'"):
        distill.ChainRecords(_records(1), [])


@pytest.mark.parametrize(
    "change, match",
    [
        ({"source": "teacher"}, r"source='teacher': must be one of \('reference', 'target'\)"),
        ({"keep": "best"}, r"keep='best'"),
        ({"records": 0}, r"records=0: must be >= 1"),
        ({"max_new_tokens": 0}, r"max_new_tokens=0"),
    ],
)
def test_config_is_checked(change, match):
    with pytest.raises(ValueError, match=match):
        distill.ChainsConfig(**change).validate()


def test_chains_must_fit_the_rows():
    chains = distill.ChainsConfig(source="target", max_new_tokens=128)
    with pytest.raises(ValueError, match=r"max_new_tokens=128: must leave room.*seq_len=128"):
        distill.DraftSFTConfig(seq_len=128, chains=chains).validate()
    distill.DraftSFTConfig(seq_len=256, chains=chains).validate()
    reference = distill.ChainsConfig(max_new_tokens=128)  # the reference chains: not used
    distill.DraftSFTConfig(seq_len=128, chains=reference).validate()


class _Closing:
    """An iterator proxy that records ``close``."""

    def __init__(self, it, closed: list):
        self.it, self.closed = it, closed

    def __iter__(self):
        return self

    def __next__(self):
        return next(self.it)

    def get_state(self):
        return self.it.get_state()

    def set_state(self, state):
        self.it.set_state(state)

    def close(self):
        self.closed.append(True)
        self.it.close()


def test_run_sft_closes_its_pipeline(tmp_path, monkeypatch):
    """The stage stops its data pipeline when it ends (its prefetch threads would keep
    reading, and its record cache stay in memory, through the stages after it)."""
    path = builtin_checkpoint(tmp_path / "m", seed=0, dtype=jnp.float32)
    model, _ = hf.load_pretrained(path, dtype=jnp.float32)
    tok, image_cfg = load_tokenizer(path), ImageProcessorConfig.from_pretrained(path)
    closed, real = [], sft.make_dataset

    class Dataset:
        def __init__(self, *args, **kw):
            self.ds = real(*args, **kw)

        def __iter__(self):
            return _Closing(iter(self.ds), closed)

    monkeypatch.setattr(sft, "make_dataset", Dataset)
    cfg = sft.SFTConfig(steps=2, batch_size=2, seq_len=512, cache_records=4)
    mesh = make_mesh((1, 1, 1), jax.devices()[:1])
    records = _records(4)
    data = distill.ChainRecords(
        records, [distill.Chain(i, tuple(r["steps"]), True) for i, r in enumerate(records)]
    )
    _, result = sft.run_sft(tmp_path / "stage", model, data, tok, image_cfg, cfg, mesh)
    assert closed == [True] and result.step == 2
