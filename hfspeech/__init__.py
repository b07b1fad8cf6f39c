"""hfspeech: wav2vec 2.0 and HuBERT, pretraining to decoding, native to Hugging Face."""

__version__ = "0.1.0"
