"""Training data for speculators: plain text for phase 1, chat prompts for phase 2.

Phase-1 text comes from the user's files (``.txt``/``.md``/``.rst``/``.py`` files, folders of them,
or ``.jsonl`` with a ``"text"`` field per line) or, by default, from what this machine ships offline:
docstrings of the Python standard library and prose documentation under /usr/share/doc and the
virtualenv's site-packages. Licences, copyright files and changelogs are skipped (poor prose).
Prompt files are ``.jsonl`` with ``{"prompt": ...}`` (or ``{"messages": [...]}``) per line.
"""

from __future__ import annotations

import ast
import gzip
import json
import random
import re
import sys
from collections.abc import Iterator
from pathlib import Path

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py", ".html")
SKIP_NAMES = re.compile(r"(licen[cs]e|copying|copyright|changelog|changes|authors|news|history)", re.IGNORECASE)
MIN_CHARS = 200
PACKAGE_DATA = Path(__file__).resolve().parent / "data"


def read_text_file(path: Path) -> str:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        text = f.read()
    if ".html" in path.suffixes:
        text = re.sub(r"(?s)<(script|style).*?</\1>", " ", text)
        text = re.sub(r"<[^>]+>", " ", text)
        text = re.sub(r"&[a-z]+;", " ", text)
        text = re.sub(r"[ \t]+", " ", text)
    return text


def python_docstrings(path: Path) -> str:
    """Module, class and function docstrings of one Python file, with their signatures."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
    except (SyntaxError, ValueError):
        return ""
    parts = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc and len(doc) > 80:
                head = "" if isinstance(node, ast.Module) else f"{type(node).__name__.replace('Def', '').lower()} {node.name}:\n"
                parts.append(head + doc)
    return "\n\n".join(parts)


def iter_files(root: Path, python: bool = True) -> Iterator[Path]:
    if root.is_file():
        yield root
        return
    for path in sorted(root.rglob("*")):
        name = path.name.removesuffix(".gz")
        if name.endswith(".py") and (not python or "-packages" in str(path.relative_to(root))):
            continue  # docstrings from the top folder's own code only, not from installed packages
        if path.is_file() and not SKIP_NAMES.search(name) and (
                name.endswith(TEXT_SUFFIXES) or name.upper().startswith("README")):
            yield path


def documents_from_path(path: Path) -> Iterator[str]:
    """Every document a user-given path holds (a file, a folder, or a jsonl of {"text": ...})."""
    for file in iter_files(path):
        if file.suffix == ".jsonl":
            for line in file.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    row = json.loads(line)
                    text = row.get("text") if isinstance(row, dict) else None
                    if isinstance(text, str):
                        yield text
        elif file.suffix == ".py" and path.is_dir():
            yield python_docstrings(file)
        else:
            yield read_text_file(file)


def default_text_sources() -> list[Path]:
    stdlib = Path(sys.base_prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    sources = [stdlib, Path("/usr/share/doc")]
    sources += [Path(p) for p in sys.path if p.endswith("site-packages")]
    return [p for p in sources if p.exists()]


def collect_documents(paths: list[Path] | None, max_chars: int, seed: int = 0) -> list[str]:
    """Distinct documents (deduplicated, at least MIN_CHARS), shuffled, up to ``max_chars`` in all.

    Each source contributes at most ``2 * max_chars / num_sources`` characters before the shuffle,
    so no source dominates and a huge folder is not read to the end.
    """
    docs: list[str] = []
    seen: set[int] = set()
    sources = paths or default_text_sources()
    quota = 2 * max_chars // len(sources) + 1
    for path in sources:
        taken = 0
        for doc in documents_from_path(path):
            doc = doc.strip()[:20_000]  # no single file dominates
            if len(doc) >= MIN_CHARS and hash(doc) not in seen:
                seen.add(hash(doc))
                docs.append(doc)
                taken += len(doc)
                if taken >= quota:
                    break
    random.Random(seed).shuffle(docs)
    out, total = [], 0
    for doc in docs:
        if total >= max_chars:
            break
        out.append(doc)
        total += len(doc)
    return out


def pack_token_chunks(token_lists: list[list[int]], chunk_len: int, eos_id: int) -> list[list[int]]:
    """Concatenate documents (separated by EOS) and cut the stream into chunks of ``chunk_len``."""
    stream: list[int] = []
    for ids in token_lists:
        stream += ids + [eos_id]
    return [stream[i:i + chunk_len] for i in range(0, len(stream) - chunk_len + 1, chunk_len)]


def load_prompts(path: str | Path) -> list[list[dict[str, str]]]:
    """Conversations from a jsonl file of {"prompt": str} or {"messages": [...]} rows."""
    conversations = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if isinstance(row, dict) and isinstance(row.get("prompt"), str):
            conversations.append([{"role": "user", "content": row["prompt"]}])
        elif isinstance(row, dict) and isinstance(row.get("messages"), list):
            conversations.append(row["messages"])
        else:
            raise ValueError(f"{path}:{n}: expected {{\"prompt\": ...}} or {{\"messages\": [...]}}")
    return conversations


def default_prompt_file(split: str) -> Path:
    return PACKAGE_DATA / f"prompts_{split}.jsonl"
