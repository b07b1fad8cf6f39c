"""Pretraining objectives: one module per objective, each turning backbone outputs into a loss.

* `Wav2Vec2Objective` (``wav2vec2.py``): contrastive InfoNCE over Gumbel-quantized targets
  + codebook diversity + feature penalty.
* `HubertObjective` (``hubert.py``): masked prediction of k-means cluster ids, with
  `align_labels_to_frames` to bring 100 Hz / 50 Hz labels onto the model's frames (50 Hz for 20 ms).
"""

from .hubert import HubertObjective, HubertObjectiveOutput, align_labels_to_frames
from .wav2vec2 import Wav2Vec2Objective, Wav2Vec2ObjectiveOutput

__all__ = [
    "HubertObjective",
    "HubertObjectiveOutput",
    "Wav2Vec2Objective",
    "Wav2Vec2ObjectiveOutput",
    "align_labels_to_frames",
]
