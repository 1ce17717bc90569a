"""PyTorch reference for bench/cuda.ts: the same GPT-2-small as src/nn/gpt.ts (pre-LN, learned positions,
biases, ReLU FFN, output layer tied to the token embedding, N(0, 0.02) init), trained on random tokens
with bf16 autocast, SDPA attention (flash) and AdamW, eager and torch.compile. Prints tokens/s and MFU
(model FLOPs per token as in src/nn/gpt.ts flopsPerToken, H200 dense bf16 peak 989 TFLOP/s).

Usage: python3 bench/torch_gpt2.py [--batch 8] [--steps 10] [--modes eager,compile] [--json out.json]
"""
import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

PEAK = 989e12


class Block(nn.Module):
    def __init__(self, d, h, dff, n_layer):
        super().__init__()
        self.h = h
        self.ln_1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln_2 = nn.LayerNorm(d)
        self.w_in = nn.Linear(d, dff)
        self.w_out = nn.Linear(dff, d)
        for lin in (self.qkv, self.w_in):
            nn.init.normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)
        for lin in (self.proj, self.w_out):
            nn.init.normal_(lin.weight, std=0.02 / math.sqrt(2 * n_layer))
            nn.init.zeros_(lin.bias)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln_1(x)).view(B, T, 3, self.h, C // self.h).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, D)
        x = x + self.proj(a.transpose(1, 2).reshape(B, T, C))
        return x + self.w_out(F.relu(self.w_in(self.ln_2(x))))


class GPT(nn.Module):
    def __init__(self, vocab=50257, ctx=1024, d=768, h=12, dff=3072, n_layer=12):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(ctx, d)
        nn.init.normal_(self.wte.weight, std=0.02)
        nn.init.normal_(self.wpe.weight, std=0.02)
        self.blocks = nn.ModuleList([Block(d, h, dff, n_layer) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(d)

    def forward(self, ids, targets):
        T = ids.shape[1]
        x = self.wte(ids) + self.wpe(torch.arange(T, device=ids.device))
        for b in self.blocks:
            x = b(x)
        logits = F.linear(self.ln_f(x), self.wte.weight)
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.view(-1))


def flops_per_token(vocab=50257, ctx=1024, d=768, dff=3072, n_layer=12):
    n = n_layer * (4 * d * d + 2 * d * dff) + vocab * d
    return 6 * n + 12 * n_layer * d * ctx


def bench(mode, batch, steps):
    torch.manual_seed(0)
    model = GPT().cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    fwd = torch.compile(model) if mode == 'compile' else model

    def step():
        ids = torch.randint(0, 50257, (batch, 1024), device='cuda')
        tg = torch.randint(0, 50257, (batch, 1024), device='cuda')
        with torch.autocast('cuda', dtype=torch.bfloat16):
            loss = fwd(ids, tg)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    t0 = time.time()
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    warm = time.time() - t0
    t0 = time.time()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    ms = (time.time() - t0) / steps * 1000
    tps = batch * 1024 / (ms / 1000)
    fpt = flops_per_token()
    r = {'ms_per_step': ms, 'tokens_per_s': tps, 'mfu': tps * fpt / PEAK, 'warmup_s': warm}
    print(f"torch {mode}: {ms:.1f} ms/step, {tps:.0f} tokens/s, {tps * fpt / 1e12:.1f} TFLOP/s, MFU {100 * r['mfu']:.1f}% "
          f"(warm-up incl. compile {warm:.0f} s)", flush=True)
    del model, opt, fwd
    torch.cuda.empty_cache()
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--batch', type=int, default=8)
    ap.add_argument('--steps', type=int, default=10)
    ap.add_argument('--modes', default='eager,compile')
    ap.add_argument('--json')
    a = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, batch {a.batch} x 1024", flush=True)
    res = {'torch': torch.__version__, 'device': torch.cuda.get_device_name(0), 'batch': a.batch}
    for m in a.modes.split(','):
        res[m] = bench(m, a.batch, a.steps)
        if a.json:
            with open(a.json, 'w') as f:
                json.dump(res, f, indent=1)


if __name__ == '__main__':
    main()
