"""The training recipe: the composed loss equals its sentence-transformers parts, training lowers it, two gloo
processes gather negatives like one process, souping averages, the teacher cache is reused and invalidated, and
evaluation prints one Spearman per Matryoshka dim."""

import argparse
import dataclasses
import json
import pickle
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import train_embeddinggemma as te
from conftest import REPO, slow


def fixed_embeddings(batch=8, columns=3, dim=48, seed=0):
    generator = torch.Generator().manual_seed(seed)
    embeddings = [F.normalize(torch.randn(batch, dim, generator=generator), dim=-1) for _ in range(columns)]
    teacher = F.normalize(torch.randn(batch, columns, dim, generator=generator), dim=-1)
    return embeddings, teacher


def test_recipe_loss_is_the_weighted_sum_of_the_sentence_transformers_losses():
    from sentence_transformers.sentence_transformer.losses import (
        GlobalOrthogonalRegularizationLoss,
        MultipleNegativesRankingLoss,
    )

    embeddings, teacher = fixed_embeddings()
    loss = te.EmbeddingGemmaRecipeLoss(torch.nn.Module(), nce_weight=0.7, gor_weight=2.0, distill_weight=0.3)
    nce = MultipleNegativesRankingLoss(torch.nn.Module(), hardness_mode="hard_negatives", hardness_strength=5.0)
    gor = GlobalOrthogonalRegularizationLoss(torch.nn.Module(), mean_weight=0, aggregation="sum")
    # GOR (second moment, summed over columns), L2 distillation averaged over texts and columns
    distill = torch.stack([(embeddings[i] - teacher[:, i]).norm(dim=-1).mean() for i in range(3)]).mean()
    expected = (
        0.7 * nce.compute_loss_from_embeddings(embeddings, None)
        + 2.0 * sum(gor.compute_loss_from_embeddings(embeddings).values())
        + 0.3 * distill
    )
    assert torch.allclose(loss.compute_loss_from_embeddings(embeddings, teacher), expected, atol=1e-6)
    parts = loss.components(embeddings, teacher)
    assert set(parts) == {"nce", "gor", "distill"} and all(p > 0 for p in parts.values())
    # hard negatives change the NCE term: the paper's hardness weighting is on
    plain = MultipleNegativesRankingLoss(torch.nn.Module()).compute_loss_from_embeddings(embeddings, None)
    assert not torch.allclose(parts["nce"], plain)
    with pytest.raises(ValueError, match="Distillation needs teacher embeddings"):
        loss.compute_loss_from_embeddings(embeddings, None)


def test_gathered_negatives_in_two_gloo_processes_match_one_process(tmp_path):
    script = tmp_path / "ddp_loss.py"
    script.write_text(
        textwrap.dedent(f"""
        import os, sys, torch, torch.distributed as dist
        sys.path.insert(0, {str(REPO)!r}); sys.path.insert(0, {str(REPO / "tests")!r})
        import train_embeddinggemma as te
        from test_training import fixed_embeddings
        dist.init_process_group("gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        embeddings, teacher = fixed_embeddings(batch=8)
        half = slice(rank * 4, rank * 4 + 4)
        loss = te.EmbeddingGemmaRecipeLoss(torch.nn.Module(), gor_weight=0, distill_weight=0)
        local = loss.compute_loss_from_embeddings([e[half] for e in embeddings], None).detach()
        dist.all_reduce(local)
        if rank == 0:
            print("gathered", (local / world).item(), flush=True)
        dist.barrier()
        dist.destroy_process_group()
        # torch 2.13's gloo sometimes aborts in a C++ destructor at interpreter exit, after all of the above
        # ("terminate called without an active exception"): the numbers are out, so leave without the teardown
        os._exit(0)
    """)
    )
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    gathered = float(result.stdout.split("gathered")[1].split()[0])
    embeddings, _ = fixed_embeddings(batch=8)
    single = te.EmbeddingGemmaRecipeLoss(torch.nn.Module(), gor_weight=0, distill_weight=0)
    assert abs(gathered - single.compute_loss_from_embeddings(embeddings, None).item()) <= 1e-5
    # without gathering, the two halves see fewer negatives and the loss differs: the check can fail
    halves = [single.compute_loss_from_embeddings([e[s] for e in embeddings], None) for s in (slice(0, 4), slice(4, 8))]
    assert abs(gathered - float(sum(halves) / 2)) > 1e-3


@pytest.fixture(scope="module")
def student(tiny_st_dir, tmp_path_factory):
    """A tiny converted decoder with a 48-d identity head: the tiny teacher's dims."""
    from convert_checkpoint import convert
    from testing_embeddinggemma import build_tiny_gemma3

    root = tmp_path_factory.mktemp("student")
    build_tiny_gemma3(root / "decoder")
    return convert(str(root / "decoder"), root / "student", "gemma3", embedding_dim=48, matryoshka_dims=[48, 32, 16])


