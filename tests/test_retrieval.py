"""Retrieval evaluation (embeddinggemma_tools/retrieval.py, `train_embeddinggemma.py evaluate --retrieval`): trec_eval's
nDCG@10, recall@1/10 and MRR@10 on a hand-computed case, BEIR folders read in both formats, and clear errors."""

import json

import numpy as np
import pytest

import train_embeddinggemma as te
from embeddinggemma_tools.retrieval import (
    RetrievalSetError,
    evaluate_retrieval,
    read_retrieval_set,
    retrieval_metrics,
)


def test_metrics_equal_hand_computed_trec_eval_values():
    scores = np.array([[0.9, 0.5, 0.1], [0.5, 0.1, 0.9]])
    qrels = {"q1": {"d2": 1}, "q2": {"d1": 2, "d3": 1}}
    got = retrieval_metrics(scores, ["q1", "q2"], ["d1", "d2", "d3"], qrels)
    # q1: d2 at rank 2: nDCG (1/log2 3) / 1; q2: d3, d1: (1 + 2/log2 3) / (2 + 1/log2 3) (linear gain, as trec_eval)
    ndcg = (1 / np.log2(3) + (1 + 2 / np.log2(3)) / (2 + 1 / np.log2(3))) / 2
    assert got == pytest.approx({"ndcg@10": 100 * ndcg, "recall@1": 25.0, "recall@10": 100.0, "mrr@10": 75.0})


def write_set(folder, queries, corpus, qrels, form="jsonl"):
    (folder / "qrels").mkdir(parents=True)
    if form == "jsonl":
        (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries))
        (folder / "corpus.jsonl").write_text(
            "".join(json.dumps({"_id": d, "title": "", "text": t}) + "\n" for d, t in corpus)
        )
    else:
        (folder / "queries.tsv").write_text("".join(f"{q}\t{t}\n" for q, t in queries))
        (folder / "corpus.tsv").write_text("".join(f"{d}\t\t{t}\n" for d, t in corpus))
    (folder / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{s}\n" for q, d, s in qrels)
    )
    return folder


TEXTS = ["a man is playing guitar", "the red planet mars", "a dog runs in the park", "jupiter is a gas giant"]


@pytest.mark.parametrize("form", ["jsonl", "tsv"])
def test_a_document_equal_to_its_query_is_found_first_at_every_dim(tiny_converted_dir, tmp_path, form):
    from sentence_transformers import SentenceTransformer

    queries = [(f"q{i}", t) for i, t in enumerate(TEXTS)]
    corpus = [(f"d{i}", t) for i, t in enumerate(TEXTS)] + [("noise", "the blue sky with a cat")]
    dataset = read_retrieval_set(
        write_set(tmp_path / "set", queries, corpus, [(f"q{i}", f"d{i}", 1) for i in range(4)], form)
    )
    model = SentenceTransformer(str(tiny_converted_dir), device="cpu", trust_remote_code=True)
    results = evaluate_retrieval(model, dataset, None, None)  # no prompts: identical texts, cosine 1
    assert set(results) == {48, 32, 16}
    for figures in results.values():
        assert figures == pytest.approx({"ndcg@10": 100.0, "recall@1": 100.0, "recall@10": 100.0, "mrr@10": 100.0})
    seen = []
    encode = model.encode
    model.encode = lambda texts, **kwargs: seen.append(texts) or encode(texts, **kwargs)
    evaluate_retrieval(model, dataset)  # the query prompt on queries, the document prompt on documents
    assert all(t.startswith("task: search result | query: ") for t in seen[0])
    assert all(t.startswith("title: none | text: ") for t in seen[1])


