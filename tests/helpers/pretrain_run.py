"""Run a few pretraining updates of a tiny model on real AN4 audio; save the parameters.

Used by tests/test_training.py, alone or under `torchrun --nproc_per_node 2`:
    python pretrain_run.py OUT_DIR --accumulation 2 --steps 3 [--objective hubert]
Global batch b is dealt to rank b % num_processes, so any split of an update between
processes and accumulation steps sees the same batches with the same mask seeds.
"""

import argparse
import json
from pathlib import Path

import soundfile as sf
import torch
from accelerate import Accelerator

from hfspeech import SpeechEncoderConfig, SpeechEncoderForPreTraining
from hfspeech.training.arguments import PretrainingArguments
from hfspeech.training.pretrain_loop import run_pretraining

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "an4"


def global_batches(objective: str) -> list[dict]:
    files = sorted(FIXTURES.glob("*/*.flac"))[:4]
    waves = []
    for file in files:
        audio, rate = sf.read(file, dtype="float32")
        assert rate == 16000
        waves.append((audio - audio.mean()) / (audio.std() + 1e-7))
    batches = []
    for pair in (waves[0:2], waves[2:4]):
        length = max(len(w) for w in pair)
        values = torch.zeros(2, length)
        mask = torch.zeros(2, length, dtype=torch.long)
        for row, wave in enumerate(pair):
            values[row, : len(wave)] = torch.from_numpy(wave)
            mask[row, : len(wave)] = 1
        batch = {"input_values": values, "attention_mask": mask}
        if objective == "hubert":
            frames = [(len(wave) - 400) // 320 + 1 for wave in pair]
            labels = torch.full((2, max(frames)), -100, dtype=torch.long)
            generator = torch.Generator().manual_seed(length)
            for row, count in enumerate(frames):
                labels[row, :count] = torch.randint(0, 100, (count,), generator=generator)
            batch["labels"] = labels
        batches.append(batch)
    return batches


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--accumulation", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--save-steps", type=int, default=1000)
    parser.add_argument("--objective", default="wav2vec2")
    parser.add_argument("--crash-after-batches", type=int, default=0)
    parser.add_argument("--layerdrop", type=float, default=0.0)
    parser.add_argument("--fsdp", action="store_true")
    parser.add_argument("--max-grad-norm", type=float, default=10.0)
    parser.add_argument("--mixed-precision", default="no")
    parser.add_argument("--compile-backend", default="", help="torch.compile the model with this backend")
    args = parser.parse_args()
    from accelerate import DistributedDataParallelKwargs

    accelerator = Accelerator(cpu=True, mixed_precision=args.mixed_precision, kwargs_handlers=[
        DistributedDataParallelKwargs(find_unused_parameters=args.layerdrop > 0)])
    torch.manual_seed(0)
    config = SpeechEncoderConfig.from_preset(
        "tiny", objective=args.objective, hidden_dropout=0.0, attention_dropout=0.0, feat_proj_dropout=0.0,
        feat_quantizer_dropout=0.0, layerdrop=args.layerdrop, mask_time_prob=0.4, mask_time_length=4, num_negatives=10)
    model = SpeechEncoderForPreTraining(config)
    batches = global_batches(args.objective)
    served = {"count": 0}

    def batches_for_epoch(epoch: int):
        for index in range(accelerator.process_index, len(batches), accelerator.num_processes):
            served["count"] += 1
            if args.crash_after_batches and served["count"] > args.crash_after_batches:
                raise SystemExit(3)
            yield batches[index]

    training = PretrainingArguments(
        output_dir=str(args.output_dir), max_steps=args.steps, gradient_accumulation_steps=args.accumulation,
        learning_rate=1e-3, warmup_ratio=0.0, save_steps=args.save_steps, logging_steps=1, seed=7, fsdp=args.fsdp,
        max_grad_norm=args.max_grad_norm,
        mixed_precision=args.mixed_precision, torch_compile=bool(args.compile_backend),
        torch_compile_backend=args.compile_backend or "inductor")
    state = run_pretraining(model, batches_for_epoch, training, accelerator)
    if args.fsdp:  # what this rank holds, and the whole parameters gathered from every rank's shard
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        local = {name: parameter.to_local().numel() for name, parameter in model.named_parameters()}
        (args.output_dir / f"shard-{accelerator.process_index}.json").write_text(json.dumps(local))
        params = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        params = accelerator.unwrap_model(model).state_dict()
    if accelerator.is_main_process:
        torch.save({k: v.detach().cpu() for k, v in params.items()}, args.output_dir / "params.pt")
        (args.output_dir / "result.json").write_text(json.dumps(
            {"num_processes": accelerator.num_processes, "metrics": state["metrics"], "losses": state["train_losses"]}))


if __name__ == "__main__":
    main()
