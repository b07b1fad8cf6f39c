"""Build a word n-gram language model with KenLM from plain text.

``build_language_model`` normalises the text to the acoustic model's vocabulary, runs
``lmplz`` (bounded memory, ``--discount_fallback`` for small corpora, optional pruning),
makes sure the ARPA lists ``</s>`` among its unigrams, converts it to a KenLM binary with
``build_binary`` and writes the unigram list the beam-search decoders need.

Output directory layout::

    OUT_DIR/lm.arpa        ARPA text model
    OUT_DIR/lm.bin         KenLM binary (what the decoders load)
    OUT_DIR/unigrams.txt   one word per line (the LM's vocabulary, without <s> </s> <unk>)
    OUT_DIR/lm_build.json  order, pruning, corpus statistics, removed characters
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from hfspeech.data.text import describe_removed
from hfspeech.decoding.vocabulary import CTCVocabulary

logger = logging.getLogger(__name__)

ARPA_NAME = "lm.arpa"
BINARY_NAME = "lm.bin"
UNIGRAMS_NAME = "unigrams.txt"
METADATA_NAME = "lm_build.json"
LM_SPECIAL_WORDS = frozenset({"<s>", "</s>", "<unk>"})


def find_kenlm_binary(name: str) -> Path:
    """Locate a KenLM executable (``lmplz``, ``build_binary``) on PATH or next to Python.

    Raises:
        FileNotFoundError: with the command that installs it.
    """
    beside_python = Path(sys.executable).parent / name
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return beside_python
    on_path = shutil.which(name)
    if on_path:
        return Path(on_path)
    raise FileNotFoundError(
        f"KenLM's `{name}` was found neither on PATH nor in {beside_python.parent}. Build it with "
        f"`bash scripts/install_kenlm.sh {Path(sys.prefix)}` (or `make setup`), which compiles "
        "lmplz and build_binary from the kenlm sdist."
    )


@dataclass
class LanguageModelFiles:
    """Paths of a built LM and what went into it."""

    directory: Path
    arpa_path: Path
    binary_path: Path
    unigrams_path: Path
    order: int
    num_sentences: int
    num_words: int
    num_unigrams: int
    removed_characters: dict[str, int] = field(default_factory=dict)
    prune: list[int] | None = None


_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+")


def iter_sentences(path: Path, line_per_sentence: bool, encoding: str = "utf-8") -> Iterator[str]:
    """Raw sentences of a text file.

    With ``line_per_sentence`` every non-empty line is a sentence. Otherwise (books with
    hard-wrapped lines) lines are joined into paragraphs at blank lines and paragraphs are
    split after ``.``, ``!`` and ``?``.
    """
    with open(path, encoding=encoding, errors="strict") as handle:
        if line_per_sentence:
            for line in handle:
                if line.strip():
                    yield line
            return
        paragraph: list[str] = []
        for line in handle:
            if line.strip():
                paragraph.append(line.strip())
                continue
            if paragraph:
                yield from _SENTENCE_END.split(" ".join(paragraph))
                paragraph = []
        if paragraph:
            yield from _SENTENCE_END.split(" ".join(paragraph))


def normalize_corpus(
    text_paths: Sequence[str | Path],
    vocabulary: CTCVocabulary,
    output_path: str | Path,
    line_per_sentence: bool = False,
    encoding: str = "utf-8",
    text_hook: Callable[[str], str] | None = None,
) -> tuple[int, int, Counter]:
    """Write the text files, one normalised sentence per line, to ``output_path``.

    See :func:`iter_sentences` for how sentences are found; every sentence goes through
    ``vocabulary.text_normalizer(hook=text_hook)`` (the rules of :mod:`hfspeech.data.text`,
    the same as the CTC transcripts'). Returns the number of sentences, the number of words
    and the Counter of characters removed because the vocabulary cannot spell them.
    """
    normalizer = vocabulary.text_normalizer(hook=text_hook)
    sentences = words = 0
    removed: Counter = Counter()
    with open(output_path, "w", encoding="utf-8") as out:
        for text_path in text_paths:
            path = Path(text_path)
            if not path.is_file():
                raise FileNotFoundError(f"LM text {path} does not exist; pass existing plain-text files.")
            try:
                for sentence in tqdm(iter_sentences(path, line_per_sentence, encoding),
                                     desc=f"normalising {path.name}", unit=" sentences", leave=False):
                    normalized, dropped = normalizer.normalize(sentence)
                    removed.update(dropped)
                    if normalized:
                        out.write(normalized + "\n")
                        sentences += 1
                        words += normalized.count(" ") + 1
            except UnicodeDecodeError as error:
                raise ValueError(
                    f"LM text {path} is not valid {encoding} (byte {error.start}: {error.object[error.start:error.start + 1]!r}); "
                    f"pass its encoding (e.g. encoding='latin-1', CLI --encoding latin-1) or convert it with "
                    f"`iconv -f latin1 -t utf-8`."
                ) from error
    if sentences == 0:
        raise ValueError(
            f"LM text {[str(p) for p in text_paths]}: no words left after normalising to the alphabet "
            f"{''.join(sorted(vocabulary.alphabet))!r}; pass text in the model's language/script."
        )
    return sentences, words, removed


def ensure_end_of_sentence_unigram(arpa_path: str | Path) -> bool:
    """Add ``</s>`` to the ARPA unigrams when missing (copying ``<s>``'s probability).

    pyctcdecode and flashlight score sentence ends with ``</s>``; an ARPA without it
    (for instance one filtered by another tool) would make them fall back to ``<unk>``.
    Returns True when the file was changed.
    """
    path = Path(arpa_path)
    lines = path.read_text(encoding="utf-8").split("\n")
    try:
        start = lines.index("\\1-grams:")
    except ValueError:
        raise ValueError(f"{path}: not an ARPA file (no '\\1-grams:' section); rebuild it with lmplz.") from None
    end = start + 1
    while end < len(lines) and lines[end].strip():
        end += 1
    unigram_words = {line.split("\t")[1] for line in lines[start + 1 : end] if "\t" in line}
    if "</s>" in unigram_words:
        return False
    sentence_start = next((line for line in lines[start + 1 : end] if line.split("\t")[1] == "<s>"), None)
    if sentence_start is None:
        raise ValueError(f"{path}: the ARPA has neither <s> nor </s> unigrams; rebuild it with lmplz.")
    probability = sentence_start.split("\t")[0]
    lines.insert(end, f"{probability}\t</s>")
    for index, line in enumerate(lines[:start]):
        if line.startswith("ngram 1="):
            lines[index] = f"ngram 1={int(line.split('=')[1]) + 1}"
            break
    path.write_text("\n".join(lines), encoding="utf-8")
    logger.info("added </s> to the unigrams of %s", path)
    return True


def read_arpa_unigrams(arpa_path: str | Path) -> list[str]:
    """Words of the ARPA's 1-gram section, without ``<s>``, ``</s>`` and ``<unk>``."""
    words: list[str] = []
    in_unigrams = False
    with open(arpa_path, encoding="utf-8") as handle:
        for line in handle:
            line = line.rstrip("\n")
            if line == "\\1-grams:":
                in_unigrams = True
                continue
            if in_unigrams:
                if not line.strip():
                    break
                fields = line.split("\t")
                if len(fields) >= 2 and fields[1] not in LM_SPECIAL_WORDS:
                    words.append(fields[1])
    if not in_unigrams:
        raise ValueError(f"{arpa_path}: not an ARPA file (no '\\1-grams:' section).")
    return words


def read_unigrams(unigrams_path: str | Path) -> list[str]:
    """Read a unigram list (one word per line)."""
    path = Path(unigrams_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"unigram list {path} does not exist; `hfspeech lm build` writes it next to the LM "
            f"as {UNIGRAMS_NAME}."
        )
    words = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not words:
        raise ValueError(f"unigram list {path} is empty; rebuild the LM with `hfspeech lm build`.")
    return words


def _run(command: list[str], what: str) -> None:
    logger.info("running %s", " ".join(command))
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        raise ValueError(
            f"{what} failed (exit {completed.returncode}): {completed.stderr.strip()[-2000:]}\n"
            f"command: {' '.join(command)}"
        )


def build_language_model(
    text_paths: Sequence[str | Path],
    output_dir: str | Path,
    vocabulary: CTCVocabulary,
    order: int = 4,
    memory: str = "20%",
    prune: Sequence[int] | None = None,
    discount_fallback: bool = True,
    keep_arpa: bool = True,
    line_per_sentence: bool = False,
    encoding: str = "utf-8",
    text_hook: Callable[[str], str] | None = None,
) -> LanguageModelFiles:
    """Build a KenLM word n-gram model from text files.

    Args:
        text_paths: plain UTF-8 text files (see ``line_per_sentence``).
        output_dir: created if needed; receives lm.arpa, lm.bin, unigrams.txt, lm_build.json.
        vocabulary: the acoustic model's labels; the text is normalised to its alphabet.
        order: n-gram order (2..6).
        memory: lmplz ``-S`` memory bound (``"20%"``, ``"2G"``).
        prune: lmplz ``--prune`` count thresholds, one per order starting at unigrams
            (e.g. ``[0, 0, 1]``: drop singleton trigrams); None keeps every n-gram.
        discount_fallback: pass ``--discount_fallback`` (needed for small corpora, where
            Kneser-Ney discounts cannot be estimated).
        keep_arpa: keep lm.arpa (it is 3-10x larger than the binary).
        line_per_sentence: each non-empty line is a sentence (transcripts); otherwise
            paragraphs are split into sentences at . ! ? (books with wrapped lines).
        encoding: text encoding of every file (``"latin-1"`` for old ISO-8859 texts).
        text_hook: ``str -> str`` run on every sentence before the normalisation rules (e.g. to
            spell out numbers); the CTC transcripts need the same hook to agree with the LM.
    """
    if not 2 <= order <= 6:
        raise ValueError(f"order={order}: KenLM here is built for orders 2..6; pick e.g. 3 or 4.")
    if not text_paths:
        raise ValueError("no LM text given; pass at least one plain-text file.")
    if prune is not None:
        prune = [int(value) for value in prune]
        if len(prune) > order or any(value < 0 for value in prune) or prune != sorted(prune):
            raise ValueError(
                f"prune={prune}: give at most {order} non-negative, non-decreasing thresholds "
                "(one per order, unigrams first), e.g. 0 0 1."
            )
        if prune and prune[0] != 0:
            raise ValueError(f"prune={prune}: lmplz cannot prune unigrams; the first threshold must be 0.")
    lmplz = find_kenlm_binary("lmplz")
    build_binary = find_kenlm_binary("build_binary")
    directory = Path(output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    corpus_path = directory / "corpus.txt"
    sentences, words, removed = normalize_corpus(text_paths, vocabulary, corpus_path, line_per_sentence, encoding,
                                                 text_hook)
    if removed:
        logger.info("%s", describe_removed(removed, "LM text"))
    arpa_path = directory / ARPA_NAME
    command = [str(lmplz), "-o", str(order), "-S", memory, "-T", str(directory), "--text",
               str(corpus_path), "--arpa", str(arpa_path)]
    if discount_fallback:
        command.append("--discount_fallback")
    if prune:
        command += ["--prune", *map(str, prune)]
    _run(command, "lmplz")
    ensure_end_of_sentence_unigram(arpa_path)
    binary_path = directory / BINARY_NAME
    _run([str(build_binary), str(arpa_path), str(binary_path)], "build_binary")
    unigrams = read_arpa_unigrams(arpa_path)
    unigrams_path = directory / UNIGRAMS_NAME
    unigrams_path.write_text("\n".join(unigrams) + "\n", encoding="utf-8")
    corpus_path.unlink()
    if not keep_arpa:
        arpa_path.unlink()
    files = LanguageModelFiles(
        directory=directory,
        arpa_path=arpa_path,
        binary_path=binary_path,
        unigrams_path=unigrams_path,
        order=order,
        num_sentences=sentences,
        num_words=words,
        num_unigrams=len(unigrams),
        removed_characters=dict(removed.most_common()),
        prune=list(prune) if prune else None,
    )
    metadata = {key: (str(value) if isinstance(value, Path) else value) for key, value in asdict(files).items()}
    metadata["alphabet"] = "".join(sorted(vocabulary.alphabet))
    (directory / METADATA_NAME).write_text(json.dumps(metadata, indent=2, ensure_ascii=False), encoding="utf-8")
    logger.info("built %d-gram LM with %d unigrams from %d words in %s", order, len(unigrams), words, directory)
    return files


def resolve_language_model(path: str | Path) -> tuple[Path, Path | None]:
    """Map an LM directory or file to (model file, unigram list or None).

    A directory is resolved to its lm.bin (or lm.arpa) and unigrams.txt; an .arpa file
    next to no unigrams.txt gets its unigrams from the ARPA itself at load time.
    """
    path = Path(path)
    if path.is_dir():
        for name in (BINARY_NAME, ARPA_NAME):
            if (path / name).is_file():
                unigrams = path / UNIGRAMS_NAME
                return path / name, unigrams if unigrams.is_file() else None
        raise FileNotFoundError(f"LM directory {path} holds neither {BINARY_NAME} nor {ARPA_NAME}; "
                                "build one with `hfspeech lm build`.")
    if not path.is_file():
        raise FileNotFoundError(f"language model {path} does not exist; build one with `hfspeech lm build`.")
    unigrams = path.parent / UNIGRAMS_NAME
    return path, unigrams if unigrams.is_file() else None


def load_unigrams_for(model_path: Path, unigrams_path: Path | None) -> list[str]:
    """Unigrams for a model file: the given list, else the ARPA's own 1-grams."""
    if unigrams_path is not None:
        return read_unigrams(unigrams_path)
    if model_path.suffix == ".arpa":
        return read_arpa_unigrams(model_path)
    raise FileNotFoundError(
        f"{model_path} is a KenLM binary without a {UNIGRAMS_NAME} next to it; the decoders need the "
        "word list: pass --unigrams or rebuild with `hfspeech lm build`."
    )


def load_kenlm_model(model_path: str | Path):  # -> kenlm.Model
    """Load a KenLM model, turning kenlm's OSError into an actionable ValueError."""
    import kenlm

    path = Path(model_path)
    if not path.is_file():
        raise FileNotFoundError(f"language model {path} does not exist; build one with `hfspeech lm build`.")
    try:
        return kenlm.Model(str(path))
    except (OSError, RuntimeError) as error:
        raise ValueError(
            f"kenlm cannot load {path} ({str(error).splitlines()[0] if str(error) else type(error).__name__}). "
            "The file is not a valid ARPA or KenLM binary (truncated, or built by an incompatible "
            "tool); rebuild it with `hfspeech lm build TEXT... OUT_DIR`."
        ) from error
