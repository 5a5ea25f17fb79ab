"""The reference for `cargo xtask bench inference`: the same model directory run by PyTorch +
transformers on the CPU, greedy, with a KV cache, timed like the server: time to first token
(prefill + one sample) and decode tokens per second. Prints one JSON object."""

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
    args = parser.parse_args()

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model.eval()
    vocab = 256
    ids = torch.tensor([[(i * 7) % vocab for i in range(args.prompt_tokens)]], dtype=torch.long)

    def once():
        with torch.inference_mode():
            start = time.perf_counter()
            out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            ttft = time.perf_counter() - start
            past = out.past_key_values
            start = time.perf_counter()
            for _ in range(args.decode_tokens):
                out = model(input_ids=token, past_key_values=past, use_cache=True)
                past = out.past_key_values
                token = out.logits[:, -1].argmax(-1, keepdim=True)
            decode = time.perf_counter() - start
        return ttft, args.decode_tokens / decode

    once()  # warm-up
    runs = [once() for _ in range(args.runs)]
    print(json.dumps({
        "ttft_s": statistics.median(r[0] for r in runs),
        "decode_tokens_per_s": statistics.median(r[1] for r in runs),
        "threads": threads,
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