SUBJECTS = ["a man", "the dog", "a woman", "the cat"]
ACTIONS = ["playing guitar", "running fast", "eating water", "on the red planet"]
TOY_ROWS = [  # 16 distinct rows: batches of 8 without duplicates
    {"anchor": f"{s} is {a}", "positive": f"{s} was {a}", "negative": f"{s} is not {a}"}
    for s in SUBJECTS
    for a in ACTIONS
]


def recipe_value(model_dir, teacher_dir, rows, cache):
    """The recipe's Matryoshka loss of `model_dir` on `rows` (one batch), without gradients."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cpu", trust_remote_code=True)
    config = model[0].auto_model.config
    prompts = {
        "anchor": config.prompts["query"],
        "positive": config.prompts["document"],
        "negative": config.prompts["document"],
    }
    labels = torch.tensor(te.teacher_embeddings(str(teacher_dir), rows, prompts, cache))
    features = [model.tokenize([prompts[c] + r[c] for r in rows]) for c in ("anchor", "positive", "negative")]
    loss = te.recipe_loss(model, config.matryoshka_dims, gather_across_devices=False).eval()
    with torch.no_grad():
        return float(loss(features, labels))


def test_training_changes_weights_lowers_the_loss_and_exports_our_format(student, tiny_converted_dir, tmp_path):
    before = recipe_value(student, tiny_converted_dir, TOY_ROWS, tmp_path / "cache")

    def run(**changes):
        settings = {"max_steps": 8, "batch_size": 8, "learning_rate": 2e-3, "warmup": 0, "save_steps": 4, **changes}
        return te.train(
            str(student),
            str(tmp_path / "run"),
            TOY_ROWS,
            teacher=str(tiny_converted_dir),
            cache_dir=str(tmp_path / "cache"),
            **settings,
        )

    final = run()
    old, new = load_file(student / "model.safetensors"), load_file(final / "model.safetensors")
    assert any(not torch.equal(old[k], new[k]) for k in old)
    after = recipe_value(final, tiny_converted_dir, TOY_ROWS, tmp_path / "cache")
    assert after < before
    assert json.loads((final / "config.json").read_text())["architectures"] == ["EmbeddingGemmaModel"]
    assert {p.name for p in (tmp_path / "run").glob("checkpoint-*")} == {"checkpoint-4", "checkpoint-8"}
    # resumable: as if killed after checkpoint-4, the same command with --resume runs steps 5-8 only, and ends with
    # the weights of the uninterrupted run (same data order, same schedule)
    shutil.rmtree(tmp_path / "run" / "checkpoint-8")
    resumed = run(resume=True)
    state = json.loads((tmp_path / "run" / "checkpoint-8" / "trainer_state.json").read_text())
    assert state["global_step"] == 8
    assert json.loads((tmp_path / "run" / "training_summary.json").read_text())["this_run"]["optimizer_steps"] == 4
    resumed_weights = load_file(resumed / "model.safetensors")
    for key in new:
        torch.testing.assert_close(resumed_weights[key], new[key], atol=1e-5, rtol=0)
    # a resume that changes what is trained is refused, naming the change
    with pytest.raises(ValueError, match=r"--resume with other arguments .* learning_rate: 0.002 -> 0.001"):
        run(resume=True, learning_rate=1e-3)


def test_teacher_cache_is_reused_and_invalidated(tiny_converted_dir, tmp_path, monkeypatch):
    from sentence_transformers import SentenceTransformer

    calls = []
    original = SentenceTransformer.encode
    monkeypatch.setattr(SentenceTransformer, "encode", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    prompts = {"anchor": "task: search result | query: ", "positive": "", "negative": ""}
    first = te.teacher_embeddings(str(tiny_converted_dir), TOY_ROWS, prompts, tmp_path)
    assert first.shape == (16, 3, 48) and len(calls) == 3
    again = te.teacher_embeddings(str(tiny_converted_dir), TOY_ROWS, prompts, tmp_path)
    assert np.array_equal(first, again) and len(calls) == 3  # reused
    te.teacher_embeddings(str(tiny_converted_dir), TOY_ROWS[:-1], prompts, tmp_path)  # data changed
    assert len(calls) == 6
    changed_teacher = tmp_path / "teacher"
    import shutil

    shutil.copytree(tiny_converted_dir, changed_teacher)
    config = json.loads((changed_teacher / "config.json").read_text())
    config["default_prompt_name"] = "query"
    (changed_teacher / "config.json").write_text(json.dumps(config))
    te.teacher_embeddings(str(changed_teacher), TOY_ROWS, prompts, tmp_path)  # teacher changed
    assert len(calls) == 9


def test_soup_is_the_average(student, tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(student, other)
    weights = load_file(student / "model.safetensors")
    from safetensors.torch import save_file

    save_file({k: v + 1.0 for k, v in weights.items()}, other / "model.safetensors")
    souped = te.soup(str(tmp_path / "soup"), [str(student), str(other)])
    averaged = load_file(souped / "model.safetensors")
    assert all(torch.allclose(averaged[k], weights[k] + 0.5, atol=1e-6) for k in weights)
    weighted = load_file(te.soup(str(tmp_path / "w"), [str(student), str(other)], [0.75, 0.25]) / "model.safetensors")
    assert all(torch.allclose(weighted[k], weights[k] + 0.25, atol=1e-6) for k in weights)
    assert (souped / "modeling_embeddinggemma.py").is_file()
    with pytest.raises(ValueError, match="summing to 1"):
        te.soup(str(tmp_path / "bad"), [str(student), str(other)], [0.5, 0.6])


def test_evaluate_prints_one_spearman_per_dim(tiny_converted_dir, tmp_path):
    rows = [
        (
            "g",
            "f",
            "2012",
            f"{i:04d}",
            f"{(i % 6):.3f}",
            f"a man is playing {'guitar ' * (i % 6)}",
            "a man is playing guitar",
        )
        for i in range(30)
    ]
    sts = tmp_path / "sts-test.csv"
    sts.write_text("\n".join("\t".join(r) for r in rows) + "\n")
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "train_embeddinggemma.py"),
            "evaluate",
            str(tiny_converted_dir),
            "--sts-file",
            str(sts),
            "--prompt-name",
            "STS",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert [line.split()[1] for line in lines] == ["48", "32", "16"]  # the model's Matryoshka dims
    assert all(len(line.split()) == 4 and line.split()[2] == "spearman" for line in lines)
    assert te.spearman(np.array([1, 2, 3, 4]), np.array([10, 20, 30, 40])) == pytest.approx(1.0)
    assert te.spearman(np.array([1, 2, 2, 4]), np.array([4, 3, 2, 1])) == pytest.approx(-0.9486833, abs=1e-6)


def write_sick(path, pairs):
    """A SICK-format file (header, tab-separated) of (sentence_A, sentence_B, relatedness, judgment) rows."""
    lines = ["pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment"]
    lines += [f"{i}\t{a}\t{b}\t{score}\t{label}" for i, (a, b, score, label) in enumerate(pairs, 1)]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_sts(path, pairs):
    path.write_text("\n".join(f"g\tf\t2012\t{i:04d}\t{s:.3f}\t{a}\t{b}" for i, (a, b, s) in enumerate(pairs)) + "\n")
    return path


def test_held_out_texts_are_removed_listed_and_checked(tmp_path):
    sick = write_sick(
        tmp_path / "SICK_train.txt",
        [("A man plays", "A man is playing", 4.5, "ENTAILMENT"), ("A dog runs", "A cat  sleeps", 1.2, "NEUTRAL")],
    )
    test = write_sts(tmp_path / "sts-test.csv", [("a CAT sleeps", "something else", 2.0)])
    assert te.is_sick(sick) and not te.is_sick(test)
    assert te.read_sts(sick) == [("A man plays", "A man is playing", 4.5), ("A dog runs", "A cat  sleeps", 1.2)]
    rows = te.load_data([f"texts:{sick}"])
    assert [r["anchor"] for r in rows] == ["A man plays", "A man is playing", "A dog runs", "A cat  sleeps"]
    kept, dropped = te.drop_held_out(rows, te.held_out_texts([test]))  # case and spacing do not hide a text
    assert dropped == 1 and "A cat  sleeps" not in [r["anchor"] for r in kept]
    run = tmp_path / "run"
    run.mkdir()
    (run / "trained_texts.txt").write_text("\n".join(te.trained_texts(rows)) + "\n")
    with pytest.raises(ValueError, match="1 held-out texts were trained on"):
        te.check_held_out([str(run)], [str(test)])
    (run / "trained_texts.txt").write_text("\n".join(te.trained_texts(kept)) + "\n")
    assert te.check_held_out([str(run)], [str(test)]) == 3
    command = [sys.executable, str(REPO / "train_embeddinggemma.py"), "check-held-out", str(run), "--held-out"]
    assert subprocess.run(command + [str(test)], capture_output=True, timeout=120).returncode == 0
    (run / "trained_texts.txt").write_text("a cat sleeps\n")
    failed = subprocess.run(command + [str(test)], capture_output=True, text=True, timeout=120)
    assert failed.returncode == 2 and "held-out texts were trained on" in failed.stderr


def test_length_grouped_batches_are_full_distinct_and_of_similar_length():
    from datasets import Dataset

    rng = np.random.default_rng(0)
    texts = [" ".join(["word"] * int(n)) + f" {i}" for i, n in enumerate(rng.integers(1, 60, size=300))]
    rows = {"anchor": texts, "positive": [t.upper() for t in texts]}
    rows["anchor"][5] = rows["anchor"][6]  # a repeated text must not share a batch with its twin
    sampler = te.LengthGroupedBatchSampler(Dataset.from_dict(rows), batch_size=16, seed=3, group=4)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 300 // 16 and all(len(b) == 16 for b in batches)
    flat = [i for b in batches for i in b]
    assert len(set(flat)) == len(flat)
    assert all(len({rows["anchor"][i] for i in b}) == 16 for b in batches)
    spread = np.mean([np.ptp([sampler.lengths[i] for i in b]) for b in batches])
    random_spread = np.mean([np.ptp([sampler.lengths[i] for i in b]) for b in np.array_split(rng.permutation(300), 18)])
    assert spread < random_spread / 3
    assert list(sampler) == batches  # the same epoch gives the same batches
    sampler.set_epoch(1)
    assert list(sampler) != batches


def test_token_budget_splits_long_runs_and_keeps_short_batches_full():
    from datasets import Dataset

    class Words:  # a tokenizer of words, with <bos> and <eos>
        def __call__(self, texts):
            return {"input_ids": [[0] + [1] * len(text.split()) + [2] for text in texts]}

    rng = np.random.default_rng(0)
    lengths = np.concatenate([rng.integers(3, 10, size=256), rng.integers(100, 300, size=64)])
    texts = [" ".join(["w"] * int(n)) + f" {i}" for i, n in enumerate(rng.permutation(lengths))]
    rows = Dataset.from_dict({"anchor": texts})
    budget = 512
    factory = te.TokenBudget(Words(), budget, {"anchor": "task: x | "})
    sampler = factory(rows, batch_size=16, seed=1, group=4)
    assert pickle.loads(pickle.dumps(factory)).max_tokens == budget  # the trainer pickles it with its arguments
    assert sampler.lengths[0] == len(texts[0].split()) + 2 + 3  # the prompt's words and <bos>/<eos> count
    batches = list(sampler)
    assert len(batches) == len(sampler)
    padded = [len(b) * max(sampler.lengths[i] for i in b) for b in batches]
    assert all(p <= budget or len(b) == 1 for p, b in zip(padded, batches)), max(padded)
    long = [b for b in batches if min(sampler.lengths[i] for i in b) > 100]
    assert long and all(len(b) < 16 for b in long)  # long texts train in smaller batches
    short = [b for b in batches if max(sampler.lengths[i] for i in b) < 20]
    # short ones are not cut (but for the last of a sorted run, which the run's long texts end: one per run)
    assert len(short) > 10 and sum(len(b) < 16 for b in short) <= -(-len(texts) // (16 * 4))
    flat = [i for b in batches for i in b]
    assert len(flat) == len(set(flat)) and len(flat) > 0.9 * len(texts)
    unbounded = te.LengthGroupedBatchSampler(rows, batch_size=16, seed=1, group=4)
    assert max(len(b) * max(unbounded.lengths[i] for i in b) for b in unbounded) > 16 * 100
    assert te.TrainingOptions().max_batch_tokens == 2048
    with pytest.raises(ValueError, match="--max-batch-tokens -1"):
        te.TrainingOptions(max_batch_tokens=-1)


def test_fit_head_is_the_least_squares_map(student, tmp_path):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(student), device="cpu", trust_remote_code=True)
    texts = [f"{s} is {a} {n}" for s in SUBJECTS for a in ACTIONS for n in ("today", "now", "again", "")] * 2
    texts = texts[:96]
    targets = F.normalize(torch.randn(len(texts), 48, generator=torch.Generator().manual_seed(0)), dim=-1).numpy()
    figures = te.fit_head(model, texts, targets, prompt="task: x | query: ", ridge=0.0)
    states = te.pooled_states(model, texts, "task: x | query: ").double().numpy()
    solution = np.linalg.lstsq(states, targets.astype(np.float64), rcond=None)[0]  # (hidden, dim)
    expected = F.normalize(torch.from_numpy(states @ solution), dim=-1)
    model.eval()
    with torch.no_grad():
        got = model.encode(texts, prompt="task: x | query: ", convert_to_tensor=True, normalize_embeddings=False)
    assert torch.allclose(got.double(), expected, atol=2e-4), (got.double() - expected).abs().max()
    assert figures["mean_cosine"] == pytest.approx(
        float((expected * torch.from_numpy(targets)).sum(-1).mean()), abs=1e-4
    )
    first, second = model[0].auto_model.dense
    assert float(first.weight.detach().norm()) == pytest.approx(
        float(second.weight.detach().norm()), rel=1e-4
    )  # balanced factors, not tiny ones


def test_budget_schedule_warms_up_and_decays_with_time():
    clock = te.TrainingClock(budget_minutes=1.0)
    factor = te.budget_schedule(clock, warmup=0.1)
    values = []
    for seconds in (0.0, 3.0, 6.0, 33.0, 60.0, 90.0):
        clock._elapsed = seconds
        values.append(factor(0))
    assert values == pytest.approx([1e-3, 0.5, 1.0, 0.5, 0.0, 0.0])
    assert clock.out_of_time() and not te.TrainingClock(None).out_of_time()


def test_training_hands_freed_memory_back_every_few_steps_and_after_each_evaluation(monkeypatch):
    from types import SimpleNamespace

    from transformers import TrainerControl

    calls, evaluations = [], []
    monkeypatch.setattr(te, "release_freed_memory", lambda: calls.append(state.global_step))
    callback = te.budget_callback(
        te.TrainingClock(None), lambda model, minutes, step: evaluations.append(step), eval_every_minutes=1e-9
    )
    state = SimpleNamespace(global_step=0)
    callback.on_train_begin(None, state, TrainerControl())  # evaluates at step 0, then trims
    for step in range(1, 2 * te.TRIM_EVERY_STEPS + 1):
        state.global_step = step
        callback.on_step_end(None, state, TrainerControl())
    assert evaluations == list(range(2 * te.TRIM_EVERY_STEPS + 1))
    # once after each evaluation, and once more at every TRIM_EVERY_STEPS-th step
    assert calls.count(te.TRIM_EVERY_STEPS) == calls.count(2 * te.TRIM_EVERY_STEPS) == 2
    assert len(calls) == len(evaluations) + 2


def test_release_freed_memory_runs_on_glibc_and_can_be_turned_off(monkeypatch):
    import platform

    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert te.release_freed_memory() is glibc
    monkeypatch.setenv("EMBEDDINGGEMMA_MALLOC_TRIM", "0")
    assert te.release_freed_memory() is False


def test_max_minutes_stops_on_time_with_a_checkpoint_a_model_and_a_curve(student, tiny_converted_dir, tmp_path):
    sts = write_sts(
        tmp_path / "sts-test.csv", [(f"a man is {a}", f"a man was {a}", float(i)) for i, a in enumerate(ACTIONS)]
    )
    rows = TOY_ROWS + [{"anchor": "a man is playing guitar"}]  # a held-out text: its row is dropped
    peak_before = te.peak_rss_gb()
    final = te.train(
        str(student),
        str(tmp_path / "run"),
        rows,
        teacher=str(tiny_converted_dir),
        nce_weight=0.0,
        gor_weight=0.0,
        max_minutes=0.15,
        batch_size=8,
        learning_rate=1e-3,
        save_steps=10**6,
        fit_head=16,
        held_out=[str(sts)],
        eval_sts_file=str(sts),
        eval_every_minutes=0.05,
        cache_dir=str(tmp_path / "cache"),
    )
    run = tmp_path / "run"
    summary = json.loads((run / "training_summary.json").read_text())
    # every option recorded, as given (TrainingOptions names them once)
    assert set(summary["options"]) == {item.name for item in dataclasses.fields(te.TrainingOptions)}
    assert summary["options"]["fit_head"] == 16 and summary["options"]["held_out"] == [str(sts)]
    assert summary["options"]["seed"] == 0 and summary["options"]["warmup"] == 0.1
    assert summary["resolved"]["bf16_chosen_by"] and summary["teacher"] == str(tiny_converted_dir)
    # the process's peak resident memory, in GB: here pytest's process, so whatever earlier tests loaded counts too
    assert 0.05 < peak_before <= summary["this_run"]["peak_rss_gb"] <= te.peak_rss_gb()
    # on time: no step starts once the 9 s are spent, and the run does not stop before
    # (the budget is checked at each step's end; the next step's start is recorded a moment later)
    assert summary["budget_seconds"] == 9.0 <= summary["training_seconds"]
    assert summary["last_step_started_at"] < 9.0 + 0.5
    assert summary["steps"] >= 1 and (final / "model.safetensors").is_file()
    checkpoint = run / f"checkpoint-{summary['steps']}"
    assert json.loads((checkpoint / "budget.json").read_text())["elapsed_seconds"] >= 9
    curve = [json.loads(line) for line in (run / "learning_curve.jsonl").read_text().splitlines()]
    assert curve[0]["step"] == 0 and curve[-1]["step"] == summary["steps"] and len(curve) >= 2
    assert [c["minutes"] for c in curve] == sorted(c["minutes"] for c in curve)
    assert set(curve[0]["spearman"]) == {"48", "32", "16"}
    assert "a man is playing guitar" not in (run / "trained_texts.txt").read_text()
    with pytest.raises(ValueError, match="--nce-weight 0"):
        te.train(str(student), str(tmp_path / "nce"), [{"anchor": "x"}], teacher=str(tiny_converted_dir))


def test_single_texts_train_under_their_prompt_and_pairs_under_query_and_document(
    student, tiny_converted_dir, tmp_path, monkeypatch
):
    """--text-prompt: single texts are distilled (teacher and student) under it, while pairs keep the query and
    document prompts in the same run; the head fit takes each text with its prompt; the learning curve records
    nDCG@10 on a retrieval set."""
    from sentence_transformers import SentenceTransformer

    from embeddinggemma_tools.retrieval import read_retrieval_set

    config = json.loads((student / "config.json").read_text())
    query, document, sts = (config["prompts"][name] for name in ("query", "document", "STS"))
    taught, tokenized = [], []
    teacher_embeddings = te.teacher_embeddings
    monkeypatch.setattr(
        te,
        "teacher_embeddings",
        lambda t, rows, prompts, *a, **k: taught.append(prompts) or teacher_embeddings(t, rows, prompts, *a, **k),
    )
    # what the student is given: sentence-transformers 6 passes the prompt to `preprocess`, 5.x prepends it for
    # `tokenize`
    tokenize = SentenceTransformer.tokenize
    monkeypatch.setattr(
        SentenceTransformer, "tokenize", lambda self, texts, **k: tokenized.extend(texts) or tokenize(self, texts, **k)
    )
    if hasattr(SentenceTransformer, "preprocess"):
        preprocess = SentenceTransformer.preprocess

        def spy(self, inputs, prompt=None, **kwargs):
            tokenized.extend((prompt or "") + text for text in inputs if isinstance(text, str))
            return preprocess(self, inputs, prompt=prompt, **kwargs)

        monkeypatch.setattr(SentenceTransformer, "preprocess", spy)
    folder = tmp_path / "set"
    (folder / "qrels").mkdir(parents=True)
    (folder / "queries.jsonl").write_text(json.dumps({"_id": "q0", "text": "a dog"}) + "\n")
    corpus = [{"_id": "d0", "text": "the dog runs"}, {"_id": "d1", "text": "mars"}]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(row) + "\n" for row in corpus))
    (folder / "qrels" / "test.tsv").write_text("q0\td0\t1\n")
    pairs = [{"anchor": r["anchor"], "positive": r["positive"]} for r in TOY_ROWS]
    singles = [{"anchor": f"{s} sat by {a}"} for s in SUBJECTS for a in ACTIONS]
    te.train(
        str(student),
        str(tmp_path / "run"),
        pairs + singles,
        teacher=str(tiny_converted_dir),
        nce_weight=0.0,
        gor_weight=0.0,
        text_prompt="STS",
        max_steps=4,
        batch_size=8,
        fit_head=32,
        eval_retrieval=[str(folder)],
        cache_dir=str(tmp_path / "cache"),
    )
    assert {"anchor": query, "positive": document, "negative": document} in taught
    assert {"anchor": sts} in taught
    trained = tokenized  # the head fit's, the training steps' and the evaluation's texts, prompts in
    assert any(t.startswith(sts) and t[len(sts) :] in {s["anchor"] for s in singles} for t in trained)
    assert not any(t.startswith(sts) and t[len(sts) :] in {p["anchor"] for p in pairs} for t in trained)
    assert not any(t.startswith(query) and t[len(query) :] in {s["anchor"] for s in singles} for t in trained)
    assert any(t.startswith(query) and t[len(query) :] in {p["anchor"] for p in pairs} for t in trained)
    assert any(t.startswith(document) and t[len(document) :] in {p["positive"] for p in pairs} for t in trained)
    curve = [json.loads(line) for line in (tmp_path / "run" / "learning_curve.jsonl").read_text().splitlines()]
    assert set(curve[-1]["ndcg@10"]["set"]) == {"48", "32", "16"} and "spearman" not in curve[-1]
    assert read_retrieval_set(folder).name == "set"
    with pytest.raises(ValueError, match="Unknown prompt"):
        te.train(
            str(student),
            str(tmp_path / "bad"),
            singles,
            teacher=str(tiny_converted_dir),
            nce_weight=0.0,
            gor_weight=0.0,
            text_prompt="no-such-prompt",
            max_steps=1,
            batch_size=8,
        )


def test_evaluate_reads_sick_and_prints_it_before_sts(tiny_converted_dir, tmp_path):
    words = ["guitar", "red", "dog", "planet", "music", "river"]
    pairs = [(f"a man plays {' '.join(words[: i % 6])}", "a man plays", float(i % 5) + 1) for i in range(20)]
    sick = write_sick(tmp_path / "SICK_test.txt", [(a, b, s, "NEUTRAL") for a, b, s in pairs])
    sts = write_sts(tmp_path / "sts-test.csv", pairs)
    assert te.evaluate(str(tiny_converted_dir), str(sick)) == pytest.approx(
        te.evaluate(str(tiny_converted_dir), str(sts))
    )
    result = subprocess.run(
        [sys.executable, str(REPO / "train_embeddinggemma.py"), "evaluate", str(tiny_converted_dir)]
        + ["--sick-file", str(sick), "--sts-file", str(sts), "--prompt-name", "STS"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert [line.split()[:2] for line in lines[:3]] == [["sick-r", "dim"]] * 3
    assert [line.split()[:2] for line in lines[3:]] == [["dim", "48"], ["dim", "32"], ["dim", "16"]]


def test_plot_learning_curve_writes_a_small_svg_and_a_table(tmp_path):
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text(
        json.dumps({"minutes": 0.0, "step": 0, "spearman": {"768": 40.0, "128": 38.0}})
        + "\n"
        + json.dumps({"minutes": 15.0, "step": 90, "spearman": {"768": 60.0, "128": 57.0}})
        + "\n"
    )
    second.write_text(
        json.dumps({"minutes": 15.01, "step": 0, "spearman": {"768": 60.5, "128": 57.0}})
        + "\n"
        + json.dumps(
            {"minutes": 20.0, "step": 30, "spearman": {"768": 61.0, "128": 58.0}, "ndcg@10": {"man": {"768": 70.5}}}
        )
        + "\n"
    )
    result = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "plot_learning_curve.py"), str(first), str(second)]
        + ["--output", str(tmp_path / "curve.svg"), "--teacher", "88.12,87.85"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "| 15.0 | 90 | 60.00 | 57.00 |" in result.stdout and "| 0.0 | 0 | 40.00 | 38.00 |" in result.stdout
    assert "60.50" not in result.stdout  # the second stage's start repeats the first stage's end
    assert "| 20.0 | 30 | 61.00 | 58.00 | 70.50 |" in result.stdout  # retrieval, where the run evaluated it
    svg = (tmp_path / "curve.svg").read_text()
    assert svg.startswith("<svg") and svg.count("<polyline") == 3 and len(svg) < 20_000


@pytest.mark.parametrize(
    "variant",
    [
        "A CAT SLEEPS",  # case
        "a  cat\tsleeps ",  # whitespace
        "a cat sleeps.",  # trailing punctuation
        "«a cat sleeps!»",  # punctuation at both ends
        "ａ ｃａｔ ｓｌｅｅｐｓ",  # full-width letters: NFKC
        "a cat sleeps",
    ],
)
def test_check_held_out_catches_near_duplicates(tmp_path, variant):
    test = write_sts(tmp_path / "sts-test.csv", [("a cat sleeps", "caf\u00e9 au lait", 2.0)])
    held_out = te.held_out_texts([test])
    assert te.drop_held_out([{"anchor": variant}], held_out)[1] == 1
    run = tmp_path / "run"
    run.mkdir()
    (run / "trained_texts.txt").write_text("\n".join(te.trained_texts([{"anchor": variant}])) + "\n")
    with pytest.raises(ValueError, match="1 held-out texts were trained on"):
        te.check_held_out([str(run)], [str(test)])
    decomposed = "cafe\u0301 au lait"  # NFD: e + combining accent
    assert te.drop_held_out([{"anchor": decomposed}], held_out)[1] == 1
    (run / "trained_texts.txt").write_text(decomposed + "\n")  # a listing written by hand, or before these keys
    with pytest.raises(ValueError, match="held-out texts were trained on"):
        te.check_held_out([str(run)], [str(test)])
    assert te.text_key(te.text_key(variant)) == te.text_key(variant)


def test_a_damaged_or_foreign_teacher_cache_is_never_used(tiny_converted_dir, tmp_path, capsys):
    prompts = {"anchor": "task: search result | query: ", "positive": "", "negative": ""}
    first = te.teacher_embeddings(str(tiny_converted_dir), TOY_ROWS, prompts, tmp_path)
    (cache,) = tmp_path.glob("teacher-*.npy")
    other = te.teacher_embeddings(str(tiny_converted_dir), TOY_ROWS[:-1], prompts, tmp_path)
    (other_cache,) = [p for p in tmp_path.glob("teacher-*.npy") if p != cache]
    # another text list's cache copied over this one (with its record): the key says so
    for suffix in (".npy", ".json"):
        cache.with_suffix(suffix).write_bytes(other_cache.with_suffix(suffix).read_bytes())
    again = te.teacher_embeddings(str(tiny_converted_dir), TOY_ROWS, prompts, tmp_path)
    assert "computed for another teacher, text list, prompt or dtype" in capsys.readouterr().err
    np.testing.assert_allclose(again, first, atol=1e-6)
    assert other.shape[0] == len(TOY_ROWS) - 1
    # damaged bytes: the checksum says so
    data = bytearray(cache.read_bytes())
    data[-8:] = b"\x00\x00\xc0\x7f" * 2  # NaNs in the last vector
    cache.write_bytes(bytes(data))
    again = te.teacher_embeddings(str(tiny_converted_dir), TOY_ROWS, prompts, tmp_path)
    assert "checksum does not match" in capsys.readouterr().err and np.isfinite(again).all()
    # a cache without its record (written before records existed): recomputed
    cache.with_suffix(".json").unlink()
    te.teacher_embeddings(str(tiny_converted_dir), TOY_ROWS, prompts, tmp_path)
    assert "cannot be read with its record" in capsys.readouterr().err
    te.teacher_embeddings(str(tiny_converted_dir), TOY_ROWS, prompts, tmp_path)
    assert capsys.readouterr().err == ""  # sound again: used silently


@slow
def test_sigterm_saves_a_checkpoint_and_resume_continues_it(student, tiny_converted_dir, tmp_path):
    """SIGTERM in the middle of a --max-minutes run: the step in progress finishes, a checkpoint with the clock is
    saved, the process exits 143; --resume continues the step count and the clock."""
    import signal
    import time

    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in TOY_ROWS))
    run = tmp_path / "run"
    command = [
        sys.executable, str(REPO / "train_embeddinggemma.py"), "train", str(student), str(run), "--data", str(data),
        "--teacher", str(tiny_converted_dir), "--batch-size", "8", "--save-steps", "100000",
        "--cache-dir", str(tmp_path / "cache"), "--learning-rate", "1e-3",
    ]  # fmt: skip
    process = subprocess.Popen([*command, "--max-minutes", "10"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not list((tmp_path / "cache").glob("teacher-*.json")) and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(10)  # training has begun
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 143, stderr[-2000:]
    assert "stopped by SIGTERM after step" in stderr and "--resume" in stderr
    (checkpoint,) = run.glob("checkpoint-*")
    steps = int(checkpoint.name.split("-")[1])
    elapsed = json.loads((checkpoint / "budget.json").read_text())["elapsed_seconds"]
    assert steps >= 1 and elapsed > 0
    # the same command with --resume and a step limit just past the checkpoint: continues, does not restart
    changed = subprocess.run([*command, "--max-minutes", "10", "--resume", "--learning-rate", "2e-3"],
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert changed.returncode != 0 and "learning_rate: 0.001 -> 0.002" in changed.stderr
    # the same command with --resume: continues the step count and the clock (stopped again the same way)
    process = subprocess.Popen([*command, "--max-minutes", "10", "--resume"], stderr=subprocess.PIPE, text=True)
    time.sleep(20)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 143, stderr[-2000:]
    last = max(run.glob("checkpoint-*"), key=lambda c: int(c.name.split("-")[1]))
    assert int(last.name.split("-")[1]) > steps
    assert json.loads((last / "budget.json").read_text())["elapsed_seconds"] > elapsed
    assert json.loads((last / "trainer_state.json").read_text())["global_step"] == int(last.name.split("-")[1])


def test_options_are_named_once_for_train_the_command_line_and_resume(tmp_path):
    parser = argparse.ArgumentParser()
    te.TrainingOptions.add_arguments(parser)
    assert te.TrainingOptions.from_arguments(parser.parse_args([])) == te.TrainingOptions()  # same defaults
    args = parser.parse_args(
        ["--fit-head", "--train-embeddings", "--no-group-by-length", "--held-out", "a", "--held-out", "b"]
        + ["--query-prompt", "none", "--seed", "3", "--teacher-dtype", "float32", "--max-minutes", "2"]
    )
    options = te.TrainingOptions.from_arguments(args)
    assert options.fit_head == 4096 and options.train_embeddings and not options.group_by_length
    assert options.held_out == ["a", "b"] and options.query_prompt is None and options.seed == 3
    assert options.teacher_dtype == "float32" and options.max_minutes == 2.0
    with pytest.raises(TypeError, match="freeze_embeddings"):  # an unknown keyword, before anything is read
        te.train("no-model", str(tmp_path / "out"), ["sick:none"], freeze_embeddings=True)
    with pytest.raises(ValueError, match="--max-minutes -1"):
        te.TrainingOptions(max_minutes=-1)
    # a run recorded under the earlier names resumes under today's, and a change is still named
    (tmp_path / "run_arguments.json").write_text(json.dumps({"freeze_embeddings": True, "fit_head_texts": 16}))
    te.check_resume_arguments(tmp_path, {"train_embeddings": False, "fit_head": 16}, resuming=True)
    (tmp_path / "run_arguments.json").write_text(json.dumps({"freeze_embeddings": True, "fit_head_texts": 16}))
    with pytest.raises(ValueError, match=r"train_embeddings: False -> True"):
        te.check_resume_arguments(tmp_path, {"train_embeddings": True, "fit_head": 16}, resuming=True)
    # a run recorded before the token budget had none: it resumes with --max-batch-tokens 0, not with a budget
    (tmp_path / "run_arguments.json").write_text(json.dumps({"fit_head": 16}))
    with pytest.raises(ValueError, match=r"max_batch_tokens: 0 -> 2048"):
        te.check_resume_arguments(tmp_path, {"fit_head": 16, "max_batch_tokens": 2048}, resuming=True)
    te.check_resume_arguments(tmp_path, {"fit_head": 16, "max_batch_tokens": 0}, resuming=True)
