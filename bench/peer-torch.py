# PyTorch peer of `npm run bench`: GEMM 512x1536x8960 and the checkpoint's Qwen2.5 decoder in eager PyTorch; prints one JSON line.
#
# Usage: python3 bench/peer-torch.py --threads N [--model DIR] [--dtypes fp32,bf16] [--gemm-only]
#        [--prefill-prompts JSON] [--decode-prompts JSON] [--check-prompt JSON] [--decode-tokens 64] [--check-tokens 16]
# The prompts come from bench/peer-torch.ts, so that PyTorch reads exactly the ids our engine and llama.cpp read.
# Only torch and the standard library are needed: the safetensors header is JSON after a u64 length, and the
# tensors are raw little-endian bytes that torch.frombuffer views without a copy.
import argparse
import json
import math
import os
import statistics
import struct
import sys
import time

import torch
import torch.nn.functional as F

ST_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}


def loaded_blas():
    """The BLAS library the process mapped: fp32 GEMM speed depends on it (Debian's default is the reference BLAS)."""
    try:
        with open("/proc/self/maps") as maps:
            libs = {line.split()[-1] for line in maps if "blas" in line.split()[-1].lower()}
        return sorted(os.path.realpath(p) for p in libs)
    except OSError:
        return []


def cpu_capability():
    for line in torch.__config__.show().splitlines():
        if "CPU capability" in line:
            return line.split(":", 1)[1].strip()
    return None


def timed(fn, runs, warmup=1):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def gemm_figures(dtypes):
    # The same product as bench/kernels.ts: activations [M, K] times a weight stored [N, K] (a Linear's layout).
    m, k, n = 512, 1536, 8960
    gen = torch.Generator().manual_seed(0)
    out = {}
    for name in dtypes:
        dtype = torch.float32 if name == "fp32" else torch.bfloat16
        x = torch.randn(m, k, generator=gen).to(dtype)
        w = (torch.randn(n, k, generator=gen) / math.sqrt(k)).to(dtype)
        with torch.inference_mode():
            seconds = timed(lambda: torch.matmul(x, w.t()), 5)
        out[name] = {"gflops": round(2 * m * n * k / seconds / 1e9, 1), "seconds": seconds}
    return out


