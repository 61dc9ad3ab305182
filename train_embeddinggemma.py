# Copyright 2026 the embeddinggemma authors. Licensed under the Apache License, Version 2.0.
"""EmbeddingGemma's training recipe on sentence-transformers: NCE with in-batch and hard negatives, a spread-out
regulariser and embedding-matching distillation, all at every Matryoshka dim; then model souping and STS evaluation.

    python train_embeddinggemma.py train MODEL_DIR OUTPUT_DIR --data sick:../shared/data/sick/SICK_train.txt \\
        --data stsb:../shared/data/stsbenchmark/sts-train.csv --teacher TEACHER_DIR [--max-steps 200]
    python train_embeddinggemma.py soup OUTPUT_DIR CHECKPOINT [CHECKPOINT ...] [--weights 0.5,0.5]
    python train_embeddinggemma.py evaluate MODEL_DIR --sts-file ../shared/data/stsbenchmark/sts-test.csv \
        [--prompt-name STS]

Every loss is sentence-transformers' own, composed here (arXiv 2509.20354, section 3):
- NCE: `MultipleNegativesRankingLoss(hardness_mode="hard_negatives", hardness_strength=5)`, negatives gathered
  across processes under torchrun / accelerate launch (`gather_across_devices=True`);
- spread-out: `GlobalOrthogonalRegularizationLoss(mean_weight=0, aggregation="sum")`;
- distillation: `EmbedDistillLoss("l2")` to teacher embeddings computed once and cached on disk;
- Matryoshka: `MatryoshkaLoss` over the model's `matryoshka_dims` wraps the sum.
MODEL_DIR is a folder of ours (`convert_checkpoint.py`, any `--from`); the result is written in the same format.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


# ----------------------------------------------------------------------------------------------------------------
# Data: rows of {"anchor", "positive"[, "negative"]}
# ----------------------------------------------------------------------------------------------------------------


def read_sick(path: str | os.PathLike) -> list[dict]:
    """SICK: each ENTAILMENT pair is an (anchor, positive); a CONTRADICTION partner of the same anchor, when there
    is one, becomes its hard negative."""
    entail, contradict = [], {}
    with open(path, encoding="utf-8") as handle:
        for row in csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE):
            a, b, label = row["sentence_A"], row["sentence_B"], row["entailment_judgment"]
            if label == "ENTAILMENT":
                entail.append((a, b))
            elif label == "CONTRADICTION":
                contradict.setdefault(a, b)
                contradict.setdefault(b, a)
    rows = []
    for a, b in entail:
        row = {"anchor": a, "positive": b}
        if a in contradict:
            row["negative"] = contradict[a]
        rows.append(row)
    return rows


def read_sts(path: str | os.PathLike) -> list[tuple[str, str, float]]:
    """STS benchmark rows (genre, file, year, id, score, sentence1, sentence2), tab-separated, unquoted."""
    pairs = []
    with open(path, encoding="utf-8") as handle:
        for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) >= 7:
                pairs.append((row[5], row[6], float(row[4])))
    return pairs


def read_stsb_positives(path: str | os.PathLike, min_score: float = 4.0) -> list[dict]:
    """STS-B train: pairs scored >= `min_score` (of 5) as (anchor, positive)."""
    return [{"anchor": a, "positive": b} for a, b, score in read_sts(path) if score >= min_score]


def read_rows(path: str | os.PathLike) -> list[dict]:
    """(anchor, positive[, negative]) rows from .jsonl, .csv or .parquet."""
    path = Path(path)
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    elif path.suffix == ".csv":
        with open(path, encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    else:
        raise ValueError(f"{path} has an unknown extension; expected .jsonl, .csv or .parquet (or sick:/stsb:).")
    for position, row in enumerate(rows):
        if not isinstance(row.get("anchor"), str) or not isinstance(row.get("positive"), str):
            raise ValueError(f"{path} row {position} needs string 'anchor' and 'positive' columns; got {row}.")
    return [{k: row[k] for k in ("anchor", "positive", "negative") if row.get(k)} for row in rows]


def load_data(specs: list[str]) -> list[dict]:
    """`sick:PATH`, `stsb:PATH` or a plain file path, concatenated."""
    rows = []
    for spec in specs:
        kind, _, path = spec.partition(":") if spec.split(":", 1)[0] in ("sick", "stsb") else ("file", "", spec)
        rows += read_sick(path) if kind == "sick" else read_stsb_positives(path) if kind == "stsb" else read_rows(path)
    return rows


def split_by_columns(rows: list[dict]) -> dict[str, list[dict]]:
    """Rows with and without a hard negative, as two datasets (a dataset needs the same columns in every row)."""
    groups = {"triplets": [r for r in rows if "negative" in r], "pairs": [r for r in rows if "negative" not in r]}
    return {name: group for name, group in groups.items() if group}


# ----------------------------------------------------------------------------------------------------------------
# Teacher embeddings, cached
# ----------------------------------------------------------------------------------------------------------------


def teacher_embeddings(
    teacher: str, rows: list[dict], prompts: dict[str, str], cache_dir: str | os.PathLike, batch_size: int = 32
) -> np.ndarray:
    """(len(rows), columns, dim) teacher embeddings of every column (with its prompt), computed once: the cache key
    covers the teacher's files, the texts and the prompts, so a change to any of them recomputes."""
    from embed_corpus import fingerprint_folder

    columns = [c for c in ("anchor", "positive", "negative") if c in rows[0]]
    digest = hashlib.sha256(fingerprint_folder(teacher).encode())
    digest.update(json.dumps([[row[c] for c in columns] for row in rows]).encode())
    digest.update(json.dumps({c: prompts.get(c, "") for c in columns}, sort_keys=True).encode())
    cache = Path(cache_dir) / f"teacher-{digest.hexdigest()[:24]}.npy"
    if cache.is_file():
        return np.load(cache)
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(teacher), device="cpu", trust_remote_code=True)
    vectors = np.stack(
        [model.encode([row[c] for row in rows], prompt=prompts.get(c, ""), batch_size=batch_size) for c in columns],
        axis=1,
    ).astype(np.float32)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{cache.name}.tmp.npy")
    np.save(tmp, vectors)
    os.replace(tmp, cache)
    return vectors


