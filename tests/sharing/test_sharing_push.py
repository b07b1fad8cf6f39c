"""`hfspeech push` / `push_model_directory` against a real HTTP Hub server on 127.0.0.1 (tests/hub_server.py).

The client is the installed huggingface_hub (legacy LFS upload: HF_HUB_DISABLE_XET=1); only its
endpoint, cache and token location are pointed at the test server and a temporary HF_HOME. A tiny
CTC model is fine-tuned for 2 steps on AN4, given a KenLM trigram, a k-means model and a saved
evaluation, pushed, and loaded back with ``from_pretrained(repo_id)``.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
import yaml

import hfspeech  # noqa: F401  (registers the Auto* classes)
from hfspeech.cli import main
from hfspeech.decoding import DecoderSpec, build_language_model, load_vocabulary
from hfspeech.decoding import SpeechProcessorWithLM, attach_language_model
from hfspeech.sharing import IncompleteModelDirectoryError, PushError, push_model_directory
from hfspeech.labels.kmeans import KMeansModel

from helpers.hub_server import HubServer
from helpers import FIXTURES

AN4 = FIXTURES / "an4"
ROWS = list(csv.DictReader(open(AN4 / "metadata.csv", encoding="utf-8")))
TOKENS = {"alice-write": ("alice", "write"), "alice-read": ("alice", "read"), "bob-write": ("bob", "write")}


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A fresh Hub server, with huggingface_hub pointed at it and at an empty HF_HOME."""
    import huggingface_hub
    from huggingface_hub import constants

    with HubServer(TOKENS) as server:
        home = tmp_path / "hf_home"
        for name, value in {"HF_ENDPOINT": server.url, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(home),
                            "HF_HUB_CACHE": str(home / "hub"), "HF_HUB_OFFLINE": "0"}.items():
            monkeypatch.setenv(name, value)
        for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "TRANSFORMERS_OFFLINE"):
            monkeypatch.delenv(name, raising=False)
        # huggingface_hub reads these at import time.
        for name, value in {"ENDPOINT": server.url, "HF_HUB_DISABLE_XET": True, "HF_HUB_OFFLINE": False,
                            "HUGGINGFACE_CO_URL_TEMPLATE": server.url + "/{repo_id}/resolve/{revision}/{filename}",
                            "HF_URL_HOSTS": constants.HF_URL_HOSTS | {"127.0.0.1"},
                            "HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"),
                            "HF_TOKEN_PATH": str(home / "token"),
                            "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
                            "AGENT_HARNESSES_PATH": str(home / ".agent_harnesses.json")}.items():
            monkeypatch.setattr(constants, name, value)
        monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", server.url)
        monkeypatch.setattr(transformers.utils.hub, "_hf_api", None)  # a shared HfApi, made with the endpoint of its day
        yield server
    assert server.state.unhandled == [], "the client called endpoints the test server does not implement"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, single_thread) -> Path:
    from hfspeech.modeling.commands import initialise_pretraining_model
    from hfspeech.training.arguments import FinetuningArguments
    from hfspeech.training.finetune_loop import run_finetuning

    root = tmp_path_factory.mktemp("model")
    initialise_pretraining_model(root / "init", "wav2vec2", "tiny")
    run_finetuning(FinetuningArguments(
        output_dir=str(root / "run"), model=str(root / "init"), train_data=str(AN4), dev_data=str(AN4),
        learning_rate=2e-3, max_steps=2, freeze_transformer_steps=0, max_batch_seconds=8.0, eval_steps=100,
        save_steps=100, mask_time_prob=0.05, mask_feature_prob=0.0, layerdrop=0.0, seed=3))
    return root / "run" / "final"


