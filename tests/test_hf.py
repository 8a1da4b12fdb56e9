"""kdlib.lm with Hugging Face models (the ``hf`` extra): a tokenizer built offline, random
GPT-2 and Llama models through SequenceDistiller and generate, and parity with TRL's GKD:
kdlib's loss equals ``GKDTrainer.generalized_jsd_loss``, and the same distillation through TRL's
trainer and through kdlib gives the same losses on its first steps. Skipped, saying why, where
the extra is not installed (``pip install -e ".[dev]"`` installs it)."""

import copy
import math
import warnings

import pytest
import torch

from kdlib import hf, lm
from kdlib.runtime import seed_everything

pytest.importorskip("transformers", reason='the hf extra is not installed: pip install "kdlib[hf]"')
pytest.importorskip("tokenizers", reason='the hf extra is not installed: pip install "kdlib[hf]"')


def _gkd_trainer():
    trl = pytest.importorskip("trl", reason='TRL is not installed: pip install "kdlib[hf]"')
    try:
        from trl.experimental.gkd import GKDConfig, GKDTrainer
    except ImportError:  # TRL < 0.26 kept GKD at the top level
        GKDConfig, GKDTrainer = trl.GKDConfig, trl.GKDTrainer
    return GKDConfig, GKDTrainer


def test_word_tokenizer_gives_kdlibs_ids():
    source = lm.SentenceSource()
    text = source.sample(8, seed=0)
    tokenizer = hf.word_tokenizer(source.vocab)
    sentences = ["<s> " + text.decode(row) for row in text.tokens]
    batch = tokenizer(sentences, padding="max_length", max_length=12, return_tensors="pt")
    assert torch.equal(batch["input_ids"], text.tokens)
    assert torch.equal(batch["attention_mask"].bool(), text.tokens != text.pad)
    assert tokenizer.decode(text.tokens[0][text.tokens[0] != text.pad]) == sentences[0]
    inputs, targets = lm.from_hf_batch(batch["input_ids"], attention_mask=batch["attention_mask"])
    assert torch.equal(targets >= 0, text.mask)  # -100 exactly where kdlib's mask is false
    with pytest.raises(ValueError, match="eos"):
        hf.word_tokenizer(["<pad>", "<s>", "a"])


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_hugging_face_models_distil_and_generate_with_their_cache(family):
    source = lm.SentenceSource()
    text = source.sample(64, seed=0)
    V = len(source.vocab)
    teacher = hf.causal_lm(V, 11, 32, 2, 2, family=family, seed=0)
    student = hf.causal_lm(V, 11, 16, 1, 2, family=family, seed=1)
    assert teacher(text.tokens[:2, :-1]).logits.shape == (2, 11, V)
    prompt = text.tokens[:8, :1]
    for temperature in (0.0, 1.0):
        runs = [
            lm.generate(
                teacher,
                prompt,
                14,
                temperature,
                generator=torch.Generator().manual_seed(0),
                use_cache=use,
            )
            for use in (True, False)
        ]
        assert torch.equal(runs[0], runs[1])
    loader = lm.next_token_loader(text.tokens, text.mask, 16, seed=0)
    before = lm.token_kd_loss(
        student(text.tokens[:, :-1]).logits, teacher(text.tokens[:, :-1]).logits, text.mask
    ).item()
    trainer = lm.SequenceDistiller(student, teacher, lr=1e-2, progress=False)
    trainer.fit(loader, 5)
    after = lm.token_kd_loss(
        student(text.tokens[:, :-1]).logits, teacher(text.tokens[:, :-1]).logits, text.mask
    ).item()
    assert after < before
    trainer = lm.SequenceDistiller(
        student, teacher, mode="on_policy", eos_token=text.eos, pad_token=text.pad, progress=False
    )
    trainer.fit(loader, 1)
    assert trainer.generated_tokens > 0
    metrics = lm.lm_metrics(student, text, source, teacher, n_samples=16)
    assert math.isfinite(metrics["kl_truth"]) and 0 <= metrics["agreement"] <= 1


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_token_kd_loss_equals_trls_generalized_jsd(beta, temperature):
    _, GKDTrainer = _gkd_trainer()
    g = torch.Generator().manual_seed(0)
    zs = torch.randn(3, 7, 50, generator=g) * 3
    zt = torch.randn(3, 7, 50, generator=g) * 3
    labels = torch.randint(0, 50, (3, 7), generator=g)
    labels[0, :2] = -100  # a prompt
    labels[2, 4:] = -100  # padding: rows of unequal length
    s_ours = zs.clone().requires_grad_(True)
    s_trl = zs.clone().requires_grad_(True)
    ours = lm.token_kd_loss(
        s_ours, zt, labels != -100, temperature=temperature, divergence="jsd", beta=beta
    )
    theirs = GKDTrainer.generalized_jsd_loss(
        s_trl, zt, labels=labels, beta=beta, temperature=temperature
    )
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-7), (ours.item(), theirs.item())
    ours.backward()
    theirs.backward()
    assert torch.allclose(s_ours.grad, s_trl.grad, rtol=1e-4, atol=1e-8)
    # float64: the same to rounding
    ours64 = lm.token_kd_loss(
        zs.double(),
        zt.double(),
        labels != -100,
        temperature=temperature,
        divergence="jsd",
        beta=beta,
    )
    theirs64 = GKDTrainer.generalized_jsd_loss(
        zs.double(), zt.double(), labels=labels, beta=beta, temperature=temperature
    )
    assert abs(ours64.item() - theirs64.item()) < 1e-12