# ----------------------------------------------------------------------------------------------------------------
# The loss
# ----------------------------------------------------------------------------------------------------------------


class EmbeddingGemmaRecipeLoss(nn.Module):
    """nce_weight * MNRL(hard negatives) + gor_weight * GOR(spread-out) + distill_weight * EmbedDistill(l2), on one
    forward pass of every text column. Wrap in `MatryoshkaLoss` (see `recipe_loss`) for every Matryoshka dim.
    `labels`: teacher embeddings (batch, columns, dim), or None without distillation."""

    def __init__(
        self,
        model,
        nce_weight: float = 1.0,
        gor_weight: float = 1.0,
        distill_weight: float = 1.0,
        scale: float = 20.0,
        hardness_strength: float = 5.0,
        gather_across_devices: bool = True,
    ):
        super().__init__()
        from sentence_transformers.sentence_transformer.losses import (
            EmbedDistillLoss,
            GlobalOrthogonalRegularizationLoss,
            MultipleNegativesRankingLoss,
        )

        self.model = model
        self.weights = {"nce": nce_weight, "gor": gor_weight, "distill": distill_weight}
        self.nce = MultipleNegativesRankingLoss(
            model,
            scale=scale,
            gather_across_devices=gather_across_devices,
            hardness_mode="hard_negatives",
            hardness_strength=hardness_strength,
        )
        self.gor = GlobalOrthogonalRegularizationLoss(model, mean_weight=0, aggregation="sum")
        self.distill = EmbedDistillLoss(model, distance_metric="l2")

    def forward(self, sentence_features, labels=None):
        embeddings = [self.model(features)["sentence_embedding"] for features in sentence_features]
        return self.compute_loss_from_embeddings(embeddings, labels)

    def compute_loss_from_embeddings(self, embeddings: list[torch.Tensor], labels=None) -> torch.Tensor:
        parts = self.components(embeddings, labels)
        return sum(self.weights[name] * value for name, value in parts.items())

    def components(self, embeddings: list[torch.Tensor], labels=None) -> dict[str, torch.Tensor]:
        """The unweighted terms, by name."""
        parts = {}
        if self.weights["nce"]:
            parts["nce"] = self.nce.compute_loss_from_embeddings(embeddings, labels)
        if self.weights["gor"]:
            parts["gor"] = sum(self.gor.compute_loss_from_embeddings(embeddings).values())
        if self.weights["distill"]:
            if labels is None or not torch.is_tensor(labels) or labels.dim() != 3:
                raise ValueError(
                    "Distillation needs teacher embeddings as labels, shaped (batch, columns, dim); "
                    "pass --teacher or set --distill-weight 0."
                )
            # At a Matryoshka dim d the student is the first d dims re-normalised; compare it with the teacher's
            # first d dims re-normalised too (MatryoshkaLoss only truncates the labels).
            dim = embeddings[0].shape[-1]
            teachers = [F.normalize(labels[:, i, :dim].float(), dim=-1) for i in range(len(embeddings))]
            parts["distill"] = self.distill.compute_loss_from_embeddings(embeddings, teachers)
        return parts


