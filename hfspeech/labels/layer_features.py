"""Hidden states of one Transformer layer: the features of HuBERT's later iterations (50 Hz).

Works with any model whose call is ``model(input_values (B, S), attention_mask=None,
output_hidden_states=True)`` and returns ``.hidden_states`` where index 0 is the Transformer
input (after the positional convolution) and index L the output of layer L: hfspeech's
`SpeechEncoderModel`, and transformers' `Wav2Vec2Model` / `HubertModel`.

Long audio is cut into chunks (fairseq ``dump_hubert_feature.py`` uses 1,600,000 samples)
whose features are concatenated; chunk lengths are multiples of the conv stride product so
frame boundaries line up. A final piece shorter than the receptive field is merged into the
chunk before it rather than dropped.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..configuration import SpeechEncoderConfig, conv_output_lengths, conv_receptive_field
from ..modeling.filterbank import feature_frame_lengths, frontend_receptive_field

logger = logging.getLogger(__name__)


def num_conv_frames(num_samples: int, kernels: list[int], strides: list[int]) -> int:
    """Frames produced by the conv feature encoder from ``num_samples`` samples (0 if too short)."""
    return conv_output_lengths(int(num_samples), kernels, strides)


def parse_layer_spec(spec: str) -> tuple[str, int]:
    """``"MODEL_DIR:LAYER"`` -> (MODEL_DIR, LAYER)."""
    directory, separator, layer = spec.rpartition(":")
    if not separator or not directory or not layer.isdigit():
        raise ValueError(f"feature spec {spec!r} is not 'mfcc' or 'MODEL_DIR:LAYER' (e.g. 'runs/hubert-it1:6')")
    return directory, int(layer)


def load_feature_model(directory: str | Path) -> torch.nn.Module:
    """Load an hfspeech `SpeechEncoderModel`, or a transformers Wav2Vec2/HuBERT model, from a directory."""
    directory = Path(directory)
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} not found: MODEL_DIR must be a saved model directory "
                                "(save_pretrained output, or a converted fairseq/transformers checkpoint)")
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type == "speech_encoder":
        from ..modeling.models import SpeechEncoderModel

        model = SpeechEncoderModel.from_pretrained(directory)
    else:
        from transformers import AutoModel

        model = AutoModel.from_pretrained(directory)
    return model.eval()


def _input_normalization(directory: Path) -> bool:
    """Whether the model expects zero-mean unit-variance input (preprocessor_config.json's do_normalize)."""
    preprocessor = directory / "preprocessor_config.json"
    if preprocessor.is_file():
        return bool(json.loads(preprocessor.read_text()).get("do_normalize", False))
    return False


class LayerFeatureReader:
    """Callable turning a (S,) 16 kHz waveform into (T, H) hidden states of layer ``layer``.

    Args:
        model: backbone (see module docstring); put in eval mode.
        layer: 0 = Transformer input, L = output of layer L (HuBERT iteration 2 uses 6).
        chunk_samples: longest piece fed at once (rounded down to a multiple of the conv stride).
        normalize: layer-normalise each waveform first (models trained with normalised input).
        device: where to run the model (default: where its parameters are).
        name: feature spec stored with labels and k-means models.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        layer: int,
        chunk_samples: int = 1_600_000,
        normalize: bool = False,
        device: torch.device | str | None = None,
        name: str = "",
    ) -> None:
        config = model.config
        num_layers = int(config.num_hidden_layers)
        if not 0 <= layer <= num_layers:
            raise ValueError(f"layer {layer} does not exist: the model has layers 0..{num_layers} "
                             "(0 = Transformer input)")
        self.kernels = [int(k) for k in config.conv_kernel]
        self.strides = [int(s) for s in config.conv_stride]
        self.hop = int(np.prod(self.strides))
        self.config = config if isinstance(config, SpeechEncoderConfig) else None  # ours: filterbank front-ends too
        self.receptive_field = frontend_receptive_field(self.config) if self.config is not None \
            else conv_receptive_field(self.kernels, self.strides)
        if chunk_samples < self.receptive_field:
            raise ValueError(f"chunk_samples={chunk_samples} is below the model's receptive field "
                             f"({self.receptive_field} samples)")
        self.chunk_samples = max(self.hop, chunk_samples // self.hop * self.hop)
        self.model = model.eval()
        self.layer = layer
        self.normalize = normalize
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model.to(self.device)
        self.name = name
        self.dim = int(config.hidden_size)
        self.frame_rate = 16000 / self.hop

    @classmethod
    def from_spec(cls, spec: str, device: torch.device | str | None = None, chunk_samples: int = 1_600_000) -> "LayerFeatureReader":
        """Build from ``"MODEL_DIR:LAYER"``."""
        directory, layer = parse_layer_spec(spec)
        model = load_feature_model(directory)
        return cls(model, layer, chunk_samples=chunk_samples, normalize=_input_normalization(Path(directory)),
                   device=device, name=spec)

    def num_frames(self, num_samples: int) -> int:
        """Frames returned for a waveform of ``num_samples`` samples (sum over chunks)."""
        if self.config is not None:
            return sum(feature_frame_lengths(end - start, self.config) for start, end in self._chunks(num_samples))
        return sum(num_conv_frames(end - start, self.kernels, self.strides) for start, end in self._chunks(num_samples))

    def _chunks(self, num_samples: int) -> list[tuple[int, int]]:
        bounds = [(start, min(start + self.chunk_samples, num_samples)) for start in range(0, num_samples, self.chunk_samples)]
        if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < self.receptive_field:
            bounds[-2:] = [(bounds[-2][0], num_samples)]
        return bounds

    @torch.inference_mode()
    def __call__(self, waveform: torch.Tensor | np.ndarray, utterance_id: str = "<waveform>") -> torch.Tensor:
        """(S,) float waveform at 16 kHz -> (T, H) float32 hidden states of ``self.layer``."""
        waveform = torch.as_tensor(waveform, dtype=torch.float32)
        if waveform.ndim != 1:
            raise ValueError(f"utterance {utterance_id}: expected a mono (S,) waveform, got shape {tuple(waveform.shape)}")
        if waveform.shape[0] < self.receptive_field:
            raise ValueError(f"utterance {utterance_id}: {waveform.shape[0]} samples is shorter than the model's "
                             f"receptive field ({self.receptive_field} samples); drop it from the data")
        waveform = waveform.to(self.device)
        if self.normalize:
            waveform = F.layer_norm(waveform, waveform.shape)
        pieces = []
        chunks = self._chunks(waveform.shape[0])
        if len(chunks) > 1:
            logger.debug("utterance %s: %d samples in %d chunks", utterance_id, waveform.shape[0], len(chunks))
        for start, end in chunks:
            output = self.model(waveform[None, start:end], output_hidden_states=True)
            pieces.append(output.hidden_states[self.layer][0].float())
        return torch.cat(pieces)

    @property
    def min_samples(self) -> int:
        """Shortest waveform accepted (the receptive field)."""
        return self.receptive_field

    def batch(self, waveforms: list[np.ndarray | torch.Tensor], utterance_ids: list[str]) -> list[torch.Tensor]:
        """List of (S_i,) waveforms -> list of (T_i, H) features (one forward per utterance chunk)."""
        return [self(waveform, name) for waveform, name in zip(waveforms, utterance_ids)]
