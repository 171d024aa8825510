# PyTorch peer of bench/train.ts: the same training step on the same micro-batch, in eager PyTorch with autograd, fp32
# or bf16; prints one JSON line. Stage 1 (default): the vision encoder and projector trained, the language model
# frozen. --lora: LoRA r 64, alpha 16, no dropout (bench/train.ts's settings) on every linear layer whose name ends as
# one of the language model's (q/k/v/o/gate/up/down_proj: PEFT's suffix match also takes the vision q/k/v), A as PEFT
# initialises it and B zero, plus the projector; everything else frozen.
#
# Usage: python3 bench/peer-torch-train.py --model DIR --inputs FILE --threads N [--dtype fp32|bf16] [--lora]
# FILE is what `node dist/bench/train.js DIR N stage1 FILE` wrote. Only torch and the standard library are needed.
import argparse
import json
import math
import os
import resource
import struct
import time

import torch
import torch.nn.functional as F

ST_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "I32": torch.int32, "I64": torch.int64}


def read_file(path):
    """Every tensor of one safetensors file, by name (views of one buffer)."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
        data = bytearray(f.read())
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        dtype = ST_DTYPES[entry["dtype"]]
        size = torch.tensor([], dtype=dtype).element_size()
        out[name] = torch.frombuffer(data, dtype=dtype, count=(end - begin) // size, offset=begin).reshape(entry["shape"])
    return out


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def vision_rope(grid_h, grid_w, head_dim):
    """cos/sin [n, head_dim] of the 2-D RoPE of one frame, patches in merge-block order (m = 1 here: raster)."""
    rotary = head_dim // 2
    inv_freq = 1.0 / (10000 ** (torch.arange(0, rotary, 2, dtype=torch.float32) / rotary))
    rows = torch.arange(grid_h).repeat_interleave(grid_w).float()
    cols = torch.arange(grid_w).repeat(grid_h).float()
    angles = torch.cat((rows[:, None] * inv_freq, cols[:, None] * inv_freq), dim=-1)
    emb = torch.cat((angles, angles), dim=-1)
    return emb.cos(), emb.sin()


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_R, LORA_ALPHA = 64, 16


def lora_adapters(w, dtype):
    """(A, B) per adapted linear layer, by the layer's name: A kaiming-uniform (a = sqrt 5) as PEFT, B zero."""
    adapters = {}
    for name, t in w.items():
        module = name[: -len(".weight")]
        if name.endswith(".weight") and t.dim() == 2 and module.split(".")[-1] in LORA_TARGETS:
            a = torch.empty(LORA_R, t.shape[1], dtype=torch.float32)
            torch.nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            adapters[module] = (a.to(dtype).requires_grad_(), torch.zeros(t.shape[0], LORA_R, dtype=dtype, requires_grad=True))
    return adapters


