"""Diverse training text for the recipe, from the package registry pip is configured with: the long descriptions
(READMEs) that Python packages publish in their wheels' METADATA, with each package's licence.

    python scripts/fetch_registry_text.py OUT_DIR [--index file:///opt/pypi/simple ...] [--max-packages N]

Writes OUT_DIR/texts.jsonl (single texts, for distillation: {"anchor"}), OUT_DIR/pairs.jsonl (retrieval-shaped rows,
{"anchor", "positive"}: a package's summary -> its first paragraph, "package: heading" -> the section's first
paragraph), OUT_DIR/code-pairs.jsonl (code retrieval: a public function's docstring, first paragraph -> its code
without the docstring, from the package's own Python files; at most --code-per-package a package) and
OUT_DIR/sources.jsonl (one row per package: name, version, the file it came from, its licence, and how many texts,
pairs and code pairs it gave). The data files are `--data` files of `train_embeddinggemma.py train`. Idempotent: a
second run rewrites the same files.

Held out, never written: the Python standard library's source and documentation (packages named like stdlib modules
are skipped, and a function whose code or docstring equals one of the standard library's, as vendored copies and
backports have, is left out), man pages, STS-B test and SICK test; `check-held-out` checks them after training
(STS-B and SICK test files, and the retrieval sets of experiments/build_retrieval_sets.py).
"""

import argparse
import ast
import email.parser
import json
import random
import re
import sys
import sysconfig
import urllib.parse
import urllib.request
import zipfile
from html.parser import HTMLParser
from pathlib import Path


STDLIB = set(sys.stdlib_module_names)


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.links += [value for name, value in attrs if name == "href"]


def configured_indexes() -> list[str]:
    """The simple-index URLs pip is configured with (pip config list), file:// ones included."""
    import subprocess

    listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    urls = []
    for line in listing.splitlines():
        if "index-url" in line:
            urls += line.split("=", 1)[1].strip().strip("'\"").split()
    return urls


def newest_wheels(index: str) -> dict[str, str]:
    """{project: URL of its newest wheel} on a simple index."""
    root = index.rstrip("/") + "/"
    parser = Links()
    local = urllib.parse.urlparse(root)
    if local.scheme == "file" and not Path(urllib.request.url2pathname(local.path), "index.html").is_file():
        parser.links = sorted(f"{p.name}/" for p in Path(urllib.request.url2pathname(local.path)).iterdir())
    else:
        with urllib.request.urlopen(root + ("index.html" if local.scheme == "file" else "")) as response:
            parser.feed(response.read().decode())
    wheels = {}
    for project in parser.links:
        base = urllib.parse.urljoin(root, project)
        if urllib.parse.urlparse(base).scheme == "file" and base.endswith("/"):
            base += "index.html"
        try:
            with urllib.request.urlopen(base) as response:
                files = Links()
                files.feed(response.read().decode())
        except OSError:
            continue
        candidates = [urllib.parse.urljoin(base, link).split("#", 1)[0] for link in files.links if ".whl" in link]
        if candidates:
            wheels[project.strip("/")] = sorted(candidates)[-1]
    return wheels