@pytest.fixture(scope="module")
def complete_dir(trained, tmp_path_factory) -> Path:
    """The fine-tuned model + KenLM decoder + k-means + a saved `hfspeech evaluate` result."""
    root = tmp_path_factory.mktemp("complete")
    model_dir = Path(shutil.copytree(trained, root / "model"))
    text = root / "an4.txt"
    text.write_text("\n".join(row["text"] for row in ROWS) + "\n", encoding="utf-8")
    vocabulary = load_vocabulary(model_dir)
    build_language_model([text], root / "lm", vocabulary, order=3, line_per_sentence=True)
    attach_language_model(model_dir, DecoderSpec(vocabulary.labels, "pyctcdecode", vocabulary.blank_index,
                                                 lm_path=str(root / "lm"), alpha=1.5, beta=-0.5, beam_width=16))
    generator = torch.Generator().manual_seed(0)
    KMeansModel(torch.randn(5, 13, generator=generator), inertia=12.5, num_fit_frames=100, backend="torch",
                feature="mfcc").save(model_dir / "kmeans" / "k5")
    assert main(["evaluate", str(model_dir), str(AN4), "--save"]) == 0  # also leaves an emissions/ cache
    return model_dir


def repo_card(server: HubServer, repo_id: str) -> tuple[dict, str]:
    text = server.files(repo_id)["README.md"].content.decode()
    _, metadata, body = text.split("---\n", 2)
    return yaml.safe_load(metadata), body


