"""Checkpoint conversion against transformers' own models, every supported layout."""

from __future__ import annotations

import pytest
import torch
import transformers

from hfspeech.modeling.convert import convert_to_transformers, convert_transformers_checkpoint
from hfspeech.modeling.models import SpeechEncoderForCTC, SpeechEncoderModel

SMALL = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
    conv_dim=(16, 16, 16, 16, 16, 16, 24), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
    vocab_size=12, hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
    feat_proj_dropout=0.0, final_dropout=0.0, layerdrop=0.0,
)
# (transformers class, layout) pairs: base = group norm + post-LN (wav2vec2-base, hubert-base-ls960);
# large = layer norm + pre-LN + conv bias (wav2vec2-large-lv60, hubert-large-ll60k).
LAYOUTS = {
    "base": dict(feat_extract_norm="group", do_stable_layer_norm=False, conv_bias=False),
    "large": dict(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True),
}
CASES = [
    (family, head, layout)
    for family in ("Wav2Vec2", "Hubert")
    for head in ("Model", "ForCTC")
    for layout in LAYOUTS
] + [("Wav2Vec2", "ForPreTraining", layout) for layout in LAYOUTS]


def _reference_model(family: str, head: str, layout: str):
    config_class = getattr(transformers, family + "Config")
    extra = dict(codevector_dim=16, proj_codevector_dim=16, num_codevectors_per_group=8) if family == "Wav2Vec2" else {}
    config = config_class(**SMALL, **LAYOUTS[layout], **extra)
    torch.manual_seed(0)
    model = getattr(transformers, family + head)(config).eval()
    # Random (not default-initialised) norms and biases, so a swapped parameter cannot go unnoticed.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                parameter.add_(0.1 * torch.randn_like(parameter))
    return model


@pytest.mark.parametrize("family,head,layout", CASES)
def test_conversion_reproduces_transformers(tmp_path, family, head, layout):
    reference = _reference_model(family, head, layout)
    reference.save_pretrained(tmp_path / "source")
    convert_transformers_checkpoint(tmp_path / "source", tmp_path / "converted")
    from hfspeech.modeling.pretraining import SpeechEncoderForPreTraining

    target = {"Model": SpeechEncoderModel, "ForCTC": SpeechEncoderForCTC,
              "ForPreTraining": SpeechEncoderForPreTraining}[head]
    ours = target.from_pretrained(tmp_path / "converted").eval()

    generator = torch.Generator().manual_seed(1)
    audio = torch.randn(2, 8000, generator=generator)
    inputs = {}
    if head == "ForPreTraining":  # the fidelity check: same masks and negatives, eval mode
        from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices, _sample_negative_indices

        frames = int(ours.frame_lengths(torch.tensor([8000]))[0])
        mask = _compute_mask_indices((2, frames), mask_prob=0.5, mask_length=3, min_masks=2)
        negatives = _sample_negative_indices((2, frames), 5, mask_time_indices=mask)
        inputs = dict(mask_time_indices=torch.from_numpy(mask), sampled_negative_indices=torch.from_numpy(negatives))
    with torch.no_grad():
        expected = reference(audio, output_hidden_states=True, **inputs)
        got = ours(audio, output_hidden_states=True, **inputs)
    if head == "ForPreTraining":
        # transformers sums both terms over masked steps, as fairseq and we do
        torch.testing.assert_close(got.contrastive_loss, expected.contrastive_loss, atol=0, rtol=1e-4)
        torch.testing.assert_close(got.diversity_loss, expected.diversity_loss, atol=0, rtol=1e-4)
        torch.testing.assert_close(got.codevector_perplexity, expected.codevector_perplexity, atol=0, rtol=1e-4)
    assert len(got.hidden_states) == len(expected.hidden_states)
    for ours_layer, reference_layer in zip(got.hidden_states, expected.hidden_states):
        torch.testing.assert_close(ours_layer, reference_layer, atol=1e-4, rtol=1e-4)
    if head == "Model":
        torch.testing.assert_close(got.last_hidden_state, expected.last_hidden_state, atol=1e-4, rtol=1e-4)
    if head == "ForCTC":
        torch.testing.assert_close(got.logits, expected.logits, atol=1e-4, rtol=1e-4)

    # ...and back to transformers, bit-identical weights.
    convert_to_transformers(tmp_path / "converted", tmp_path / "back")
    back = getattr(transformers, family + ("Model" if head == "ForPreTraining" and family == "Hubert" else head)).from_pretrained(tmp_path / "back").eval()
    reference_state, back_state = reference.state_dict(), back.state_dict()
    assert reference_state.keys() == back_state.keys()
    for key in reference_state:
        torch.testing.assert_close(back_state[key], reference_state[key], atol=0, rtol=0, msg=key)


