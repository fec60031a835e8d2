"""Throughput on whatever device is here, and its scaling from 1 to N processes.

On one process (or each rank under ``torchrun``) it builds the ~134M-parameter random
Llama-style model of ``common.py`` (or loads the real Gemma-3-270m with ``--model
gemma3-270m``) and times, on the same padded batches:

- ``bare body``: ``hf_model.model(...)``, the Hugging Face body without the head;
- ``collect``: ``tlm.collect_stats`` end to end;
- ``HF loss``: ``hf_model(..., labels=...)``, Hugging Face's own mean token loss
  (full ``[batch, pos, vocab]`` logits);
- ``perplexity``: ``tlm.perplexity`` (head on the predicting positions only), in the
  model's dtype and with ``compute_dtype=torch.bfloat16`` (the body's linear weights
  cast once on a CPU, autocast on a GPU; head and loss in float32), with the change of
  the mean NLL that causes (``half_precision.py`` compares the half-precision options
  in interleaved rounds);
- peak memory: ``torch.cuda.max_memory_allocated`` on a GPU, the peak resident set
  on a CPU.

Under ``torchrun`` every rank takes its share of the texts (as the library does) and
rank 0 prints tokens per second over all ranks (tokens / slowest rank's time).

Run one configuration::

    python benchmarks/scaling.py                       # one process
    torchrun --nproc-per-node 2 benchmarks/scaling.py   # two (gloo on CPU, NCCL on GPU)

or the 1 -> N comparison (each process gets ``--threads`` CPU threads)::

    python benchmarks/scaling.py --processes 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--texts", type=int, default=32, help="texts per language")
    parser.add_argument("--words", type=int, default=40, help="words per text")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--layers", type=int, default=12, help="layers of the benchmark model")
    parser.add_argument("--model", default="llama", choices=["llama", "gemma3-270m"],
                        help="the random 134M Llama-style model, or the real Gemma-3-270m (demo extra)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per process")
    parser.add_argument("--processes", type=int, nargs="*", default=None,
                        help="launch torchrun with each of these process counts and compare")
    parser.add_argument("--json", action="store_true", help="print one JSON line (rank 0)")
    return parser.parse_args()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def compare(args: argparse.Namespace) -> None:
    """Run this script under torchrun for each process count; print the table."""
    torchrun = Path(sys.executable).with_name("torchrun")
    rows = []
    env = dict(os.environ, GLOO_SOCKET_IFNAME=os.environ.get("GLOO_SOCKET_IFNAME", "lo"),
               OMP_NUM_THREADS=str(args.threads))
    for n in args.processes:
        command = [str(torchrun), f"--nproc-per-node={n}", "--rdzv-backend=c10d",
                   f"--rdzv-endpoint=127.0.0.1:{_free_port()}", "--local-addr=127.0.0.1", __file__,
                   *_forward(args), "--json"]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not lines:
            raise SystemExit(f"{n} processes failed:\n{done.stdout}\n{done.stderr}")
        rows.append(json.loads(lines[-1]))
    first = rows[0]
    print(f"device: {first['device']}, model {first['params_m']:.0f}M parameters, {first['tokens']} tokens, "
          f"{args.threads} thread(s) per process")
    print(f"{'processes':>9} {'bare body':>10} {'collect':>10} {'HF loss':>10} {'perplexity':>10} {'ppl bf16':>10}"
          f" {'speed-up':>9} {'peak MiB':>9}")
    for row in rows:
        speedup = row["collect_tps"] / first["collect_tps"]
        print(f"{row['world']:>9} {row['bare_tps']:>10.0f} {row['collect_tps']:>10.0f} {row['hf_loss_tps']:>10.0f} "
              f"{row['ppl_tps']:>10.0f} {row['ppl_bf16_tps']:>10.0f} {speedup:>8.2f}x {row['peak_mib']:>9.0f}")
    print("(tokens/s over all processes; speed-up: collection against one process)")
    print(f"bf16 body: mean NLL changes by {first['bf16_nll_change'] * 100:.3f}% against the model's dtype")


def _forward(args: argparse.Namespace) -> list[str]:
    return ["--texts", str(args.texts), "--words", str(args.words), "--batch-size", str(args.batch_size),
            "--repeats", str(args.repeats), "--layers", str(args.layers), "--threads", str(args.threads),
            "--model", args.model]


def measure(args: argparse.Namespace) -> None:
    import transformers as T
    from common import texts
    from transformer_lens.model_bridge import TransformerBridge

    import tl_multilingual as tlm
    from tl_multilingual import distributed
    from tl_multilingual.model.models import tiny_tokenizer
    from tl_multilingual.model.tokens import batches, encode

    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    device = distributed.init_from_env(device, timeout_s=600)
    if args.model == "gemma3-270m":  # the real model, on the bundled parallel corpus
        bridge = tlm.models.gemma3_270m(device=device)
        hf = bridge.original_model
        corpus = tlm.data.parallel(["en", "fr", "de", "zh"]).head(args.texts)
    else:
        config = T.LlamaConfig(vocab_size=32000, hidden_size=768, intermediate_size=2048,
                               num_hidden_layers=args.layers, num_attention_heads=12, num_key_value_heads=12,
                               max_position_embeddings=512)
        config.architectures = ["LlamaForCausalLM"]
        torch.manual_seed(0)
        hf = T.AutoModelForCausalLM.from_config(config).eval().to(device)
        bridge = TransformerBridge.boot_transformers("bench-llama", hf_model=hf, tokenizer=tiny_tokenizer(),
                                                     device=device)
        corpus = tlm.Corpus.from_dict(texts(args.texts, args.words))
    lm = tlm.adapt(bridge)
    sequences = [s for lang in corpus.languages for s in encode(lm, corpus[lang])]
    mine = distributed.shard(len(sequences), [len(s.ids) for s in sequences])
    plan = [b for _, b in batches(lm, [sequences[i] for i in mine], args.batch_size)]
    local_tokens = sum(int(b.attention_mask.sum()) for b in plan)
    total_tokens = int(distributed.all_reduce_sum(torch.tensor(local_tokens)))
    predicted = total_tokens - len(sequences)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def timed(fn) -> float:
        fn()  # warm-up
        best = float("inf")
        for _ in range(args.repeats):
            distributed.barrier()
            sync()
            start = time.perf_counter()
            fn()
            sync()
            elapsed = time.perf_counter() - start
            parts = distributed.gather_in_order([elapsed], [distributed.rank()], distributed.world_size())
            best = min(best, max(parts))
        return best

    def bare() -> None:
        with torch.no_grad():
            for b in plan:
                hf.model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)

    def hf_loss() -> None:
        with torch.no_grad():
            for b in plan:
                labels = b.input_ids.masked_fill(b.attention_mask == 0, -100)
                hf(input_ids=b.input_ids, attention_mask=b.attention_mask, labels=labels, use_cache=False)

    results: dict[str, float] = {}
    results["bare_tps"] = total_tokens / timed(bare)
    results["collect_tps"] = total_tokens / timed(
        lambda: tlm.collect_stats(lm, corpus, batch_size=args.batch_size, progress=False))
    results["hf_loss_tps"] = total_tokens / timed(hf_loss)
    exact: dict[str, float] = {}
    half: dict[str, float] = {}

    def ppl(store: dict, dtype=None) -> None:
        frame = tlm.perplexity(lm, corpus, batch_size=args.batch_size, compute_dtype=dtype)
        store["nll"] = float((frame["nll"] * frame["tokens"]).sum() / frame["tokens"].sum())

    results["ppl_tps"] = total_tokens / timed(lambda: ppl(exact))
    results["ppl_bf16_tps"] = total_tokens / timed(lambda: ppl(half, torch.bfloat16))
    results["bf16_nll_change"] = (half["nll"] - exact["nll"]) / exact["nll"]
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    peaks = distributed.gather_in_order([peak], [distributed.rank()], distributed.world_size())
    row = {"world": distributed.world_size(), "device": str(torch.cuda.get_device_name() if device.startswith("cuda")
                                                              else "cpu"),
           "params_m": sum(p.numel() for p in hf.parameters()) / 1e6, "tokens": total_tokens,
           "predicted": predicted, "peak_mib": max(peaks), **results}
    if distributed.is_main():
        if args.json:
            print(json.dumps(row))
        else:
            print(f"device {row['device']}, {row['world']} process(es), {row['params_m']:.0f}M parameters, "
                  f"{total_tokens} tokens, {args.threads} thread(s) per process")
            for key in ("bare_tps", "collect_tps", "hf_loss_tps", "ppl_tps", "ppl_bf16_tps"):
                print(f"  {key:<14} {row[key]:10.0f} tokens/s")
            print(f"  collect / bare body  = {row['collect_tps'] / row['bare_tps']:.3f}x")
            print(f"  perplexity / HF loss = {row['ppl_tps'] / row['hf_loss_tps']:.3f}x")
            print(f"  bf16 body: mean NLL change {row['bf16_nll_change'] * 100:+.3f}%, "
                  f"{row['ppl_bf16_tps'] / row['ppl_tps']:.2f}x the speed")
            print(f"  peak memory per process: {row['peak_mib']:.0f} MiB")
    distributed.shutdown()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    options = _args()
    if options.processes:
        compare(options)
    else:
        measure(options)
