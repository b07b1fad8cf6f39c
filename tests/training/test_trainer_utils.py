"""`make_compute_metrics` (transformers.Trainer): the greedy decoding of `hfspeech evaluate`."""

import numpy as np
from transformers.trainer_utils import EvalPrediction

from hfspeech.decoding import GreedyCTCDecoder
from hfspeech.processing import CharacterCTCTokenizer, SpeechFeatureExtractor, SpeechProcessor
from hfspeech.training.trainer_utils import make_compute_metrics


def _one_hot_logits(tokenizer, frames: list[str], total: int) -> np.ndarray:
    """(total, V) logits with one winning token per frame ("" = blank), then Trainer's -100 padding."""
    vocab = tokenizer.get_vocab()
    logits = np.full((total, len(vocab)), -100.0, dtype=np.float32)
    for row, token in enumerate(frames):
        logits[row] = 0.0
        logits[row, vocab[token] if token else tokenizer.pad_token_id] = 10.0
    return logits


def test_compute_metrics_decodes_as_evaluate_and_ignores_trainer_padding():
    tokenizer = CharacterCTCTokenizer.from_transcripts(["AB BA", "AA"])
    processor = SpeechProcessor(SpeechFeatureExtractor(), tokenizer)
    delimiter = tokenizer.word_delimiter_token
    first = ["A", "A", "", "B", delimiter, "B", "", "A"]  # "AB BA", repeats collapsed, blank splits nothing
    second = ["A", "", "A"]  # "AA": a blank between repeats keeps both
    logits = np.stack([_one_hot_logits(tokenizer, first, 10), _one_hot_logits(tokenizer, second, 10)])
    labels = np.full((2, 6), -100, dtype=np.int64)
    labels[0, :5] = tokenizer("AB BA")["input_ids"]
    labels[1, :2] = tokenizer("AA")["input_ids"]
    metrics = make_compute_metrics(processor)(EvalPrediction(predictions=logits, label_ids=labels))
    assert metrics == {"wer": 0.0, "cer": 0.0}
    # the same texts as the decoder of `hfspeech evaluate` on the valid frames alone
    decoder = GreedyCTCDecoder.from_tokenizer(tokenizer)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    assert [decoder.decode(log_probs[0, :8]).text, decoder.decode(log_probs[1, :3]).text] == ["AB BA", "AA"]
    # one wrong word out of three reference words
    labels[1, :2] = tokenizer("AB")["input_ids"]
    assert make_compute_metrics(processor)(EvalPrediction(predictions=logits, label_ids=labels))["wer"] == 1 / 3
