"""Pretraining loop: schedule, exact resume from a checkpoint, checkpoint format, Hugging Face output."""

from __future__ import annotations

import json

import pytest
import torch

from doge_from_scratch import pretrain as P
from doge_from_scratch.generation import continue_text
from doge_from_scratch.tokenizer import load_tokenizer
from doge_from_scratch.train_utils import make_optimizer, wsd_lr_factor


def tiny_run_config(**overrides) -> P.PretrainSettings:
    fields = dict(seq_len=32, rows_per_micro_batch=4, accumulation=2, steps=8, lr=3e-3, eval_every=4,
                  checkpoint_every=2, max_train_docs=120, max_val_docs=10,
                  model_overrides=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=2, num_key_value_heads=1))
    fields.update(overrides)
    return P.PretrainSettings(**fields)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.mark.parametrize("decay_type", ["linear", "cosine", "1-sqrt"])
def test_wsd_schedule_matches_transformers(decay_type):
    from transformers.optimization import get_wsd_schedule

    warmup, stable, decay = 5, 10, 7
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    reference = get_wsd_schedule(opt, num_warmup_steps=warmup, num_decay_steps=decay,
                                 num_training_steps=warmup + stable + decay, decay_type=decay_type, min_lr_ratio=0.1)
    for step in range(warmup + stable + decay + 3):
        expected = reference.lr_lambdas[0](step)
        assert wsd_lr_factor(step, warmup, stable, decay, decay_type, 0.1) == pytest.approx(expected, abs=1e-12)


def test_recipe_hyperparameters():
    cfg = P.PretrainSettings()
    assert (cfg.betas, cfg.eps, cfg.weight_decay, cfg.max_grad_norm) == ((0.9, 0.95), 1e-8, 0.01, 1.0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    opt = make_optimizer(model, cfg.lr, cfg.weight_decay, cfg.betas, cfg.eps, decay="matrices")
    decayed = {id(p) for p in opt.param_groups[0]["params"]}
    assert decayed == {id(model[0].weight)} and opt.param_groups[1]["weight_decay"] == 0.0


def test_the_two_weight_decay_rules(tok):
    # Post-training decays what transformers' Trainer decays (A and the residual scales too); pretraining only
    # matrices. Judged on the names, against the rules as the docstrings state them.
    from doge_from_scratch.testing import tiny_model_for
    from doge_from_scratch.train_utils import decayed_parameter_names

    model = tiny_model_for(tok)
    names = {n for n, _ in model.named_parameters()}
    trainer, matrices = decayed_parameter_names(model, "trainer"), decayed_parameter_names(model, "matrices")
    vectors = {n for n, p in model.named_parameters() if p.dim() < 2}
    assert matrices == names - vectors
    residual_and_a = {n for n in vectors if n.endswith(("residual", ".A"))}
    assert residual_and_a and residual_and_a <= trainer and not residual_and_a & matrices
    assert not {n for n in names if "norm" in n} & (trainer | matrices)
    with pytest.raises(ValueError, match="weight-decay rule 'all'"):
        make_optimizer(model, 1e-3, decay="all")


def test_packing_wraps_documents_and_keeps_chat_specials(tok):
    chat = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False).rstrip("\n")
    rows = P.pack_documents(["one two", chat, "three"] * 4, tok, seq_len=8)
    stream = rows.flatten().tolist()
    assert stream.count(tok.bos_token_id) >= 8  # no doubled bos for the chat document
    assert stream[0] == tok.bos_token_id
    doc = [tok.bos_token_id] + tok("one two", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert stream[: len(doc)] == doc
    assert [tok.bos_token_id, tok.bos_token_id] not in [stream[i:i + 2] for i in range(len(stream) - 1)]


def test_row_schedule_is_a_permutation_per_epoch():
    sched = P.RowSchedule(n_rows=10, batch_size=5, seed=3)
    first_epoch = torch.cat([sched.rows(0), sched.rows(1)])
    assert sorted(first_epoch.tolist()) == list(range(10))
    assert not torch.equal(torch.cat([sched.rows(2), sched.rows(3)]), first_epoch)
    assert torch.equal(P.RowSchedule(10, 5, 3).rows(3), sched.rows(3))


def test_resume_gives_the_same_loss_curve(tmp_path, tok):
    cfg = tiny_run_config()
    full = P.pretrain(cfg, tok, checkpoint_dir=tmp_path / "full", progress=False)
    first = P.pretrain(cfg, tok, checkpoint_dir=tmp_path / "split", stop_after=4, progress=False)
    assert len(first.history) == 4
    resumed = P.pretrain(cfg, tok, checkpoint_dir=tmp_path / "split", resume=True, progress=False)

    assert [h["step"] for h in resumed.history] == list(range(1, cfg.steps + 1))
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    assert [h["lr"] for h in resumed.history] == [h["lr"] for h in full.history]
    assert resumed.val_history == full.val_history
    for (name, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name
    # The run learns something even at this size.
    assert full.val_history[-1]["val_loss"] < full.val_history[0]["val_loss"] - 0.5


def test_checkpoints_are_safetensors_and_json_only(tmp_path, tok):
    cfg = tiny_run_config(steps=6, keep_checkpoints=2)
    P.pretrain(cfg, tok, checkpoint_dir=tmp_path, progress=False)
    folders = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert folders == ["step_000004", "step_000006"]  # older ones pruned, no temporary folders left
    assert json.loads((tmp_path / "latest.json").read_text())["path"] == "step_000006"
    files = {p.name for p in (tmp_path / "step_000006").iterdir()}
    assert files == {"config.json", "model.safetensors", "optimizer.safetensors", "rng.safetensors",
                     "trainer_state.json"}


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path, tok):
    with pytest.raises(FileNotFoundError, match="latest.json"):
        P.pretrain(tiny_run_config(), tok, checkpoint_dir=tmp_path, resume=True, progress=False)


def test_saved_model_loads_in_transformers_with_the_same_logits(tmp_path, tok):
    import transformers

    cfg = tiny_run_config(steps=2)
    result = P.pretrain(cfg, tok, progress=False)
    folder = P.save_pretrained_model(result, tok, tmp_path / "pretrained", cfg)
    reference = transformers.DogeForCausalLM.from_pretrained(folder).eval()
    reloaded_tok = transformers.AutoTokenizer.from_pretrained(folder)
    ids = reloaded_tok.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], tokenize=True,
                                           add_generation_prompt=True, return_dict=False)
    x = torch.tensor([ids])
    with torch.no_grad():
        ours = result.model(input_ids=x).logits
        theirs = reference(input_ids=x).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    summary = json.loads((folder / "pretrain_summary.json").read_text())
    assert summary["final_val_loss"] == result.final_val_loss


