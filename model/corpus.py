"""Text corpora for pretraining and tokenizer training, read from local files only.

`default` is what every machine with Python already has: the standard library's sources (tests left out)
and its documentation (the pydoc topics that `help()` shows). A directory corpus is every text file under
it. Documents are split into train and eval by a hash of their name, so the split never depends on order.
"""
from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from cwm_envs.errors import UsageError

TEXT_SUFFIXES = {".py", ".pyi", ".md", ".rst", ".txt", ".toml", ".cfg", ".ini", ".json", ".sh", ".c", ".h"}
SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", ".git", ".venv"}
MAX_DOC_BYTES = 1_000_000  # a generated table of that size teaches nothing; skip it


@dataclass(frozen=True)
class Document:
    """One text of the corpus and the name that decides its train/eval split."""
    name: str
    text: str


def hash_fraction(key: str) -> float:
    """A stable number in [0, 1) from `key`, for splits that do not depend on file order or seeds."""
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") / 2**64


def is_eval(name: str, eval_share: float = 0.02) -> bool:
    """Whether a document belongs to the eval split (a stable share by name)."""
    return hash_fraction(name) < eval_share


def stdlib_dir() -> Path:
    """This interpreter's standard library: the default corpus, present on every machine."""
    return Path(sysconfig.get_paths()["stdlib"])


def _files(root: Path) -> list[Path]:
    out = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).parts
        if any(part in SKIP_DIRS for part in rel[:-1]) or path.suffix not in TEXT_SUFFIXES:
            continue
        if path.is_file() and path.stat().st_size <= MAX_DOC_BYTES:
            out.append(path)
    return out


def _read(path: Path, root: Path) -> Document | None:
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None
    return Document(str(path.relative_to(root)), text) if text.strip() else None


def _eval_names(names: list[str], eval_share: float = 0.02) -> set[str]:
    """Names in the eval split: a hash-chosen share; with a small corpus, at least the one of lowest hash."""
    chosen = {n for n in names if is_eval(n, eval_share)}
    if not chosen and len(names) >= 2:
        chosen = {min(names, key=hash_fraction)}
    return chosen


def iter_documents(corpus: str | Path = "default", split: str = "train") -> Iterator[Document]:
    """Documents of `corpus` ("default" or a directory) in `split` ("train", "eval" or "all")."""
    if split not in ("train", "eval", "all"):
        raise ValueError(f"split must be train, eval or all, not {split!r}")
    if str(corpus) == "default":
        from pydoc_data.topics import topics  # the language reference, as `help("TOPIC")` prints it

        root = stdlib_dir()
        files = [(str(p.relative_to(root)), p) for p in _files(root)]
        texts = {f"pydoc/{name}": topics[name] for name in sorted(topics)}
    else:
        root = Path(corpus)
        if not root.is_dir():
            raise UsageError(f"corpus must be 'default' or a directory, got {corpus!r}")
        files = [(str(p.relative_to(root)), p) for p in _files(root)]
        if not files:
            raise UsageError(f"no text files ({', '.join(sorted(TEXT_SUFFIXES))}) under {root}")
        texts = {}
    evals = _eval_names([n for n, _ in files] + list(texts))
    for name, path in files:
        if (split == "all" or (name in evals) == (split == "eval")) and (doc := _read(path, root)):
            yield doc
    for name, text in texts.items():
        if split == "all" or (name in evals) == (split == "eval"):
            yield Document(name, text)


def sample_text(corpus: str | Path = "default", max_chars: int = 4_000_000) -> Iterator[str]:
    """About `max_chars` of training text spread over the whole corpus (for tokenizer training)."""
    docs = sorted(iter_documents(corpus, "train"), key=lambda d: hash_fraction("tok/" + d.name))
    total = 0
    for doc in docs:
        if total >= max_chars:
            return
        total += len(doc.text)
        yield doc.text
