"""Held-out retrieval sets for the recipe's evaluation, in BEIR's layout (embeddinggemma_tools/retrieval.py), built from
text that nobody in this project wrote and that training never sees (`check-held-out` and the data fetcher exclude
it):

- man-pages:     a manual page's NAME summary ("ls - list directory contents") -> its DESCRIPTION section;
- python-stdlib: a function's docstring (first paragraph) -> its code without the docstring, from the running
                 Python's standard library;
- stsb-test:     an STS-B test sentence -> its paraphrase (score >= 4.0) among every second sentence of the test set.

    python experiments/build_retrieval_sets.py OUT_DIR [--size 800] [--seed 0] [--stsb-test FILE]

Each set is OUT_DIR/NAME/{corpus.jsonl, queries.jsonl, qrels/test.tsv} plus source.json (where it came from).
"""

import argparse
import ast
import csv
import gzip
import json
import random
import re
import sys
import sysconfig
from pathlib import Path


MAN_DIRS = ("/usr/share/man/man1", "/usr/share/man/man8")


def roff_to_text(source: str) -> str:
    """Plain text from a man page's roff: requests dropped, font escapes removed, paragraphs joined."""
    lines = []
    for line in source.splitlines():
        if line.startswith(('.\\"', "'\\\"")):
            continue
        if line.startswith("."):
            request = line.split(None, 1)
            if request[0] in (".B", ".I", ".BR", ".IR", ".RB", ".RI", ".BI", ".IB") and len(request) > 1:
                line = request[1].replace('"', "")
            else:
                lines.append("")
                continue
        line = re.sub(r"\\f[BIRP]|\\f\(..|\\f\[[^]]*\]", "", line)
        line = line.replace("\\-", "-").replace("\\(em", "-").replace("\\(en", "-").replace("\\e", "\\")
        line = re.sub(r"\\[&/,|^~ ]|\\\*\(..|\\\*.|\\\(..", "", line)
        lines.append(line)
    text = "\n".join(lines)
    return re.sub(r"\n{2,}", "\n\n", re.sub(r"[ \t]+", " ", text)).strip()


def man_page_pairs() -> list[tuple[str, str, str]]:
    """(name, summary, description) of the installed English man pages."""
    pairs, seen = [], set()
    for folder in MAN_DIRS:
        for path in sorted(Path(folder).glob("*.gz")) if Path(folder).is_dir() else []:
            try:
                source = gzip.open(path, "rt", encoding="utf-8", errors="replace").read()
            except (OSError, EOFError):
                continue
            sections = re.split(r"^\.SH\s+", source, flags=re.M)
            named = {s.split("\n", 1)[0].strip().strip('"').upper(): s.split("\n", 1)[-1] for s in sections[1:]}
            name, description = named.get("NAME"), named.get("DESCRIPTION")
            if not name or not description or ".so " in source[:200]:
                continue
            name = roff_to_text(name).replace("\n", " ")
            if " - " not in name:
                continue
            command, summary = (part.strip() for part in name.split(" - ", 1))
            description = roff_to_text(description)[:2000]
            if len(summary.split()) < 3 or len(description.split()) < 20 or summary in seen:
                continue
            seen.add(summary)
            pairs.append((command, summary, description))
    return pairs


def stdlib_pairs() -> list[tuple[str, str, str]]:
    """(qualified name, docstring's first paragraph, code without the docstring) of the standard library's
    functions."""
    root = Path(sysconfig.get_paths()["stdlib"])
    pairs = []
    for path in sorted(root.rglob("*.py")):
        if any(part in ("test", "tests", "idlelib", "site-packages", "lib2to3") for part in path.parts):
            continue
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            docstring = ast.get_docstring(node)
            if not docstring or node.name.startswith("_"):
                continue
            summary = docstring.split("\n\n", 1)[0].replace("\n", " ").strip()
            node.body = node.body[1:] or [ast.Pass()]
            code = ast.unparse(node)
            if len(summary.split()) < 5 or not 80 <= len(code) <= 2000:
                continue
            module = path.relative_to(root).with_suffix("").as_posix().replace("/", ".")
            pairs.append((f"{module}.{node.name}", summary, code))
    return pairs


def stsb_pairs(path: Path) -> tuple[list[tuple[str, str, str]], list[str]]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for fields in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(fields) >= 7:
                rows.append((float(fields[4]), fields[5], fields[6]))
    pairs = [(f"stsb-{i}", a, b) for i, (score, a, b) in enumerate(rows) if score >= 4.0]
    return pairs, sorted({b for _, _, b in rows})


def write_set(folder: Path, pairs, source: dict, distractors=()) -> dict:
    """queries = the pairs' first texts, corpus = their second texts (+ distractors), one relevant document each."""
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    documents = {}
    for _, _, document in pairs:
        documents.setdefault(document, f"d{len(documents)}")
    for document in distractors:
        documents.setdefault(document, f"d{len(documents)}")
    with open(folder / "corpus.jsonl", "w", encoding="utf-8") as handle:
        for text, identifier in documents.items():
            handle.write(json.dumps({"_id": identifier, "title": "", "text": text}) + "\n")
    with (
        open(folder / "queries.jsonl", "w", encoding="utf-8") as handle,
        open(folder / "qrels" / "test.tsv", "w", encoding="utf-8") as qrels,
    ):
        qrels.write("query-id\tcorpus-id\tscore\n")
        for number, (_, query, document) in enumerate(pairs):
            handle.write(json.dumps({"_id": f"q{number}", "text": query}) + "\n")
            qrels.write(f"q{number}\t{documents[document]}\t1\n")
    summary = {**source, "queries": len(pairs), "corpus": len(documents)}
    (folder / "source.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir")
    parser.add_argument("--size", type=int, default=800, help="queries per set (a random sample)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--stsb-test", default=str(Path(__file__).resolve().parents[2] / "shared/data/stsbenchmark/sts-test.csv")
    )
    args = parser.parse_args(argv)
    out = Path(args.out_dir)
    rng = random.Random(args.seed)
    built = {}
    man = man_page_pairs()
    if man:
        sample = rng.sample(man, min(args.size, len(man)))
        built["man-pages"] = write_set(
            out / "man-pages",
            sample,
            {"source": f"the installed man pages ({', '.join(MAN_DIRS)})", "licence": "each page's own"},
        )
    stdlib = stdlib_pairs()
    sample = rng.sample(stdlib, min(args.size, len(stdlib)))
    built["python-stdlib"] = write_set(
        out / "python-stdlib",
        sample,
        {
            "source": f"Python {sys.version.split()[0]} standard library ({sysconfig.get_paths()['stdlib']})",
            "licence": "PSF-2.0",
        },
    )
    if Path(args.stsb_test).is_file():
        pairs, seconds = stsb_pairs(Path(args.stsb_test))
        built["stsb-test"] = write_set(
            out / "stsb-test", pairs, {"source": args.stsb_test, "licence": "STS-B (CC BY-SA 4.0 and others)"}, seconds
        )
    for name, summary in built.items():
        print(f"{name}: {summary['queries']} queries in {summary['corpus']} documents")
    return 0


if __name__ == "__main__":
    sys.exit(main())