def test_ensure_pretrained_reuses_an_existing_folder(tmp_path, monkeypatch):
    for name in ("config.json", "model.safetensors", "tokenizer.json", "pretrain_summary.json"):
        (tmp_path / name).write_text("{}")

    def must_not_train(*args, **kwargs):
        raise AssertionError("ensure_pretrained retrained although the folder was complete")

    monkeypatch.setattr(P, "pretrain", must_not_train)
    assert P.ensure_pretrained(tmp_path) == tmp_path
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(AssertionError, match="retrained"):
        P.ensure_pretrained(tmp_path)


def test_ensure_student_base_runs_the_student_recipe_into_its_own_folder(tmp_path, monkeypatch):
    """ensure_student_base hands ensure_pretrained (whose reuse of a complete folder is tested above) the student's
    own folder and student_settings(), not the teacher's recipe."""
    calls = []

    def fake_ensure(path, progress=True, settings=None):
        calls.append((path, settings))
        return path

    monkeypatch.setattr(P, "ensure_pretrained", fake_ensure)
    assert P.ensure_student_base(progress=False) == P.TINY_DOGE_STUDENT_DIR
    (path, settings), = calls
    assert path == P.TINY_DOGE_STUDENT_DIR != P.TINY_DOGE_DIR
    assert settings == P.student_settings() and settings.model_overrides == P.STUDENT_MODEL
    assert settings.model_overrides != P.PretrainSettings().model_overrides


def test_continue_text_is_greedy_raw_text_after_a_bos(tok):
    torch.manual_seed(0)
    model = P.DogeForCausalLM(P.tiny_doge_config(len(tok), hidden_size=32, intermediate_size=64,
                                                 num_hidden_layers=2, num_attention_heads=2)).train()
    prompt = [tok.bos_token_id] + tok("Once upon a time", add_special_tokens=False)["input_ids"]
    text = continue_text(model, tok, "Once upon a time", max_new_tokens=5, eos_token_id=None)
    assert model.training, "continue_text must give the model back in training mode"
    ids = list(prompt)
    with torch.no_grad():
        model.eval()
        for _ in range(5):
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    assert text == "Once upon a time" + tok.decode(ids[len(prompt):])


def test_training_benchmark_runs_and_ends_with_json(capsys):
    from doge_from_scratch.bench import train as bench_train

    assert bench_train.main(["--config", "tiny", "--batch", "1", "--seq", "16", "--steps", "1", "--warmup", "0",
                             "--optimizer", "loop", "--optimizer", "fused"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    summary = json.loads(last)
    assert summary["benchmark"] == "train"
    assert {r["model"] for r in summary["rows"]} == {"doge_from_scratch", "transformers (sdpa)", "transformers (eager)"}
    assert set(summary["speedup_vs_best_transformers"]) == {"tiny/float32/loop", "tiny/float32/fused"}
    for row in summary["rows"]:  # shares of one step: each in (0, 1)
        assert 0 < row["optimizer_share"] < 1 and 0 < row["matmul_share"] < 1, row