def step(w, cfg, batch, dtype, adapters):
    def linear(module, x, bias=True):
        y = F.linear(x, w[module + ".weight"], w.get(module + ".bias") if bias else None)
        if module in adapters:
            a, b = adapters[module]
            y = y + F.linear(F.linear(x, a), b) * (LORA_ALPHA / LORA_R)
        return y

    v = cfg["vision_encoder_config"]
    c_v, heads_v = v["hidden_size"], v["num_attention_heads"]
    d_v = c_v // heads_v
    pixels = batch["pixel_values"].to(dtype)
    grid = batch["grid_sizes"][0].tolist()
    n = pixels.shape[0]
    pre = "model.vision_encoder."
    x = F.linear(pixels, w[pre + "embeddings.patch_embedding.weight"].reshape(c_v, -1), w[pre + "embeddings.patch_embedding.bias"])
    cos, sin = (t.to(dtype) for t in vision_rope(grid[1], grid[2], d_v))
    for i in range(v["num_hidden_layers"]):
        p = f"{pre}encoder.layers.{i}."
        g = lambda name: w[p + name]  # noqa: E731
        h = F.layer_norm(x, (c_v,), g("layer_norm1.weight"), g("layer_norm1.bias"), v.get("layer_norm_eps", 1e-6))
        q, k, val = (linear(f"{p}self_attn.{s}_proj", h).view(n, heads_v, d_v).transpose(0, 1) for s in "qkv")
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        attn = torch.softmax((q @ k.transpose(1, 2)).float() / math.sqrt(d_v), dim=-1).to(dtype) @ val
        x = x + linear(f"{p}self_attn.out_proj", attn.transpose(0, 1).reshape(n, c_v))
        h = F.layer_norm(x, (c_v,), g("layer_norm2.weight"), g("layer_norm2.bias"), v.get("layer_norm_eps", 1e-6))
        x = x + linear(f"{p}mlp.fc2", F.gelu(linear(f"{p}mlp.fc1", h), approximate="tanh"))
    x = F.layer_norm(x, (c_v,), w[pre + "post_layernorm.weight"], w[pre + "post_layernorm.bias"], v.get("layer_norm_eps", 1e-6))
    r = "model.mm_projector.readout."
    features = F.linear(F.gelu(F.linear(x, w[r + "0.weight"], w[r + "0.bias"])), w[r + "2.weight"], w[r + "2.bias"])

    ids = batch["input_ids"].long()
    labels = batch["labels"].long()
    t = ids.shape[0]
    hdim, heads, kv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = hdim // heads
    embeds = w["model.embed_tokens.weight"][ids]
    image = ids == cfg["image_token_index"]
    # The official merge, embeds·0 + features at the <image> positions (in order: one image, no pruning here).
    embeds = torch.where(image[:, None], torch.zeros_like(embeds), embeds).index_put((image.nonzero()[:, 0],), features, accumulate=True)
    inv_freq = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    freqs = batch["position_ids"].float()[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)
    mask = torch.full((t, t), float("-inf")).triu(1)
    eps = cfg["rms_norm_eps"]

    def rms(x, weight):
        xf = x.float()
        return weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(dtype)

    x = embeds
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        g = lambda name: w[p + name]  # noqa: E731
        h = rms(x, g("input_layernorm.weight"))
        q = linear(f"{p}self_attn.q_proj", h).view(t, heads, d).transpose(0, 1)
        k = linear(f"{p}self_attn.k_proj", h).view(t, kv, d).transpose(0, 1)
        val = linear(f"{p}self_attn.v_proj", h).view(t, kv, d).transpose(0, 1)
        q = q * cos + rotate_half(q) * sin
        k = (k * cos + rotate_half(k) * sin).repeat_interleave(heads // kv, dim=0)
        val = val.repeat_interleave(heads // kv, dim=0)
        probs = torch.softmax(((q @ k.transpose(1, 2)) / math.sqrt(d)).float() + mask, dim=-1).to(dtype)
        x = x + linear(f"{p}self_attn.o_proj", (probs @ val).transpose(0, 1).reshape(t, hdim), bias=False)
        h = rms(x, g("post_attention_layernorm.weight"))
        x = x + linear(f"{p}mlp.down_proj", F.silu(linear(f"{p}mlp.gate_proj", h, bias=False)) * linear(f"{p}mlp.up_proj", h, bias=False), bias=False)
    hidden = rms(x, w["model.norm.weight"])
    supervised = (labels[1:] != -100).nonzero()[:, 0]
    logits = F.linear(hidden[supervised], w["model.embed_tokens.weight"]).float()
    return F.cross_entropy(logits, labels[1:][supervised], reduction="sum") / len(supervised)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--lora", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dtype = torch.float32 if args.dtype == "fp32" else torch.bfloat16
    with open(os.path.join(args.model, "config.json")) as f:
        cfg = json.load(f)
    w = {k: v.to(dtype) for k, v in read_file(os.path.join(args.model, "model.safetensors")).items()}
    adapters = lora_adapters(w, dtype) if args.lora else {}
    if args.lora:
        trained = [t for pair in adapters.values() for t in pair] + [t.requires_grad_() for name, t in w.items() if "mm_projector" in name]
    else:
        # Stage 1: the vision encoder and the projector train, everything else is frozen.
        trained = [t.requires_grad_() for name, t in w.items() if "vision_encoder" in name or "mm_projector" in name]
    batch = read_file(args.inputs)
    optimizer = torch.optim.AdamW(trained, lr=1e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    # Two steps on the same micro-batch, the second timed, as bench/train.ts does (the first allocates the moments).
    times = []
    for _ in range(2):
        optimizer.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        loss = step(w, cfg, batch, dtype, adapters)
        loss.backward()
        t1 = time.perf_counter()
        optimizer.step()
        t2 = time.perf_counter()
        times.append((float(loss), t1 - t0, t2 - t1))
    print(json.dumps({
        "dtype": args.dtype,
        "mode": "lora" if args.lora else "stage1",
        "trainedParameters": sum(t.numel() for t in trained),
        "threads": args.threads,
        "torch": torch.__version__,
        "loss": round(times[0][0], 4),
        "firstStepSeconds": {"forwardBackward": round(times[0][1], 2), "optimizer": round(times[0][2], 2)},
        "forwardBackwardSeconds": round(times[1][1], 2),
        "optimizerSeconds": round(times[1][2], 2),
        "peakRssBytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }))


main()