def test_push_then_from_pretrained_gives_the_same_model_processor_and_lm_decoding(hub, complete_dir, capsys):
    assert main(["push", str(complete_dir), "alice/tiny-ctc", "--token", "alice-write",
                 "--commit-message", "first upload"]) == 0
    assert "pushed" in capsys.readouterr().out
    files = hub.files("alice/tiny-ctc")
    for name in ("config.json", "model.safetensors", "vocab.json", "tokenizer_config.json",
                 "processor_config.json", "decoder_config.json", "alphabet.json", "language_model/lm.bin",
                 "language_model/unigrams.txt", "language_model/attrs.json", "kmeans/k5/kmeans.json",
                 "kmeans/k5/centroids.safetensors", "training_config.json", "dev_metrics.json", "README.md"):
        assert name in files, name
        if name != "README.md":
            assert files[name].content == (complete_dir / name).read_bytes(), name
    assert not [name for name in files if name.startswith("emissions/")]  # caches stay local
    assert files["model.safetensors"].lfs_oid and files["language_model/lm.bin"].lfs_oid  # went through LFS
    assert files["config.json"].lfs_oid is None
    assert hub.state.repos["alice/tiny-ctc"].head.message == "first upload"
    assert ("PUT", f"/lfs-upload/{files['model.safetensors'].lfs_oid}") in hub.state.requests

    # The card: metadata, WER of `hfspeech evaluate --save`, training summary.
    [saved] = [json.loads(p.read_text()) for p in (complete_dir / "evaluation").glob("*.json")]
    metadata, body = repo_card(hub, "alice/tiny-ctc")
    assert metadata["library_name"] == "hfspeech" and metadata["pipeline_tag"] == "automatic-speech-recognition"
    assert {"hfspeech", "ctc", "kenlm", "k-means", "wav2vec2"} <= set(metadata["tags"])
    assert metadata["metrics"] == ["wer", "cer"]
    metrics = {m["type"]: m["value"] for m in metadata["model-index"][0]["results"][0]["metrics"]}
    assert metrics["wer"] == pytest.approx(round(100 * saved["wer"], 2))
    assert saved["backend"] == "pyctcdecode" and saved["lm_path"]
    assert "| max_steps | 2 |" in body and "| `kmeans/k5` | 5 | mfcc | 13 |" in body

    # Everything comes back through the Hub client: same logits, same LM decoding, same k-means.
    from huggingface_hub import HfApi, snapshot_download

    model = transformers.AutoModelForCTC.from_pretrained("alice/tiny-ctc").eval()
    local = transformers.AutoModelForCTC.from_pretrained(str(complete_dir)).eval()
    processor = transformers.AutoProcessor.from_pretrained("alice/tiny-ctc")
    local_processor = SpeechProcessorWithLM.from_pretrained(str(complete_dir))
    assert type(processor) is SpeechProcessorWithLM
    assert (processor.decoder_spec.alpha, processor.decoder_spec.beta, processor.decoder_spec.beam_width) == (1.5, -0.5, 16)
    from hfspeech.data.audio import decode_audio

    audio = [decode_audio(str(AN4 / row["file_name"]))[0] for row in ROWS[:3]]
    inputs = processor(audio=audio, sampling_rate=16000, return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(inputs["input_values"], attention_mask=inputs["attention_mask"]).logits
        expected = local(inputs["input_values"], attention_mask=inputs["attention_mask"]).logits
    torch.testing.assert_close(logits, expected, atol=0, rtol=0)
    lengths = model.frame_lengths(inputs["attention_mask"].sum(-1))
    assert processor.batch_decode(logits, lengths) == local_processor.batch_decode(expected, lengths)
    snapshot = Path(snapshot_download("alice/tiny-ctc"))
    centroids = KMeansModel.load(snapshot / "kmeans" / "k5").centroids
    torch.testing.assert_close(centroids, KMeansModel.load(complete_dir / "kmeans" / "k5").centroids)
    info = HfApi().model_info("alice/tiny-ctc")
    assert info.card_data.to_dict()["library_name"] == "hfspeech" and "model.safetensors" in [s.rfilename for s in info.siblings]

    # A second push of the unchanged directory is a no-op for the files (only README may change: same card).
    commits = len(hub.state.repos["alice/tiny-ctc"].commits)
    push_model_directory(complete_dir, "alice/tiny-ctc", token="alice-write")
    assert len(hub.state.repos["alice/tiny-ctc"].commits) == commits


def test_pipeline_from_the_repo_decodes_with_the_pushed_lm(hub, complete_dir, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "alice-write")  # the pipeline's pyctcdecode download ignores token=
    push_model_directory(complete_dir, "alice/asr", private=True)
    assert hub.state.repos["alice/asr"].private
    recognizer = transformers.pipeline("automatic-speech-recognition", model="alice/asr")
    assert recognizer.type == "ctc_with_lm"
    from hfspeech.data.audio import decode_audio

    audio = decode_audio(str(AN4 / ROWS[0]["file_name"]))[0]
    processor = SpeechProcessorWithLM.from_pretrained(str(complete_dir))
    local = transformers.pipeline("automatic-speech-recognition", model=str(complete_dir))
    kwargs = processor.pipeline_decoder_kwargs
    assert recognizer(audio.copy(), decoder_kwargs=kwargs)["text"] == local(audio.copy(), decoder_kwargs=kwargs)["text"]
    # Private: invisible without the owner's token.
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    with pytest.raises(RepositoryNotFoundError):
        HfApi().model_info("alice/asr", token="bob-write")


def test_push_without_a_token_is_refused_with_a_clear_message(hub, complete_dir, capsys):
    assert main(["push", str(complete_dir), "alice/tiny-ctc"]) == 1
    error = capsys.readouterr().err
    assert "not authenticated (HTTP 401" in error and "--token" in error
    assert main(["push", str(complete_dir), "alice/tiny-ctc", "--token", "not-a-token"]) == 1
    assert "Invalid credentials in Authorization header" in capsys.readouterr().err
    assert hub.state.repos == {}


def test_push_with_a_token_lacking_write_rights_is_forbidden(hub, complete_dir):
    with pytest.raises(PushError, match=r"HTTP 403.*write role for the namespace 'alice'"):
        push_model_directory(complete_dir, "alice/tiny-ctc", token="alice-read")
    assert hub.state.repos == {}
    push_model_directory(complete_dir, "alice/shared", token="alice-write")
    before = len(hub.state.repos["alice/shared"].commits)
    # bob can read alice's public repo (create_repo(exist_ok) passes) but not commit to it.
    with pytest.raises(PushError, match=r"HTTP 403.*rights to write to alice/shared"):
        push_model_directory(complete_dir, "alice/shared", token="bob-write")
    assert len(hub.state.repos["alice/shared"].commits) == before
    assert not hub.state.lfs_objects.keys() - {f.lfs_oid for f in hub.files("alice/shared").values()}


def test_incomplete_directory_lists_what_is_missing_before_any_network_call(hub, complete_dir, tmp_path, capsys):
    broken = Path(shutil.copytree(complete_dir, tmp_path / "broken"))
    for name in ("model.safetensors", "vocab.json", "language_model/lm.bin", "kmeans/k5/centroids.safetensors"):
        (broken / name).unlink()
    with pytest.raises(IncompleteModelDirectoryError) as raised:
        push_model_directory(broken, "alice/broken", token="alice-write")
    message = str(raised.value)
    for name in ("model.safetensors", "vocab.json", "language_model/lm.bin (the LM file named by lm_path",
                 "kmeans/k5/centroids.safetensors"):
        assert name in message, name
    assert len(raised.value.missing) == 4
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["push", str(empty), "alice/empty", "--token", "alice-write"]) == 2
    error = capsys.readouterr().err
    assert "config.json" in error and "model.safetensors" in error
    outside = Path(shutil.copytree(complete_dir, tmp_path / "outside"))
    config = json.loads((outside / "decoder_config.json").read_text())
    (outside / "decoder_config.json").write_text(json.dumps({**config, "lm_path": "/elsewhere/lm.bin"}))
    with pytest.raises(FileNotFoundError, match="points outside the model directory"):
        push_model_directory(outside, "alice/outside", token="alice-write")
    assert hub.state.requests == []  # nothing was sent