def test_old_weight_norm_names_are_accepted(tmp_path):
    """Hub checkpoints such as facebook/wav2vec2-base store the positional conv as weight_g/weight_v."""
    reference = _reference_model("Wav2Vec2", "Model", "base")
    state = reference.state_dict()
    renamed = {
        key.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1", "weight_v"): value
        for key, value in state.items()
    }
    (tmp_path / "source").mkdir()
    reference.config.architectures = ["Wav2Vec2Model"]
    reference.config.save_pretrained(tmp_path / "source")
    torch.save(renamed, tmp_path / "source" / "pytorch_model.bin")
    convert_transformers_checkpoint(tmp_path / "source", tmp_path / "converted")
    ours = SpeechEncoderModel.from_pretrained(tmp_path / "converted").eval()
    audio = torch.randn(1, 6000)
    with torch.no_grad():
        torch.testing.assert_close(ours(audio).last_hidden_state, reference(audio).last_hidden_state, atol=1e-4, rtol=1e-4)


def test_unsupported_architecture_is_refused(tmp_path):
    config = transformers.Wav2Vec2Config(**SMALL)
    config.architectures = ["Wav2Vec2ForSequenceClassification"]
    config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="Wav2Vec2ForSequenceClassification.*not supported"):
        convert_transformers_checkpoint(tmp_path, tmp_path / "out")


def test_unsupported_option_is_refused(tmp_path):
    config = transformers.Wav2Vec2Config(**SMALL, add_adapter=True)
    config.architectures = ["Wav2Vec2ForCTC"]
    config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="add_adapter"):
        convert_transformers_checkpoint(tmp_path, tmp_path / "out")


def test_missing_weights_file_is_named(tmp_path):
    config = transformers.Wav2Vec2Config(**SMALL)
    config.architectures = ["Wav2Vec2Model"]
    config.save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        convert_transformers_checkpoint(tmp_path, tmp_path / "out")


@pytest.mark.parametrize("saved_by", ["transformers_processor", "hfspeech_processor"])
def test_feature_extractor_and_tokenizer_travel_both_ways(tmp_path, saved_by):
    from hfspeech import CharacterCTCTokenizer, SpeechFeatureExtractor, SpeechProcessor

    reference = _reference_model("Wav2Vec2", "ForCTC", "base")
    reference.save_pretrained(tmp_path / "source")
    vocabulary = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, "E": 5, "T": 6, "A": 7, "O": 8, "N": 9, "'": 10, "Z": 11}
    (tmp_path / "vocab.json").write_text(__import__("json").dumps(vocabulary))
    if saved_by == "transformers_processor":
        tokenizer = transformers.Wav2Vec2CTCTokenizer(str(tmp_path / "vocab.json"))
        extractor = transformers.Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=False)
        transformers.Wav2Vec2Processor(extractor, tokenizer).save_pretrained(tmp_path / "source")
    else:
        tokenizer = CharacterCTCTokenizer(vocab_file=str(tmp_path / "vocab.json"))
        extractor = SpeechFeatureExtractor(return_attention_mask=False)
        SpeechProcessor(extractor, tokenizer).save_pretrained(tmp_path / "source")
    convert_transformers_checkpoint(tmp_path / "source", tmp_path / "ours")
    ours = transformers.AutoProcessor.from_pretrained(tmp_path / "ours")
    assert isinstance(ours, SpeechProcessor)
    assert ours.tokenizer.get_vocab() == vocabulary
    assert ours.feature_extractor.return_attention_mask is False
    convert_to_transformers(tmp_path / "ours", tmp_path / "back")
    back_tokenizer = transformers.Wav2Vec2CTCTokenizer.from_pretrained(tmp_path / "back")
    assert back_tokenizer.get_vocab() == vocabulary
    assert transformers.Wav2Vec2FeatureExtractor.from_pretrained(tmp_path / "back").return_attention_mask is False
