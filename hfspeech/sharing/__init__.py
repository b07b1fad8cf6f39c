"""Sharing models: push a complete model directory (weights, processor, LM, k-means, model card) to the Hub.

``push_model_directory(DIR, "user/name")`` / ``hfspeech push DIR user/name``; see :mod:`.push`.
"""

from .contents import IncompleteModelDirectoryError, ModelDirectory, inspect_model_directory
from .evaluations import save_evaluation_result
from .model_card import build_model_card
from .push import PushError, PushResult, prepare_push, push_model_directory

__all__ = [
    "IncompleteModelDirectoryError", "ModelDirectory", "PushError", "PushResult", "build_model_card",
    "inspect_model_directory", "prepare_push", "push_model_directory", "save_evaluation_result",
]