def test_evaluate_command_prints_retrieval_lines_and_refuses_bad_folders(tiny_converted_dir, tmp_path, capsys):
    folder = write_set(
        tmp_path / "tiny-set", [("q0", TEXTS[0])], [("d0", TEXTS[0]), ("d1", TEXTS[1])], [("q0", "d0", 1)]
    )
    assert (
        te.main(
            [
                "evaluate",
                str(tiny_converted_dir),
                "--retrieval",
                str(folder),
                "--query-prompt-name",
                "none",
                "--document-prompt-name",
                "none",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("retrieval tiny-set dim 48 ndcg@10 100.00 recall@1 100.00") and len(lines) == 3
    two = write_set(
        tmp_path / "two",
        [("q0", TEXTS[0]), ("q1", TEXTS[1])],
        [("d0", TEXTS[0]), ("d1", TEXTS[1])],
        [("q0", "d0", 1), ("q1", "d1", 1)],
    )
    assert te.main(["evaluate", str(tiny_converted_dir), "--retrieval", str(two), "--retrieval-queries", "1"]) == 0
    assert capsys.readouterr().out.startswith("retrieval two[:1] dim 48 ndcg@10 ")
    (folder / "qrels" / "test.tsv").write_text("q0\tmissing\t1\n")
    assert te.main(["evaluate", str(tiny_converted_dir), "--retrieval", str(folder)]) == 2
    assert "judges ids that" in capsys.readouterr().err
    with pytest.raises(RetrievalSetError, match="lacks corpus.jsonl"):
        read_retrieval_set(tmp_path)


def test_held_out_sets_are_built_in_beir_layout(tmp_path):
    """experiments/build_retrieval_sets.py: roff to text, and a set it writes reads back with one relevant each."""
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("builder", REPO / "experiments" / "build_retrieval_sets.py")
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    roff = '.\\" comment\n.SH NAME\nls \\- list directory contents\n.B ls\n\\fB\\-a\\fR, \\fB\\-\\-all\\fR\n'
    assert builder.roff_to_text(roff) == "ls - list directory contents\nls\n-a, --all"
    pairs = [("f", "return the sum of two numbers", "def f(a, b):\n    return a + b"), ("g", "say hello", "print(1)")]
    summary = builder.write_set(tmp_path / "set", pairs, {"source": "test"}, distractors=["unrelated"])
    assert summary == {"source": "test", "queries": 2, "corpus": 3}
    dataset = read_retrieval_set(tmp_path / "set")
    assert dataset.queries == {"q0": "return the sum of two numbers", "q1": "say hello"}
    assert dataset.qrels == {"q0": {"d0": 1.0}, "q1": {"d1": 1.0}} and dataset.corpus["d2"] == ("", "unrelated")


def test_head_keeps_the_first_queries_their_documents_and_as_many_others(tmp_path):
    from embeddinggemma_tools.retrieval import head

    queries = [(f"q{i}", f"query {i}") for i in range(5)]
    corpus = [(f"d{i}", f"document {i}") for i in range(9)]
    dataset = read_retrieval_set(
        write_set(tmp_path / "set", queries, corpus, [(f"q{i}", f"d{8 - i}", 1) for i in range(5)])
    )
    small = head(dataset, 2)
    assert small.name == "set[:2]" and list(small.queries) == ["q0", "q1"]
    assert small.qrels == {"q0": {"d8": 1.0}, "q1": {"d7": 1.0}}
    assert set(small.corpus) == {"d8", "d7", "d0", "d1"}  # judged, then the first others: twice the judged
    assert head(dataset, 0) is dataset and head(dataset, 5) is dataset


def test_a_retrieval_folder_is_held_out_of_training_and_checked(tmp_path):
    folder = write_set(
        tmp_path / "man-pages",
        [("q0", "list directory contents")],
        [("d0", "List  information about the FILEs."), ("d1", "other")],
        [("q0", "d0", 1)],
    )
    keys = te.held_out_texts([str(folder)])
    assert {te.text_key("list directory contents"), te.text_key("list information about the files"), "other"} <= keys
    rows = [{"anchor": "List directory contents!"}, {"anchor": "kept", "positive": "list information about the FILEs"}]
    kept, dropped = te.drop_held_out(rows + [{"anchor": "a new text"}], keys)
    assert dropped == 2 and kept == [{"anchor": "a new text"}]
    run = tmp_path / "run"
    run.mkdir()
    (run / "trained_texts.txt").write_text("\n".join(te.trained_texts(rows)) + "\n")
    with pytest.raises(ValueError, match="2 held-out texts were trained on"):
        te.check_held_out([str(run)], [str(folder)])