def recipe_loss(model, matryoshka_dims: list[int], **weights):
    """`MatryoshkaLoss(EmbeddingGemmaRecipeLoss)`: the whole recipe at every Matryoshka dim, equally weighted."""
    from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss

    return MatryoshkaLoss(model, EmbeddingGemmaRecipeLoss(model, **weights), matryoshka_dims=list(matryoshka_dims))


# ----------------------------------------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------------------------------------


def train(
    model_dir: str,
    output_dir: str,
    data: list[str] | list[dict],
    teacher: str | None = None,
    *,
    nce_weight: float = 1.0,
    gor_weight: float = 1.0,
    distill_weight: float = 1.0,
    max_steps: int = 100,
    batch_size: int = 32,
    learning_rate: float = 2e-5,
    warmup: float = 0.1,  # a fraction of max_steps
    query_prompt: str | None = "query",
    document_prompt: str | None = "document",
    bf16: bool | None = None,
    gradient_checkpointing: bool = True,
    save_steps: int = 50,
    resume: bool = False,
    seed: int = 0,
    cache_dir: str | None = None,
    logging_steps: int = 10,
) -> Path:
    """Fine-tunes MODEL_DIR with the recipe; returns OUTPUT_DIR/final (our format). Checkpoints go to
    OUTPUT_DIR/checkpoint-N; `resume=True` continues from the last one."""
    from datasets import Dataset, DatasetDict
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )

    rows = load_data(data) if data and isinstance(data[0], str) else list(data)
    if not rows:
        raise ValueError("No training rows: check --data.")
    if distill_weight and not teacher:
        raise ValueError("Distillation needs --teacher (an embedding model folder), or --distill-weight 0.")
    model = SentenceTransformer(model_dir, device="cpu", trust_remote_code=True)
    config = model[0].auto_model.config
    prompts = {"anchor": config.prompt_for(query_prompt) if query_prompt else ""}
    prompts["positive"] = prompts["negative"] = config.prompt_for(document_prompt) if document_prompt else ""

    datasets = {}
    for name, group in split_by_columns(rows).items():
        columns = {c: [row[c] for row in group] for c in ("anchor", "positive", "negative") if c in group[0]}
        if distill_weight:
            vectors = teacher_embeddings(teacher, group, prompts, cache_dir or Path(output_dir) / "teacher-cache")
            if vectors.shape[-1] != config.embedding_dim:
                raise ValueError(
                    f"The teacher's embeddings have {vectors.shape[-1]} dims but the student's {config.embedding_dim}; "
                    "convert the student with --embedding-dim matching the teacher (e.g. 768)."
                )
            columns["label"] = vectors.tolist()
        datasets[name] = Dataset.from_dict(columns)
    train_dataset = DatasetDict(datasets) if len(datasets) > 1 else next(iter(datasets.values()))

    import transformers

    # transformers 5 takes the warm-up ratio as a float `warmup_steps`; 4.x has `warmup_ratio`
    warmup_args = (
        {"warmup_steps": warmup} if int(transformers.__version__.split(".")[0]) >= 5 else {"warmup_ratio": warmup}
    )
    if bf16 is None:
        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()  # CPUs without native bf16: slower
    args = SentenceTransformerTrainingArguments(
        output_dir=str(output_dir),
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        **warmup_args,
        bf16=bf16,
        gradient_checkpointing=gradient_checkpointing,
        save_steps=save_steps,
        save_total_limit=2,
        logging_steps=logging_steps,
        report_to=[],
        seed=seed,
        data_seed=seed,
        dataloader_drop_last=True,
        prompts=prompts,
        batch_sampler="no_duplicates",
        use_cpu=not torch.cuda.is_available(),
    )
    loss = recipe_loss(
        model, config.matryoshka_dims, nce_weight=nce_weight, gor_weight=gor_weight, distill_weight=distill_weight
    )
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train_dataset, loss=loss)
    has_checkpoint = any(Path(output_dir).glob("checkpoint-*"))
    trainer.train(resume_from_checkpoint=True if resume and has_checkpoint else None)
    if trainer.state.global_step == 0:
        raise ValueError(
            f"No training step ran: {len(rows)} rows give no full batch of {batch_size} distinct texts per dataset "
            "(batches skip duplicates and drop the last partial one). Add data or lower --batch-size."
        )
    final = Path(output_dir) / "final"
    if trainer.is_world_process_zero():
        model[0].auto_model.save_pretrained(final)
        model.tokenizer.save_pretrained(final)
    return final