def read_safetensors(folder):
    """name -> tensor, for model.safetensors or the shards of model.safetensors.index.json."""
    single = os.path.join(folder, "model.safetensors")
    if os.path.exists(single):
        files = [single]
    else:
        with open(os.path.join(folder, "model.safetensors.index.json")) as f:
            files = [os.path.join(folder, s) for s in sorted(set(json.load(f)["weight_map"].values()))]
    tensors = {}
    for path in files:
        with open(path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(header_len))
            data = bytearray(f.read())
        for name, entry in header.items():
            if name == "__metadata__" or not (name.startswith("model.layers.") or name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight")):
                continue
            begin, end = entry["data_offsets"]
            dtype = ST_DTYPES[entry["dtype"]]
            t = torch.frombuffer(data, dtype=dtype, count=(end - begin) // (torch.finfo(dtype).bits // 8), offset=begin)
            tensors[name] = t.reshape(entry["shape"])
    return tensors


class Qwen2:
    """The Qwen2.5 decoder as transformers writes it (RMSNorm in fp32, rotate-half RoPE, GQA, SwiGLU), eager."""

    def __init__(self, cfg, weights, dtype):
        self.h = cfg["hidden_size"]
        self.heads = cfg["num_attention_heads"]
        self.kv_heads = cfg.get("num_key_value_heads", self.heads)
        self.d = self.h // self.heads
        self.eps = cfg["rms_norm_eps"]
        self.dtype = dtype
        w = {k: v.to(dtype) for k, v in weights.items()}
        self.embed = w["model.embed_tokens.weight"]
        self.lm_head = w.get("lm_head.weight", self.embed) if not cfg.get("tie_word_embeddings") else self.embed
        self.norm = w["model.norm.weight"]
        self.layers = []
        for i in range(cfg["num_hidden_layers"]):
            p = f"model.layers.{i}."
            g = lambda n: w[p + n]  # noqa: E731
            self.layers.append({
                "in_norm": g("input_layernorm.weight"), "post_norm": g("post_attention_layernorm.weight"),
                "q": g("self_attn.q_proj.weight"), "qb": g("self_attn.q_proj.bias"),
                "k": g("self_attn.k_proj.weight"), "kb": g("self_attn.k_proj.bias"),
                "v": g("self_attn.v_proj.weight"), "vb": g("self_attn.v_proj.bias"),
                "o": g("self_attn.o_proj.weight"),
                "gate": g("mlp.gate_proj.weight"), "up": g("mlp.up_proj.weight"), "down": g("mlp.down_proj.weight"),
            })
        self.inv_freq = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, self.d, 2, dtype=torch.int64).float() / self.d))

    def rms_norm(self, x, weight):
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return weight * xf.to(self.dtype)

    def new_cache(self, length):
        shape = (len(self.layers), self.kv_heads, length, self.d)
        return {"k": torch.empty(shape, dtype=self.dtype), "v": torch.empty(shape, dtype=self.dtype), "len": 0}

    @staticmethod
    def rotate_half(x):
        half = x.shape[-1] // 2
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

    def forward(self, ids, cache):
        """Hidden states after the final norm for `ids` at the cache's next positions; appends their keys and values."""
        t = len(ids)
        start = cache["len"]
        end = start + t
        x = self.embed[torch.tensor(ids)]
        freqs = torch.arange(start, end, dtype=torch.float32)[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(self.dtype), emb.sin().to(self.dtype)
        group = self.heads // self.kv_heads
        mask = None
        if t > 1:
            mask = torch.full((t, end), float("-inf")).triu(start + 1)
        for i, l in enumerate(self.layers):
            h = self.rms_norm(x, l["in_norm"])
            q = F.linear(h, l["q"], l["qb"]).view(t, self.heads, self.d).transpose(0, 1)
            k = F.linear(h, l["k"], l["kb"]).view(t, self.kv_heads, self.d).transpose(0, 1)
            v = F.linear(h, l["v"], l["vb"]).view(t, self.kv_heads, self.d).transpose(0, 1)
            q = q * cos + self.rotate_half(q) * sin
            k = k * cos + self.rotate_half(k) * sin
            cache["k"][i, :, start:end] = k
            cache["v"][i, :, start:end] = v
            keys = cache["k"][i, :, :end].repeat_interleave(group, dim=0)
            values = cache["v"][i, :, :end].repeat_interleave(group, dim=0)
            scores = torch.matmul(q, keys.transpose(1, 2)) / math.sqrt(self.d)
            if mask is not None:
                scores = scores + mask
            probs = torch.softmax(scores.float(), dim=-1).to(self.dtype)
            attn = torch.matmul(probs, values).transpose(0, 1).reshape(t, self.h)
            x = x + F.linear(attn, l["o"])
            h = self.rms_norm(x, l["post_norm"])
            x = x + F.linear(F.silu(F.linear(h, l["gate"])) * F.linear(h, l["up"]), l["down"])
        cache["len"] = end
        return self.rms_norm(x, self.norm)

    def logits(self, hidden):
        return F.linear(hidden, self.lm_head).float()

    def generate(self, prompt, new_tokens):
        """Greedy tokens and (prefill seconds, decode seconds), split like bench/llm.ts: prompt to first token, then the rest."""
        cache = self.new_cache(len(prompt) + new_tokens)
        t0 = time.perf_counter()
        hidden = self.forward(prompt, cache)
        token = int(self.logits(hidden[-1:]).argmax(-1))
        t1 = time.perf_counter()
        tokens = [token]
        while len(tokens) < new_tokens:
            token = int(self.logits(self.forward([token], cache)).argmax(-1))
            tokens.append(token)
        return tokens, t1 - t0, time.perf_counter() - t1


def model_figures(folder, dtypes, args):
    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    t0 = time.perf_counter()
    stored = read_safetensors(folder)
    read_seconds = time.perf_counter() - t0
    runs = []
    for name in dtypes:
        t0 = time.perf_counter()
        model = Qwen2(cfg, stored, torch.float32 if name == "fp32" else torch.bfloat16)
        load_seconds = read_seconds + time.perf_counter() - t0
        with torch.inference_mode():
            model.generate(args.check_prompt[:16], 2)  # warm-up: first-call allocations and kernel selection
            prefill = [model.generate(p, 1)[1] for p in args.prefill_prompts]
            decode = [model.generate(p, args.decode_tokens + 1)[2] for p in args.decode_prompts]
            cache = model.new_cache(len(args.check_prompt))
            argmax = model.logits(model.forward(args.check_prompt, cache)).argmax(-1).tolist()
            greedy = model.generate(args.check_prompt, args.check_tokens)[0]
        p = statistics.median(prefill)
        d = statistics.median(decode)
        n_prefill = len(args.prefill_prompts[0])
        runs.append({
            "peer": "PyTorch eager",
            "weights": name,
            "threads": torch.get_num_threads(),
            "loadSeconds": round(load_seconds, 2),
            "prefill": {"tokens": n_prefill, "seconds": round(p, 2), "tokensPerSecond": round(n_prefill / p, 1)},
            "decode": {"promptTokens": len(args.decode_prompts[0]), "tokens": args.decode_tokens, "seconds": round(d, 2),
                       "tokensPerSecond": round(args.decode_tokens / d, 2)},
            "check": {"argmax": argmax, "greedy": greedy},
        })
        print(f"PyTorch {name}, {torch.get_num_threads()} thread(s): prefill {runs[-1]['prefill']['tokensPerSecond']} tokens/s, "
              f"decode {runs[-1]['decode']['tokensPerSecond']} tokens/s", file=sys.stderr)
        del model
    return runs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--model")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--gemm-only", action="store_true")
    ap.add_argument("--prefill-prompts", type=json.loads)
    ap.add_argument("--decode-prompts", type=json.loads)
    ap.add_argument("--check-prompt", type=json.loads)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--check-tokens", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dtypes = [d for d in args.dtypes.split(",") if d]
    report = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpuCapability": cpu_capability(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "gemm": gemm_figures(dtypes),
    }
    report["blas"] = loaded_blas()
    if args.model and not args.gemm_only:
        report["runs"] = model_figures(args.model, dtypes, args)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