def test_finetuning_with_push_to_hub_pushes_the_complete_final_directory(hub, trained, monkeypatch, tmp_path,
                                                                         single_thread):
    from hfspeech.training.arguments import FinetuningArguments
    from hfspeech.training.finetune_loop import run_finetuning

    monkeypatch.setenv("HF_TOKEN", "alice-write")
    run_finetuning(FinetuningArguments(
        output_dir=str(tmp_path / "run"), model=str(trained), train_data=str(AN4), dev_data="",
        learning_rate=2e-3, max_steps=1, freeze_transformer_steps=0, max_batch_seconds=8.0, eval_steps=100,
        save_steps=100, mask_time_prob=0.05, mask_feature_prob=0.0, layerdrop=0.0, seed=3,
        push_to_hub=True, hub_model_id="alice/finetuned"))
    final = tmp_path / "run" / "final"
    files = hub.files("alice/finetuned")
    assert {"model.safetensors", "vocab.json", "processor_config.json", "training_config.json"} <= set(files)
    assert files["model.safetensors"].content == (final / "model.safetensors").read_bytes()
    metadata, body = repo_card(hub, "alice/finetuned")
    assert metadata["library_name"] == "hfspeech" and "model-index" not in metadata  # no evaluation saved
    assert "| max_steps | 1 |" in body and f"| model | {trained} |" in body
    model = transformers.AutoModelForCTC.from_pretrained("alice/finetuned")
    local = transformers.AutoModelForCTC.from_pretrained(str(final))
    for (name, value), (_, expected) in zip(model.state_dict().items(), local.state_dict().items()):
        torch.testing.assert_close(value, expected, atol=0, rtol=0, msg=name)


def test_hubert_pretraining_directory_pushes_with_its_kmeans(hub, tmp_path):
    from hfspeech.modeling.commands import initialise_pretraining_model
    from hfspeech.sharing.training_files import copy_label_kmeans

    model_dir = initialise_pretraining_model(tmp_path / "hubert", "hubert", "tiny")
    kmeans = KMeansModel(torch.arange(12.0).reshape(3, 4), inertia=1.0, num_fit_frames=10, backend="torch", feature="mfcc")
    kmeans.save(tmp_path / "fit" / "k3")
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "labels.json").write_text(json.dumps({"kmeans": [str(tmp_path / "fit")]}))
    assert copy_label_kmeans(tmp_path / "labels", model_dir) == [model_dir / "kmeans" / "k3"]
    push_model_directory(model_dir, "alice/hubert-tiny", token="alice-write")
    metadata, body = repo_card(hub, "alice/hubert-tiny")
    assert metadata["pipeline_tag"] == "feature-extraction" and {"hubert", "k-means"} <= set(metadata["tags"])
    from huggingface_hub import snapshot_download

    snapshot = Path(snapshot_download("alice/hubert-tiny", allow_patterns=["kmeans/*"]))
    np.testing.assert_array_equal(KMeansModel.load(snapshot / "kmeans" / "k3").centroids.numpy(), kmeans.centroids.numpy())
    pretrained = transformers.AutoModel.from_pretrained("alice/hubert-tiny")
    assert pretrained.config.objective == "hubert"