def soup(output_dir: str, checkpoints: list[str], weights: list[float] | None = None) -> Path:
    """Weighted average of the weights of checkpoints of one architecture (uniform by default), saved with the
    first checkpoint's config, code and tokenizer."""
    from safetensors.torch import load_file, save_file

    if len(checkpoints) < 2:
        raise ValueError("A soup needs at least two checkpoints.")
    weights = weights or [1.0 / len(checkpoints)] * len(checkpoints)
    if len(weights) != len(checkpoints) or abs(sum(weights) - 1.0) > 1e-6:
        raise ValueError(f"--weights {weights} must give one weight per checkpoint, summing to 1.")
    states = [load_file(Path(c) / "model.safetensors") for c in checkpoints]
    for checkpoint, state in zip(checkpoints[1:], states[1:]):
        if state.keys() != states[0].keys() or any(state[k].shape != states[0][k].shape for k in state):
            raise ValueError(f"{checkpoint} does not have the architecture of {checkpoints[0]}: keys or shapes differ.")
    averaged = {
        key: sum(w * s[key].double() for w, s in zip(weights, states)).to(states[0][key].dtype) for key in states[0]
    }
    output = Path(output_dir)
    if output.exists():
        raise ValueError(f"{output} exists; choose a new folder for the soup.")
    shutil.copytree(checkpoints[0], output, ignore=shutil.ignore_patterns("*.safetensors", "optimizer.pt", "*.bin"))
    save_file(averaged, output / "model.safetensors", metadata={"format": "pt"})
    return output


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation with average ranks for ties."""

    def ranks(values):
        order = np.argsort(values, kind="mergesort")
        ranked = np.empty(len(values))
        ranked[order] = np.arange(len(values))
        for value in np.unique(values):  # average ranks of ties
            tied = values == value
            ranked[tied] = ranked[tied].mean()
        return ranked

    return float(np.corrcoef(ranks(np.asarray(x)), ranks(np.asarray(y)))[0, 1])


def evaluate(model_dir: str, sts_file: str, prompt_name: str | None = None, batch_size: int = 32) -> dict[int, float]:
    """STS Spearman (cosine, x100) at each Matryoshka dim, for our folders and any SentenceTransformer folder."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cpu", trust_remote_code=True)
    pairs = read_sts(sts_file)
    if not pairs:
        raise ValueError(f"{sts_file} has no STS rows (genre, file, year, id, score, sentence1, sentence2).")
    if prompt_name is not None and prompt_name not in model.prompts:
        raise ValueError(f"Unknown --prompt-name {prompt_name!r}; this model knows {sorted(model.prompts)}.")
    texts = sorted({t for a, b, _ in pairs for t in (a, b)})
    vectors = dict(
        zip(texts, model.encode(texts, prompt_name=prompt_name, batch_size=batch_size, convert_to_numpy=True))
    )
    full = model.get_sentence_embedding_dimension()
    config = getattr(getattr(model[0], "auto_model", None), "config", None)
    dims = list(getattr(config, "matryoshka_dims", None) or [full] + [d for d in (512, 256, 128) if d < full])
    results = {}
    for dim in dims:
        a = np.stack([vectors[x][:dim] for x, _, _ in pairs])
        b = np.stack([vectors[y][:dim] for _, y, _ in pairs])
        cosine = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
        results[dim] = 100 * spearman(cosine, np.array([s for _, _, s in pairs]))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    t = commands.add_parser("train", help="fine-tune with the recipe")
    t.add_argument("model_dir")
    t.add_argument("output_dir")
    t.add_argument("--data", action="append", required=True, help="sick:PATH, stsb:PATH or a .jsonl/.csv/.parquet file")
    t.add_argument("--teacher", help="teacher embedding model folder (SentenceTransformer-loadable)")
    for name, default in (("nce", 1.0), ("gor", 1.0), ("distill", 1.0)):
        t.add_argument(f"--{name}-weight", type=float, default=default)
    t.add_argument("--max-steps", type=int, default=100)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--learning-rate", type=float, default=2e-5)
    t.add_argument("--query-prompt", default="query", help="prompt name for anchors ('none' for none)")
    t.add_argument("--document-prompt", default="document", help="prompt name for positives/negatives")
    t.add_argument("--save-steps", type=int, default=50)
    t.add_argument("--resume", action="store_true", help="continue from the last checkpoint in OUTPUT_DIR")
    t.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false")
    t.add_argument(
        "--bf16", action="store_true", default=None, help="bfloat16 mixed precision (default: on GPUs with bf16)"
    )
    t.add_argument("--cache-dir", help="teacher-embedding cache (default OUTPUT_DIR/teacher-cache)")
    t.add_argument("--seed", type=int, default=0)
    s = commands.add_parser("soup", help="average checkpoints")
    s.add_argument("output_dir")
    s.add_argument("checkpoints", nargs="+")
    s.add_argument("--weights", type=lambda v: [float(w) for w in v.split(",")])
    e = commands.add_parser("evaluate", help="STS Spearman at each Matryoshka dim")
    e.add_argument("model_dir")
    e.add_argument("--sts-file", required=True)
    e.add_argument("--prompt-name")
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            final = train(
                args.model_dir,
                args.output_dir,
                args.data,
                args.teacher,
                nce_weight=args.nce_weight,
                gor_weight=args.gor_weight,
                distill_weight=args.distill_weight,
                max_steps=args.max_steps,
                batch_size=args.batch_size,
                learning_rate=args.learning_rate,
                query_prompt=None if args.query_prompt == "none" else args.query_prompt,
                document_prompt=None if args.document_prompt == "none" else args.document_prompt,
                bf16=args.bf16,
                gradient_checkpointing=args.gradient_checkpointing,
                save_steps=args.save_steps,
                resume=args.resume,
                seed=args.seed,
                cache_dir=args.cache_dir,
            )
            print(f"Wrote {final}")
        elif args.command == "soup":
            print(f"Wrote {soup(args.output_dir, args.checkpoints, args.weights)}")
        else:
            for dim, score in evaluate(args.model_dir, args.sts_file, args.prompt_name).items():
                print(f"dim {dim} spearman {score:.2f}")
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
