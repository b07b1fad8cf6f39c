"""`CharacterCTCTokenizer`: transcripts <-> character ids for CTC fine-tuning.

The vocabulary follows fairseq's letter dictionaries and transformers' Wav2Vec2 checkpoints:
``<pad>`` (id 0, also the CTC blank), ``<s>``, ``</s>``, ``<unk>``, the word delimiter ``|``,
then one entry per character (LibriSpeech: the apostrophe and the 26 upper-case letters).
Encoding maps every space to ``|``; decoding optionally collapses CTC repeats, always removes
blanks and turns ``|`` back into spaces, the same conventions as
``transformers.Wav2Vec2CTCTokenizer`` (the files it writes load in either class). Decoding
frame-level ids with ``output_char_offsets``/``output_word_offsets`` gives that class's character
and word offsets, which is what ``pipeline("automatic-speech-recognition", ...)(audio,
return_timestamps="char"|"word")`` turns into ``chunks`` with times in seconds.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import groupby
from pathlib import Path
from typing import Any

from transformers.models.wav2vec2.tokenization_wav2vec2 import Wav2Vec2CTCTokenizerOutput
from transformers.tokenization_python import PreTrainedTokenizer
from transformers.tokenization_utils_base import AddedToken

from ..data.collators import IGNORE_INDEX
from ..data.text import CTC_ALPHABET
from .token_spans import TokenSpan, collapse_runs, words_from_characters

logger = logging.getLogger(__name__)

VOCAB_FILES_NAMES = {"vocab_file": "vocab.json"}
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
WORD_DELIMITER = "|"
LIBRISPEECH_CHARACTERS = CTC_ALPHABET
# Label positions that CTC ignores (padding of `labels`); decode skips them.


def build_character_vocabulary(characters: Iterable[str], special_tokens: Sequence[str] = SPECIAL_TOKENS,
                               word_delimiter_token: str = WORD_DELIMITER) -> dict[str, int]:
    """Vocabulary ``{token: id}``: special tokens, then the word delimiter, then ``characters`` in order."""
    vocabulary: dict[str, int] = {}
    for token in (*special_tokens, word_delimiter_token, *characters):
        if token in vocabulary:
            raise ValueError(f"Token {token!r} appears twice in the vocabulary; list every character once.")
        vocabulary[token] = len(vocabulary)
    return vocabulary


LIBRISPEECH_VOCABULARY = build_character_vocabulary(LIBRISPEECH_CHARACTERS)


class CharacterCTCTokenizer(PreTrainedTokenizer):
    """Character-level CTC tokenizer (one id per character, ``|`` between words).

    Args:
        vocab_file: path of a ``vocab.json`` mapping token -> id. Give this, or ``vocab``, or
            neither for the LibriSpeech vocabulary (`LIBRISPEECH_VOCABULARY`, 32 tokens).
        vocab: the token -> id mapping itself.
        bos_token, eos_token, unk_token, pad_token: special tokens; ``pad_token`` is the CTC blank.
        word_delimiter_token: token written for every space.
        do_lower_case: as in ``Wav2Vec2CTCTokenizer``: upper-case text before encoding and
            lower-case decoded text (for an upper-case vocabulary used with lower-case text).
    """

    vocab_files_names = VOCAB_FILES_NAMES
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(
        self,
        vocab_file: str | os.PathLike | None = None,
        vocab: dict[str, int] | None = None,
        bos_token: str = "<s>",
        eos_token: str = "</s>",
        unk_token: str = "<unk>",
        pad_token: str = "<pad>",
        word_delimiter_token: str = WORD_DELIMITER,
        do_lower_case: bool = False,
        **kwargs: Any,
    ) -> None:
        # from_pretrained hands a saved `word_delimiter_token` over as a "model specific special
        # token"; it is an ordinary character of the vocabulary here, so take it back.
        model_specific = dict(kwargs.pop("model_specific_special_tokens", None) or {})
        word_delimiter_token = str(model_specific.pop("word_delimiter_token", word_delimiter_token))
        if model_specific:
            kwargs["model_specific_special_tokens"] = model_specific
        replacement = kwargs.pop("replace_word_delimiter_char", " ")  # stored by Wav2Vec2CTCTokenizer
        if replacement not in (None, " "):
            raise ValueError(f"replace_word_delimiter_char={replacement!r} is not supported: the word delimiter "
                             f"always decodes to a space here; use transformers' Wav2Vec2CTCTokenizer for this file.")
        if kwargs.get("target_lang", None) is None:  # Wav2Vec2 files store target_lang=null
            kwargs.pop("target_lang", None)

        if vocab_file is not None and vocab is not None:
            raise ValueError("Pass either vocab_file or vocab, not both.")
        source = "the vocab argument"
        if vocab_file is not None:
            source = str(vocab_file)
            if not Path(vocab_file).is_file():
                raise FileNotFoundError(f"Vocabulary file {vocab_file} does not exist: pass the path of a vocab.json "
                                        f"(token -> id), or build one with CharacterCTCTokenizer.from_transcripts().")
            with open(vocab_file, encoding="utf-8") as handle:
                vocab = json.load(handle)
        elif vocab is None:
            vocab = LIBRISPEECH_VOCABULARY
        self.encoder: dict[str, int] = self._validate_vocabulary(
            dict(vocab), source, (bos_token, eos_token, unk_token, pad_token, word_delimiter_token), kwargs)
        self.decoder: dict[int, str] = {index: token for token, index in self.encoder.items()}
        self._word_delimiter_token = word_delimiter_token
        self.do_lower_case = do_lower_case
        self._reported_unknown: set[str] = set()

        kwargs.setdefault("special_tokens_pattern", "none")  # no <s>/</s> around CTC labels
        kwargs.setdefault("clean_up_tokenization_spaces", False)
        super().__init__(bos_token=bos_token, eos_token=eos_token, unk_token=unk_token, pad_token=pad_token,
                         do_lower_case=do_lower_case, **kwargs)
        self.init_kwargs["word_delimiter_token"] = word_delimiter_token
        # Multi-character tokens (the special ones) are matched whole in the input text.
        multi_character = [t for t in self.encoder if len(t) > 1 and t not in self._added_tokens_encoder]
        if multi_character:
            self.add_tokens([AddedToken(t, lstrip=False, rstrip=False, normalized=False) for t in multi_character])

    @staticmethod
    def _validate_vocabulary(vocab: dict[str, Any], source: str, required: Sequence[str],
                             kwargs: dict[str, Any]) -> dict[str, int]:
        if any(isinstance(value, dict) for value in vocab.values()):
            raise ValueError(f"{source} is a nested multi-lingual vocabulary (per target_lang); CharacterCTCTokenizer "
                             f"takes one flat token -> id mapping: pass vocab[target_lang].")
        if kwargs.get("target_lang") is not None:
            raise ValueError("target_lang is not supported: pass the flat vocabulary of that language.")
        if not vocab:
            raise ValueError(f"{source} is empty: it needs at least the special tokens and the word delimiter.")
        bad = {token: index for token, index in vocab.items() if not isinstance(index, int) or isinstance(index, bool)}
        if bad:
            raise ValueError(f"{source}: token ids must be integers, got {bad}.")
        ids = sorted(vocab.values())
        if ids != list(range(len(vocab))):
            duplicates = [i for i, n in Counter(ids).items() if n > 1]
            raise ValueError(f"{source}: ids must be 0..{len(vocab) - 1}, each used once (the CTC head has one output "
                             f"per id); duplicated ids {duplicates}, range {ids[0]}..{ids[-1]}.")
        missing = [token for token in dict.fromkeys(str(t) for t in required) if token not in vocab]
        if missing:
            raise ValueError(f"{source} lacks the token(s) {missing}: add them, or pass the matching *_token "
                             f"arguments (e.g. word_delimiter_token=...) for the names your vocabulary uses.")
        return vocab

    # ------------------------------------------------------------------ vocabulary
    @classmethod
    def from_transcripts(cls, texts: Iterable[str], order: str = "sorted", bos_token: str = "<s>",
                         eos_token: str = "</s>", unk_token: str = "<unk>", pad_token: str = "<pad>",
                         word_delimiter_token: str = WORD_DELIMITER, **kwargs: Any) -> "CharacterCTCTokenizer":
        """Build the vocabulary from every character in ``texts`` (spaces become the delimiter).

        Args:
            texts: transcripts, already normalised (case, punctuation) the way they will be encoded.
            order: ``"sorted"`` (by code point: LibriSpeech gives ``'`` then ``A``..``Z``) or
                ``"frequency"`` (most frequent first, ties by code point, as fairseq's dictionaries).
            bos_token, eos_token, unk_token, pad_token, word_delimiter_token: token names; ids 0-3
                are ``pad``, ``bos``, ``eos``, ``unk`` and id 4 is the delimiter.

        Returns:
            A tokenizer whose ``save_pretrained`` writes the vocabulary as ``vocab.json``.
        """
        if order not in ("sorted", "frequency"):
            raise ValueError(f"order must be 'sorted' or 'frequency', got {order!r}.")
        counts: Counter[str] = Counter()
        number = 0
        for number, text in enumerate(texts, start=1):
            if not isinstance(text, str):
                raise ValueError(f"Transcript {number - 1} is a {type(text).__name__}, not a str.")
            odd_space = sorted({c for c in text if c.isspace() and c != " "})
            if odd_space:
                raise ValueError(f"Transcript {number - 1} contains whitespace {odd_space} other than ' ': "
                                 f"normalise it to single spaces first (e.g. ' '.join(text.split())).")
            if word_delimiter_token in text:
                raise ValueError(f"Transcript {number - 1} contains the word delimiter {word_delimiter_token!r}: "
                                 f"remove it from the text or choose another word_delimiter_token.")
            counts.update(text.replace(" ", ""))
        if number == 0:
            raise ValueError("from_transcripts got no transcripts: pass at least one non-empty text.")
        if not counts:
            raise ValueError("The transcripts contain no characters besides spaces.")
        specials = (pad_token, bos_token, eos_token, unk_token)
        clashes = sorted(set(counts) & set(specials))
        if clashes:
            raise ValueError(f"Special token(s) {clashes} are single characters that occur in the transcripts: "
                             f"choose multi-character special tokens.")
        if order == "sorted":
            characters = sorted(counts)
        else:
            characters = sorted(counts, key=lambda c: (-counts[c], c))
        vocab = build_character_vocabulary(characters, specials, word_delimiter_token)
        return cls(vocab=vocab, bos_token=bos_token, eos_token=eos_token, unk_token=unk_token, pad_token=pad_token,
                   word_delimiter_token=word_delimiter_token, **kwargs)

    @property
    def word_delimiter_token(self) -> str:
        """Token that stands for a space between words (``"|"``)."""
        return self._word_delimiter_token

    @property
    def word_delimiter_token_id(self) -> int:
        """Id of `word_delimiter_token`."""
        return self.encoder[self._word_delimiter_token]

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def get_vocab(self) -> dict[str, int]:
        vocab = dict(self.encoder)
        vocab.update(self._added_tokens_encoder)
        return vocab

    def out_of_vocabulary_characters(self, texts: str | Iterable[str]) -> dict[str, int]:
        """Characters of ``texts`` that would be encoded as ``unk_token``, with their counts.

        Returns:
            ``{character: count}``, most frequent first; empty when every character is known.
        """
        if isinstance(texts, str):
            texts = [texts]
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(token for token in self.tokenize(text) if token not in self.get_vocab())
        return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))

    # ------------------------------------------------------------------ encoding
    def _tokenize(self, text: str, **kwargs: Any) -> list[str]:
        if self.do_lower_case:
            text = text.upper()
        return list(text.replace(" ", self._word_delimiter_token))

    def _convert_token_to_id(self, token: str) -> int:
        index = self.encoder.get(token)
        if index is None:
            if token not in self._reported_unknown:
                self._reported_unknown.add(token)
                logger.warning("Character %r is not in the vocabulary and is encoded as %s; list all of them with "
                               "tokenizer.out_of_vocabulary_characters(texts).", token, self.unk_token)
            return self.encoder[str(self.unk_token)]
        return index

    def _convert_id_to_token(self, index: int) -> str:
        if index not in self.decoder:
            raise ValueError(f"Token id {index} is outside the vocabulary (ids 0..{len(self.decoder) - 1}): the model "
                             f"head and the tokenizer disagree on the vocabulary size.")
        return self.decoder[index]

    def convert_ids_to_tokens(self, ids: int | list[int], skip_special_tokens: bool = False) -> str | list[str]:
        """Ids -> tokens; ids equal to -100 (padding of ``labels``) are skipped."""
        if isinstance(ids, int):
            return self._convert_id_to_token(ids)
        skipped = set(self.all_special_ids) - {self.pad_token_id} if skip_special_tokens else set()
        return [self._convert_id_to_token(int(i)) for i in ids if int(i) != IGNORE_INDEX and int(i) not in skipped]

    # ------------------------------------------------------------------ decoding
    def convert_tokens_to_string(self, tokens: list[str], group_tokens: bool = True) -> str:
        """Join tokens into text: collapse repeats (``group_tokens``), drop blanks, ``|`` -> space.

        ``group_tokens=True`` is for frame-level CTC outputs (argmax ids); use ``False`` for
        label sequences, where a doubled letter ("LL") is two real tokens.
        """
        if group_tokens:
            tokens = [token for token, _ in groupby(tokens)]
        blank = str(self.pad_token)
        characters = [" " if token == self._word_delimiter_token else token for token in tokens if token != blank]
        text = "".join(characters).strip()
        return text.lower() if self.do_lower_case else text

    def _decode(self, token_ids: int | list[int], skip_special_tokens: bool = False,
                clean_up_tokenization_spaces: bool | None = None, group_tokens: bool = True,
                output_char_offsets: bool = False, output_word_offsets: bool = False,
                **kwargs: Any) -> str | Wav2Vec2CTCTokenizerOutput:
        """Ids of one sequence -> text (see `convert_tokens_to_string`).

        With ``output_char_offsets`` / ``output_word_offsets`` (frame-level ids, as the ASR
        pipeline's ``return_timestamps="char"|"word"`` asks) the result is a
        ``Wav2Vec2CTCTokenizerOutput`` with ``text``, ``char_offsets`` and ``word_offsets`` laid out
        as transformers' ``Wav2Vec2CTCTokenizer`` does (see `character_offsets`).
        """
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        token_ids = [int(i) for i in token_ids]
        tokens = self.convert_ids_to_tokens(token_ids, skip_special_tokens=skip_special_tokens)
        text = self.convert_tokens_to_string(tokens, group_tokens=group_tokens)
        if clean_up_tokenization_spaces is None:
            clean_up_tokenization_spaces = self.clean_up_tokenization_spaces
        text = self.clean_up_tokenization(text) if clean_up_tokenization_spaces else text
        if not (output_char_offsets or output_word_offsets):
            return text
        characters = self.character_offsets(token_ids, skip_special_tokens, group_tokens)
        return Wav2Vec2CTCTokenizerOutput(
            text=text, char_offsets=characters if output_char_offsets else None,
            word_offsets=self._get_word_offsets(characters) if output_word_offsets else None)

    # ------------------------------------------------------------------ timestamps
    @property
    def replace_word_delimiter_char(self) -> str:
        """What the word delimiter decodes to: always a space (read by transformers' ASR pipeline)."""
        return " "

    def character_offsets(self, token_ids: Sequence[int], skip_special_tokens: bool = False,
                          group_tokens: bool = True) -> list[dict[str, str | int]]:
        """Frame offsets of the characters of frame-level ids: ``[{"char", "start_offset", "end_offset"}]``.

        One entry per CTC run (per id when ``group_tokens`` is False), blanks left out, the word
        delimiter as ``" "``; offsets count frames, ``end_offset`` exclusive. With
        ``skip_special_tokens`` the special tokens are dropped before grouping (as the text is
        decoded) but every run keeps the frames it had.
        """
        skipped = set(self.all_special_ids) - {self.pad_token_id} if skip_special_tokens else set()
        kept = [(frame, token) for frame, token in enumerate(int(i) for i in token_ids)
                if token != IGNORE_INDEX and token not in skipped]
        if not kept:
            return []
        frames, tokens = (list(column) for column in zip(*kept))
        runs = collapse_runs(tokens, frames) if group_tokens else [(t, f, f + 1) for f, t in zip(frames, tokens)]
        characters = []
        for token, start, end in runs:
            if token == self.pad_token_id:
                continue
            text = self._convert_id_to_token(token)
            text = " " if text == self._word_delimiter_token else (text.lower() if self.do_lower_case else text)
            characters.append({"char": text, "start_offset": start, "end_offset": end})
        return characters

    @staticmethod
    def _get_word_offsets(offsets: list[dict[str, str | int]], word_delimiter_char: str = " ") -> list[dict[str, str | int]]:
        """Words of character offsets (``[{"word", "start_offset", "end_offset"}]``), split at the delimiter.

        The name and signature are transformers' ``Wav2Vec2CTCTokenizer._get_word_offsets``, which
        the ASR pipeline calls for ``return_timestamps="word"``.
        """
        spans = [TokenSpan(str(item["char"]), int(item["start_offset"]), int(item["end_offset"])) for item in offsets]
        return [{"word": word.text, "start_offset": word.start_frame, "end_offset": word.end_frame}
                for word in words_from_characters(spans, word_delimiter_char)]

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str]:
        """Write ``vocab.json`` (token -> id) into ``save_directory``."""
        if not os.path.isdir(save_directory):
            raise FileNotFoundError(f"Vocabulary directory {save_directory} does not exist: create it first.")
        path = os.path.join(save_directory, (filename_prefix + "-" if filename_prefix else "") + "vocab.json")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(self.encoder, indent=2, ensure_ascii=False) + "\n")
        return (path,)