def metadata(url: str):
    path = urllib.request.url2pathname(urllib.parse.urlparse(url).path)
    with zipfile.ZipFile(path) as wheel:
        name = next((n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")), None)
        if name is None:
            return None
        return email.parser.Parser().parsestr(wheel.read(name).decode("utf-8", errors="replace"))


def licence_of(message) -> str:
    classifiers = [c.split("::")[-1].strip() for c in message.get_all("Classifier") or [] if c.startswith("License")]
    expression = message.get("License-Expression") or (message.get("License") or "").splitlines()[0:1]
    expression = expression if isinstance(expression, str) else (expression[0] if expression else "")
    return expression.strip()[:80] or ", ".join(classifiers) or "unknown"


def clean(text: str) -> str:
    text = re.sub(r"<[^>]+>", " ", text)  # HTML
    text = re.sub(r"!\[[^\]]*\]\([^)]*\)", " ", text)  # images
    text = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", text)  # links: their words
    text = re.sub(r"`{3}.*?`{3}", " ", text, flags=re.S)  # code blocks are kept out of paragraphs
    return re.sub(r"\s+", " ", text).strip()


def sections(description: str) -> list[tuple[str, str]]:
    """(heading, first paragraph under it) of a Markdown or reStructuredText description."""
    lines, found, heading = description.splitlines(), [], None
    for i, line in enumerate(lines):
        marker = re.match(r"^#{1,4}\s+(.+)$", line)
        underline = i + 1 < len(lines) and re.match(r"^(=+|-+|~+)\s*$", lines[i + 1]) and line.strip()
        if marker or underline:
            heading = clean(marker.group(1) if marker else line).strip("#* ")
            continue
        if heading and line.strip() and not re.match(r"^(=+|-+|~+)\s*$", line):
            paragraph = [line]
            for following in lines[i + 1 :]:
                if not following.strip() or following.startswith("#"):
                    break
                paragraph.append(following)
            text = clean(" ".join(paragraph))
            if len(text.split()) >= 12 and len(heading.split()) <= 12:
                found.append((heading, text))
            heading = None
    return found


def code_key(text: str) -> str:
    return " ".join(text.split()).casefold()


def function_pairs(source: str) -> list[tuple[str, str]]:
    """(docstring's first paragraph, code without the docstring) of the public functions of a Python file, in the
    shape of experiments/build_retrieval_sets.py's python-stdlib set: a summary of at least 5 words, 80-2000
    characters of code."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError):
        return []
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.name.startswith("_"):
            continue
        docstring = ast.get_docstring(node)
        if not docstring:
            continue
        summary = docstring.split("\n\n", 1)[0].replace("\n", " ").strip()
        node.body = node.body[1:] or [ast.Pass()]
        try:
            code = ast.unparse(node)
        except (ValueError, RecursionError):
            continue
        if len(summary.split()) >= 5 and 80 <= len(code) <= 2000:
            found.append((summary, code))
    return found


def stdlib_keys() -> set[str]:
    """`code_key`s of every docstring summary and every function's code in the running Python's standard library,
    held out: a wheel's function equal to one of them (a vendored copy, a backport) is never written."""
    root, keys = Path(sysconfig.get_paths()["stdlib"]), set()
    for path in root.rglob("*.py"):
        if "site-packages" in path.parts:
            continue
        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        for summary, code in function_pairs(source):
            keys.update((code_key(summary), code_key(code)))
    return keys


def code_pairs(url: str, held_out: set[str], limit: int, rng: random.Random) -> list[tuple[str, str]]:
    """Up to `limit` (docstring summary, code) pairs from a wheel's own .py files (tests and vendored folders
    skipped), none equal to the standard library's."""
    path = urllib.request.url2pathname(urllib.parse.urlparse(url).path)
    found, seen = [], set()
    with zipfile.ZipFile(path) as wheel:
        names = [
            n
            for n in wheel.namelist()
            if n.endswith(".py") and not {"test", "tests", "_vendor", "vendor", "vendored"} & set(n.split("/"))
        ]
        for name in names:
            if wheel.getinfo(name).file_size > 500_000:
                continue
            source = wheel.read(name).decode("utf-8", errors="replace")
            for summary, code in function_pairs(source):
                keys = (code_key(summary), code_key(code))
                if held_out.isdisjoint(keys) and keys[0] not in seen:
                    seen.add(keys[0])
                    found.append((summary, code))
    return rng.sample(found, min(limit, len(found)))


def paragraphs(description: str) -> list[str]:
    return [p for p in (clean(block) for block in re.split(r"\n\s*\n", description)) if 12 <= len(p.split()) <= 300]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir")
    parser.add_argument("--index", action="append", help="simple-index URL (default: pip's configured indexes)")
    parser.add_argument("--max-packages", type=int)
    parser.add_argument("--max-texts", type=int, help="keep a random sample of this many single texts")
    parser.add_argument("--max-pairs", type=int, help="keep a random sample of this many pairs")
    parser.add_argument("--max-code-pairs", type=int, help="keep a random sample of this many code pairs")
    parser.add_argument(
        "--code-per-package", type=int, default=10, help="code pairs drawn from one package at most (0: none)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    wheels = {}
    for index in args.index or configured_indexes():
        for project, url in newest_wheels(index).items():
            wheels.setdefault(project, url)
    projects = sorted(p for p in wheels if p.replace("-", "_").lower() not in STDLIB)[: args.max_packages]
    seen, counts = set(), {"texts": 0, "pairs": 0, "code-pairs": 0}
    stdlib_docs = Path(sysconfig.get_paths()["stdlib"]).as_posix()
    held_out = stdlib_keys() if args.code_per_package else set()
    rng = random.Random(args.seed)
    with (
        open(out / "texts.jsonl", "w", encoding="utf-8") as texts,
        open(out / "pairs.jsonl", "w", encoding="utf-8") as pairs,
        open(out / "code-pairs.jsonl", "w", encoding="utf-8") as code,
        open(out / "sources.jsonl", "w", encoding="utf-8") as sources,
    ):
        for project in projects:
            try:
                message = metadata(wheels[project])
            except (OSError, zipfile.BadZipFile):
                continue
            if message is None:
                continue
            description = message.get_payload() or message.get("Description") or ""
            if stdlib_docs in description:
                continue
            got = {"texts": 0, "pairs": 0, "code-pairs": 0}
            summary = clean(message.get("Summary") or "")
            body = paragraphs(description)
            candidates = [(summary, body[0])] if summary and body and len(summary.split()) >= 3 else []
            name = message.get("Name") or project
            titled = [(f"{name}: {heading}", paragraph) for heading, paragraph in sections(description)]
            for anchor, positive in candidates + titled:
                if (anchor, positive) not in seen:
                    seen.add((anchor, positive))
                    pairs.write(json.dumps({"anchor": anchor, "positive": positive}, ensure_ascii=False) + "\n")
                    got["pairs"] += 1
            for text in body:
                if text not in seen:
                    seen.add(text)
                    texts.write(json.dumps({"anchor": text}, ensure_ascii=False) + "\n")
                    got["texts"] += 1
            try:
                functions = code_pairs(wheels[project], held_out, args.code_per_package, rng)
            except (OSError, zipfile.BadZipFile):
                functions = []
            for summary, body in functions:
                code.write(json.dumps({"anchor": summary, "positive": body}, ensure_ascii=False) + "\n")
                got["code-pairs"] += 1
            row = {"name": message.get("Name"), "version": message.get("Version"), "file": wheels[project]}
            sources.write(json.dumps({**row, "licence": licence_of(message), **got}) + "\n")
            counts = {k: counts[k] + got[k] for k in counts}
    limits = (("texts", args.max_texts), ("pairs", args.max_pairs), ("code-pairs", args.max_code_pairs))
    for name, limit in limits:
        if limit is not None and counts[name] > limit:  # a sample, the same for the same seed
            path = out / f"{name}.jsonl"
            lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
            path.write_text("".join(random.Random(args.seed).sample(lines, limit)), encoding="utf-8")
            counts[name] = limit
    found = f"{counts['texts']} texts, {counts['pairs']} pairs, {counts['code-pairs']} code pairs"
    print(f"{len(projects)} packages: {found} in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
