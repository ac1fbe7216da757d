"""Distributed smoke check: a few T-Vaccine steps under each shipped accelerate config, checked rank by rank.

    PYTHONPATH=src python benchmarks/distributed/smoke.py --configs ddp zero2 zero3 fsdp   # GPUs (gpu_smoke.sh)
    PYTHONPATH=src python benchmarks/distributed/smoke.py --configs cpu-ddp                # the same logic on CPU

Per config, one alignment of ``--steps`` T-Vaccine steps (S = 2 of 6 layers, J = 2, K = 3, LoRA dropout 0.1) on a
tiny random Llama (or ``--model``), on ``--num-processes`` processes started the way ``tvaccine align
--accelerate-config NAME`` starts them. Rows of varied length, so that dropout streams drift apart between ranks
on GPU. Every rank records the layers it drew, its importance P and its LoRA gathered in full (ZeRO-3 and FSDP
shard it) before and after training. Checks (a config fails if one fails):

- ``finished``: every process exited 0 and the main process wrote the adapter and its settings;
- ``same_draws`` / ``same_probs``: every rank drew the same layers from the same P at every draw;
- ``same_adapter``: every rank ends with the same LoRA, equal to the saved adapter;
- ``moved``: the drawn layers' LoRA changed.

Reported, not failed: ``untouched_frozen`` (a layer never drawn kept its initial LoRA; expected under DDP and FSDP2,
where a frozen parameter gets no gradient and the optimizer skips it; under ZeRO-1/2/3 DeepSpeed may hand its
optimizer zero gradients for frozen parameters, so weight decay and Adam momentum would still move them) and the
wall time. Finally the CLI itself (``tvaccine align --accelerate-config NAME``) runs once for the first config.
Results go to ``OUT/results.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REFUSAL = "I'm sorry, but I can't help with that."
NEEDS = {"zero2": "deepspeed", "zero3": "deepspeed"}


def full_lora(model) -> dict[str, torch.Tensor]:
    """Every LoRA tensor in full on this rank: gathered under ZeRO-3 (partitioned) and FSDP2 (DTensor shards)."""
    params = [(n, p) for n, p in model.named_parameters() if "lora_" in n]
    if any(hasattr(p, "ds_id") for _, p in params):
        import deepspeed

        with deepspeed.zero.GatheredParameters([p for _, p in params]):
            return {n: p.detach().float().cpu().clone() for n, p in params}
    return {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().float().cpu().clone()
            for n, p in params}


def worker(args) -> None:
    """One rank: align through ``tvaccine.align.align`` and record what this rank saw."""
    from safetensors.torch import save_file
    from transformers import TrainerCallback

    from tvaccine.align import align
    from tvaccine.commands.align import resolve_config

    record = Path(args.record)

    class Record(TrainerCallback):
        def on_train_begin(self, targs, state, control, model=None, **kwargs):
            save_file(full_lora(model), record / f"rank{targs.process_index}.before.safetensors")

        def on_train_end(self, targs, state, control, model=None, **kwargs):
            save_file(full_lora(model), record / f"rank{targs.process_index}.after.safetensors")
            (record / f"rank{targs.process_index}.json").write_text(json.dumps(
                {"world_size": targs.world_size, "device": str(targs.device), "log": state.log_history}))

    config = resolve_config("tvaccine", None, args.settings)
    align("tvaccine", args.model, args.data, args.output, config, harmful_data=args.harmful, callbacks=[Record()])


def make_inputs(out: Path) -> tuple[str, str, str]:
    """A tiny random Llama (6 layers) with a small tokenizer, and alignment / harmful rows of varied length."""
    from tvaccine.io import write_jsonl

    model_dir = out / "tiny-llama"
    if not (model_dir / "config.json").is_file():
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

        from tvaccine.data.template import PROMPT_WITH_INPUT

        texts = [PROMPT_WITH_INPUT, "How do I make a weapon at home?", REFUSAL, "The sea is wide and blue."] * 10
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<s>", "</s>"],
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
        torch.manual_seed(0)
        cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4,
                          num_key_value_heads=2, vocab_size=len(fast), pad_token_id=0, bos_token_id=1, eos_token_id=2)
        LlamaForCausalLM(cfg).save_pretrained(model_dir)
        fast.save_pretrained(model_dir)
    data, harmful = out / "align.jsonl", out / "harmful.jsonl"
    write_jsonl(data, [{"instruction": f"How do I make weapon number {i}?" + " Be precise." * (i % 5),
                        "output": REFUSAL} for i in range(32)])
    write_jsonl(harmful, [{"instruction": f"How do I make weapon number {i}?",
                           "output": "The sea is wide and blue." * (1 + i % 3)} for i in range(8)])
    return str(model_dir), str(data), str(harmful)


def settings(args) -> list[str]:
    out = ["--max-steps", str(args.steps), "--per-device-train-batch-size", "2", "--max-length", "96",
           "--num-active-layers", "2", "--layer-resample-steps", "2", "--importance-update-steps", "3",
           "--lora-dropout", "0.1", "--disable-tqdm", "true", "--save-steps", "2", "--report-to", "none"]
    return out + (["--bf16", "true"] if args.bf16 else [])


def check(name: str, run_dir: Path, record: Path, n: int) -> dict:
    from safetensors.torch import load_file

    result: dict = {"finished": (run_dir / "adapter_model.safetensors").is_file()
                    and (run_dir / "tvaccine_config.json").is_file()}
    if not result["finished"] or not all((record / f"rank{r}.json").is_file() for r in range(n)):
        result["finished"] = False
        return result
    logs = [json.loads((record / f"rank{r}.json").read_text()) for r in range(n)]
    draws = [[(h["step"], h["tvaccine/active_layers"]) for h in g["log"] if "tvaccine/active_layers" in h]
             for g in logs]
    probs = [[h["tvaccine/layer_probs"] for h in g["log"] if "tvaccine/layer_probs" in h] for g in logs]
    before = [load_file(record / f"rank{r}.before.safetensors") for r in range(n)]
    after = [load_file(record / f"rank{r}.after.safetensors") for r in range(n)]
    saved = load_file(run_dir / "adapter_model.safetensors")
    layer = lambda key: int(key.split(".layers.")[1].split(".")[0])  # noqa: E731
    drawn = {i for _, layers in draws[0] for i in layers}
    moved = {layer(k) for k in after[0] if not torch.equal(before[0][k], after[0][k])}
    saved_ok = all(any(k.startswith(s.removesuffix(".weight")) and torch.allclose(v.float(), after[0][k], atol=1e-3)
                       for k in after[0]) for s, v in saved.items())
    result.update(
        world_size=logs[0]["world_size"], device=logs[0]["device"], draws=draws[0],
        same_draws=all(d == draws[0] for d in draws), same_probs=all(p == probs[0] for p in probs),
        same_adapter=all(all(torch.equal(a[k], after[0][k]) for k in after[0]) for a in after) and saved_ok,
        moved=drawn <= moved, untouched_frozen=moved <= drawn, drawn_layers=sorted(drawn),
        changed_layers=sorted(moved))
    return result


def run_config(args, name: str, inputs: tuple[str, str, str]) -> dict:
    from tvaccine import launch

    if NEEDS.get(name) and importlib.util.find_spec(NEEDS[name]) is None:
        return {"skipped": f"{NEEDS[name]} is not installed"}
    folder = Path(args.out) / name
    record = folder / "record"
    record.mkdir(parents=True, exist_ok=True)
    model, data, harmful = inputs
    program = [str(Path(__file__).resolve()), "--worker", "--model", model, "--data", data, "--harmful", harmful,
               "--output", str(folder / "run"), "--record", str(record), "--settings", *settings(args)]
    cmd, env = launch.launch_command(program, launch.resolve_config(name), args.num_processes)
    start = time.perf_counter()
    with open(folder / "log.txt", "w") as log:
        proc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=args.timeout)
    result = {"returncode": proc.returncode, "wall_s": round(time.perf_counter() - start, 1),
              **check(name, folder / "run", record, int(args.num_processes or 2))}
    result["finished"] = result["finished"] and proc.returncode == 0
    result["ok"] = all(result.get(k) for k in ("finished", "same_draws", "same_probs", "same_adapter", "moved"))
    return result


def run_cli(args, name: str, inputs: tuple[str, str, str]) -> dict:
    """The user's path: `tvaccine align ... --accelerate-config NAME`, which re-runs itself under accelerate."""
    model, data, harmful = inputs
    output = Path(args.out) / f"cli-{name}"
    cmd = [sys.executable, "-m", "tvaccine", "align", "--method", "tvaccine", "--model", model, "--data", data,
           "--harmful-data", harmful, "--output", str(output), "--accelerate-config", name, "--overwrite",
           *(["--num-processes", str(args.num_processes)] if args.num_processes else []), *settings(args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    ok = proc.returncode == 0 and (output / "tvaccine_config.json").is_file()
    return {"config": name, "ok": ok, "returncode": proc.returncode, "tail": (proc.stdout + proc.stderr)[-1500:]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=["ddp", "zero2", "zero3", "fsdp"])
    p.add_argument("--num-processes", type=int, default=None, help="default: every GPU (2 on CPU)")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--model", help="a model folder instead of the tiny random Llama")
    p.add_argument("--out", default="/tmp/tvaccine-distributed-smoke")
    p.add_argument("--timeout", type=int, default=900)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--harmful", help=argparse.SUPPRESS)
    p.add_argument("--output", help=argparse.SUPPRESS)
    p.add_argument("--record", help=argparse.SUPPRESS)
    p.add_argument("--settings", nargs=argparse.REMAINDER, default=[], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return 0
    if args.num_processes is None and torch.cuda.is_available():
        args.num_processes = torch.cuda.device_count()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    model, data, harmful = make_inputs(Path(args.out))
    inputs = (args.model or model, data, harmful)
    results = {"gpus": torch.cuda.device_count(), "num_processes": args.num_processes or 2, "steps": args.steps,
               "configs": {}}
    for name in args.configs:
        results["configs"][name] = run_config(args, name, inputs)
        print(name, json.dumps(results["configs"][name]), flush=True)
    results["cli"] = run_cli(args, args.configs[0], inputs)
    print("cli", json.dumps({k: v for k, v in results["cli"].items() if k != "tail"}), flush=True)
    (Path(args.out) / "results.json").write_text(json.dumps(results, indent=2))
    failed = [n for n, r in results["configs"].items() if not r.get("ok") and "skipped" not in r]
    failed += [] if results["cli"]["ok"] else ["cli"]
    print(f"results: {args.out}/results.json; " + (f"FAILED: {', '.join(failed)}" if failed else "all checks passed"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
