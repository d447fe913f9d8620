"""The trainer's model and optimiser step written in eager PyTorch, for a side-by-side
tokens/s ratio with `cargo bench -p codelupe-trainer` (benches/throughput.rs): the same
presets, shapes, random tokens, bf16 autocast on CUDA, AdamW (torch's fused one, with
the same decay of matrices only), global-norm clipping and thread count. Configured by
the same environment variables: PRESET, SEQ, ROWS, STEPS, VOCAB, DEVICE; PHASES=1 adds
milliseconds a step by phase, as the Rust bench prints them; PROFILE=1 adds an operator
profile of three steps; COMPILE=1 runs the loss under torch.compile, to
show what kernel fusion would give (libtorch has no compiler).

    python stages/trainer/benches/pytorch_reference.py
"""

import math
import os
import time

import torch
import torch.nn.functional as F

PRESETS = {  # (d_model, n_layers, n_heads, d_ff), as ModelConfig::preset
    "tiny": (64, 2, 4, 176),
    "125m": (768, 12, 12, 2048),
    "350m": (1024, 24, 16, 2816),
}


class RmsNorm(torch.nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.rms_norm(x, self.weight.shape, self.weight, 1e-6)


def rotary(x, cos, sin):
    # cos is [cos, cos] and sin [-sin, sin] over the head's width, in x's precision.
    x1, x2 = x.chunk(2, dim=3)
    return torch.addcmul(x * cos, torch.cat([x2, x1], 3), sin)


class Block(torch.nn.Module):
    def __init__(self, d, heads, ff):
        super().__init__()
        self.heads = heads
        self.attention_norm, self.mlp_norm = RmsNorm(d), RmsNorm(d)
        linear = lambda i, o: torch.nn.Linear(i, o, bias=False)
        self.qkv, self.out = linear(d, 3 * d), linear(d, d)
        self.gate, self.up, self.down = linear(d, ff), linear(d, ff), linear(ff, d)

    def forward(self, x, cos, sin):
        b, t, d = x.shape
        qkv = self.qkv(self.attention_norm(x))
        cos, sin = cos.to(qkv.dtype), sin.to(qkv.dtype)
        q, k, v = (
            part.view(b, t, self.heads, d // self.heads).transpose(1, 2)
            for part in qkv.split(d, 2)
        )
        attended = F.scaled_dot_product_attention(
            rotary(q, cos, sin), rotary(k, cos, sin), v, is_causal=True
        )
        x = x + self.out(attended.transpose(1, 2).contiguous().view(b, t, d))
        h = self.mlp_norm(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class Transformer(torch.nn.Module):
    def __init__(self, vocab, d, layers, heads, ff):
        super().__init__()
        self.vocab = vocab
        self.embedding = torch.nn.Embedding(vocab, d)
        self.blocks = torch.nn.ModuleList(Block(d, heads, ff) for _ in range(layers))
        self.final_norm = RmsNorm(d)
        head = d // heads
        self.register_buffer(
            "inverse_frequencies",
            torch.exp(torch.arange(0, head, 2).float() / head * -math.log(10_000.0)),
        )
        for p in self.parameters():
            if p.dim() >= 2:
                torch.nn.init.normal_(p, 0.0, 0.02)

    def loss(self, tokens, positions):
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        angles = (positions[:, :-1].float().unsqueeze(-1) * self.inverse_frequencies).unsqueeze(1)
        cos, sin = angles.cos(), angles.sin()
        cos, sin = torch.cat([cos, cos], 3), torch.cat([-sin, sin], 3)
        x = self.embedding(inputs)
        for block in self.blocks:
            x = block(x, cos, sin)
        logits = self.final_norm(x) @ self.embedding.weight.t()
        return F.cross_entropy(logits.float().view(-1, self.vocab), targets.reshape(-1))


def main():
    env = os.environ.get
    preset, seq, rows = env("PRESET", "tiny"), int(env("SEQ", 256)), int(env("ROWS", 8))
    steps, vocab = int(env("STEPS", 20)), int(env("VOCAB", 32_768))
    wanted = env("DEVICE", "auto")
    device = torch.device("cuda" if wanted == "auto" and torch.cuda.is_available() else
                          "cpu" if wanted == "auto" else wanted)
    torch.manual_seed(0)
    model = Transformer(vocab, *PRESETS[preset]).to(device)
    if env("COMPILE"):
        # Not what the Rust trainer can do (libtorch has no compiler): the fused ceiling.
        model.loss = torch.compile(model.loss)
    decayed = [p for p in model.parameters() if p.dim() >= 2]
    kept = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decayed, "weight_decay": 0.1}, {"params": kept, "weight_decay": 0.0}],
        lr=3e-4, betas=(0.9, 0.95), eps=1e-8, fused=True,
    )
    tokens = torch.randint(vocab, (rows, seq))
    positions = torch.arange(seq).unsqueeze(0).repeat(rows, 1)
    cuda = device.type == "cuda"

    # A step's phases, as the Rust trainer's: the batch moves to the device each step,
    # the loss and the gradient norm are read back.
    def forward():
        t, p = tokens.to(device), positions.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            return model.loss(t, p)

    def backward(loss):
        loss.backward()
        loss.item()

    def optimise():
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True).item()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)

    def step():
        backward(forward())
        optimise()

    for _ in range(3):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    parameters = sum(p.numel() for p in model.parameters())
    d, layers = PRESETS[preset][0], PRESETS[preset][1]
    flops = 6.0 * parameters + 12.0 * layers * d * seq
    tokens_per_second = steps * rows * seq / seconds
    print(f"pytorch: preset {preset} ({parameters / 1e6:.1f}M parameters), {device}, "
          f"{rows}x{seq} tokens per step, {steps} steps in {seconds:.2f} s, "
          f"threads {torch.get_num_threads()}")
    print(f"{tokens_per_second:.0f} tokens/s, {tokens_per_second * flops / 1e12:.2f} TFLOPS = "
          f"{100 * tokens_per_second * flops / 989e12:.1f}% MFU of an H100's 989 TFLOPS bf16")
    if cuda:
        print(f"peak GPU memory allocated {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    if env("PHASES"):
        # As benches/throughput.rs times them: the device synchronised after each phase.
        spent = [0.0, 0.0, 0.0]

        def timed(phase, work):
            started = time.perf_counter()
            result = work()
            if cuda:
                torch.cuda.synchronize()
            spent[phase] += time.perf_counter() - started
            return result

        for _ in range(steps):
            loss = timed(0, forward)
            timed(1, lambda: backward(loss))
            timed(2, optimise)
        ms = [1e3 * s / steps for s in spent]
        print(f"phases, ms a step: forward {ms[0]:.1f}, backward {ms[1]:.1f}, "
              f"optimiser {ms[2]:.1f} (norm, clip, update, zeroing)")
    if env("PROFILE"):
        # Where a step's time goes, by operator (the Rust trainer runs the same ones).
        activities = [torch.profiler.ProfilerActivity.CPU] + (
            [torch.profiler.ProfilerActivity.CUDA] if cuda else [])
        with torch.profiler.profile(activities=activities) as profile:
            for _ in range(3):
                step()
        key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        print(profile.key_averages().table(sort_by=key, row_limit=25))


if __name__ == "__main__":
    main()
