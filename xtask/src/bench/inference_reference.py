"""The reference for `cargo xtask bench inference`: the same model directory run by PyTorch +
transformers on the CPU, greedy, with a KV cache, as a batched `generate` of each batch size:
tokens/s of the whole batch, time to first token (a `max_new_tokens=1` generate of the batch)
and the mean time per later token. Prints one JSON object."""

import argparse
import json
import os
import statistics
import time

import torch
from transformers import AutoModelForCausalLM


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--prompt-tokens", type=int, required=True)
    parser.add_argument("--decode-tokens", type=int, required=True)
    parser.add_argument("--runs", type=int, required=True)
    parser.add_argument("--batch-sizes", default="1")
    args = parser.parse_args()

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model.eval()
    vocab = 256
    prompt = [(i * 7) % vocab for i in range(args.prompt_tokens)]

    def generate(batch, new_tokens):
        ids = torch.tensor([prompt] * batch, dtype=torch.long)
        mask = torch.ones_like(ids)
        with torch.inference_mode():
            start = time.perf_counter()
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=0,
            )
            elapsed = time.perf_counter() - start
        assert out.shape[1] == len(prompt) + new_tokens
        return elapsed

    generate(1, 2)  # warm-up
    levels = []
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        firsts = [generate(batch, 1) for _ in range(args.runs)]
        fulls = [generate(batch, args.decode_tokens) for _ in range(args.runs)]
        ttft = statistics.median(firsts)
        full = statistics.median(fulls)
        levels.append({
            "batch": batch,
            "tokens_per_s": batch * args.decode_tokens / full,
            "ttft_s": ttft,
            "itl_s": (full - ttft) / max(args.decode_tokens - 1, 1),
        })
    print(json.dumps({"levels": levels, "threads": threads, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