@pytest.mark.slow
def test_trls_gkd_trainer_and_kdlib_give_the_same_losses(tmp_path):
    """The same off-policy GKD (lmbda = 0, JSD(0.9), Adam at a constant learning rate, one
    batch per step) run by TRL's GKDTrainer and by kdlib's SequenceDistiller, from the same
    random GPT-2 student and teacher: the losses of the first steps agree."""
    datasets = pytest.importorskip("datasets", reason="TRL's trainer needs datasets")
    GKDConfig, GKDTrainer = _gkd_trainer()
    source = lm.SentenceSource()
    text = source.sample(16, seed=0)
    V = len(source.vocab)
    tokenizer = hf.word_tokenizer(source.vocab)
    teacher = hf.causal_lm(V, 12, 32, 2, 2, seed=0)
    student = hf.causal_lm(V, 12, 16, 1, 2, seed=1)
    ids = text.tokens
    labels = ids.masked_fill(ids == text.pad, -100)
    labels[:, 0] = -100  # <s> is never predicted: TRL counts valid labels before the shift
    steps, lr, beta = 4, 1e-2, 0.9

    def collate(rows):
        out = {k: torch.tensor([r[k] for r in rows]) for k in ("input_ids", "labels")}
        out["attention_mask"] = (out["input_ids"] != text.pad).long()
        return out

    train = datasets.Dataset.from_dict({"input_ids": ids.tolist(), "labels": labels.tolist()})
    config = GKDConfig(
        output_dir=str(tmp_path),
        lmbda=0.0,
        beta=beta,
        seq_kd=False,
        learning_rate=lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=0.0,
        per_device_train_batch_size=len(ids),
        num_train_epochs=steps,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        seed=0,
        disable_dropout=True,
        bf16=False,
        fp16=False,
        dataloader_drop_last=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = GKDTrainer(
            model=copy.deepcopy(student),
            teacher_model=copy.deepcopy(teacher),
            args=config,
            data_collator=collate,
            train_dataset=train,
            processing_class=tokenizer,
        )
        trainer.train()
    trl_losses = [h["loss"] for h in trainer.state.log_history if "loss" in h][:steps]

    seed_everything(0)
    x, y = lm.from_hf_batch(ids, labels)
    ours = lm.SequenceDistiller(
        copy.deepcopy(student),
        copy.deepcopy(teacher),
        divergence="jsd",
        beta=beta,
        lr=lr,
        device="cpu",
        progress=False,
    )
    history = ours.fit([(x, y)], steps)
    kdlib_losses = [h["train_loss"] for h in history]
    assert len(trl_losses) == steps, trainer.state.log_history
    assert kdlib_losses == pytest.approx(trl_losses, rel=2e-4), (kdlib_losses, trl_losses)
    assert kdlib_losses[-1] < kdlib_losses[0]
