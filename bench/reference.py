"""The PyTorch-in-Python way of doing ekphrasis's jobs, for `make bench`.

Every module here mirrors the Rust model of the same demo config layer for layer (the
parameter counts are asserted equal to the ones the Rust benchmark reports), so the
ratios in bench/results.json compare the same arithmetic driven from Python against it
driven from Rust. Each subcommand prints one JSON object.

  reference.py train-step  --config experiments/bench/captioner.yaml ...
  reference.py greedy      --config experiments/bench/captioner.yaml ...
  reference.py pillow      --dir FILES --size 64
  reference.py dataloader  --dir FILES --size 64 --workers 2
"""
import argparse
import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn

FIRST_TOKEN = 3  # random tokens avoid 0 (padding), as the Rust benchmark does


# ----------------------------------------------------------------------------- blocks


class Attention(nn.Module):
    """q/k/v/out projections over F.scaled_dot_product_attention (src/nn/attention.rs)."""

    def __init__(self, dim, kv_dim, heads):
        super().__init__()
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(kv_dim, dim)
        self.v_proj = nn.Linear(kv_dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.heads = heads

    def split(self, x):
        b, t, c = x.shape
        return x.view(b, t, self.heads, c // self.heads).transpose(1, 2)

    def forward(self, x, ctx=None, causal=False, key_mask=None):
        src = x if ctx is None else ctx
        q, k, v = self.split(self.q_proj(x)), self.split(self.k_proj(src)), self.split(self.v_proj(src))
        mask = None if key_mask is None else key_mask[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and x.shape[1] > 1)
        return self.out_proj(y.transpose(1, 2).flatten(2))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class EncoderLayer(nn.Module):
    def __init__(self, dim, heads, hidden):
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(dim), Attention(dim, dim, heads)
        self.ln2, self.mlp = nn.LayerNorm(dim), Mlp(dim, hidden)

    def forward(self, x, key_mask=None):
        x = x + self.attn(self.ln1(x), key_mask=key_mask)
        return x + self.mlp(self.ln2(x))


class DecoderLayer(nn.Module):
    def __init__(self, dim, ctx_dim, heads, hidden):
        super().__init__()
        self.ln1, self.self_attn = nn.LayerNorm(dim), Attention(dim, dim, heads)
        self.ln2, self.cross_attn = nn.LayerNorm(dim), Attention(dim, ctx_dim, heads)
        self.ln3, self.mlp = nn.LayerNorm(dim), Mlp(dim, hidden)

    def forward(self, x, ctx):
        x = x + self.self_attn(self.ln1(x), causal=True)
        x = x + self.cross_attn(self.ln2(x), ctx=ctx)
        return x + self.mlp(self.ln3(x))


class DownStage(nn.Module):
    """Stride-2 conv–BN–GELU, then a residual conv–BN–GELU (src/nn/conv.rs)."""

    def __init__(self, cin, cout):
        super().__init__()
        self.down = nn.Conv2d(cin, cout, 3, stride=2, padding=1)
        self.norm1 = nn.BatchNorm2d(cout)
        self.conv = nn.Conv2d(cout, cout, 3, padding=1)
        self.norm2 = nn.BatchNorm2d(cout)

    def forward(self, x):
        h = F.gelu(self.norm1(self.down(x)), approximate="tanh")
        return h + F.gelu(self.norm2(self.conv(h)), approximate="tanh")


# -------------------------------------------------------------------------- captioner


class AttributeHeads(nn.Module):
    """The cell-structured attribute heads (src/scenes/heads.rs) without the
    mixing convolution, as the captioner's auxiliary loss uses them."""

    def __init__(self, c, hidden):
        super().__init__()
        self.cell_pos = nn.Parameter(torch.randn(9, c) * 0.02)
        self.global_fc, self.global_out = nn.Linear(c, hidden), nn.Linear(hidden, 12)
        self.cell_fc, self.cell_out = nn.Linear(c, hidden), nn.Linear(hidden, 34)

    def forward(self, f):
        g = F.gelu(self.global_fc(f.mean((2, 3))), approximate="tanh")
        cells = F.adaptive_avg_pool2d(f, 3).flatten(2).transpose(1, 2) + self.cell_pos
        h = F.gelu(self.cell_fc(cells), approximate="tanh")
        drop = lambda x: F.dropout(x, 0.1, self.training)
        hidden = torch.cat([g.unsqueeze(1), h], 1)
        return self.global_out(drop(g)), self.cell_out(drop(h)), hidden

    @staticmethod
    def loss(global_logits, cells, targets):
        heads = [(0, 4), (4, 4), (8, 4)]
        total = sum(F.cross_entropy(global_logits[:, o : o + w], targets[:, i], ignore_index=-1) for i, (o, w) in enumerate(heads))
        cell_t = targets[:, 3:].view(-1, 9, 4)
        for j, (o, w) in enumerate([(0, 11), (11, 10), (21, 3), (24, 10)]):
            total = total + F.cross_entropy(cells[..., o : o + w].reshape(-1, w), cell_t[..., j].reshape(-1), ignore_index=-1)
        return total


class Captioner(nn.Module):
    """CNN grid encoder + pre-norm Transformer decoder with tied embeddings (and, when the
    config asks, the auxiliary attribute heads whose hidden states join the context)."""

    def __init__(self, m, vocab):
        super().__init__()
        assert m.get("encoder", "cnn") == "cnn", "the reference mirrors the CNN encoder"
        chans = m.get("channels", [32, 64, 128])
        stages, cin = [], 3
        for c in chans:
            stages.append(DownStage(cin, c))
            cin = c
        self.cnn = nn.Sequential(*stages)
        d = m["dim"]
        grid = m["image_size"] >> len(chans)
        self.cnn_proj = nn.Linear(chans[-1], d)
        self.grid_pos = nn.Parameter(torch.randn(grid * grid, d) * 0.02)
        self.enc_ln = nn.LayerNorm(d)
        self.tok_emb = nn.Embedding(vocab, d)
        self.pos_emb = nn.Parameter(torch.randn(m["max_len"], d) * 0.02)
        self.dec = nn.ModuleList(DecoderLayer(d, d, m["heads"], m["mlp"]) for _ in range(m["layers"]))
        self.ln_f = nn.LayerNorm(d)
        self.heads, self.dim, self.max_len = m["heads"], d, m["max_len"]
        self.attribute_weight = m.get("attribute_weight", 0.0)
        hidden = m.get("attribute_hidden", 256)
        self.attributes = AttributeHeads(chans[-1], hidden) if self.attribute_weight > 0 else None
        self.context = m.get("attribute_context", False)
        if self.context:
            self.attribute_proj = nn.Linear(hidden, d)
            self.attribute_pos = nn.Parameter(torch.randn(10, d) * 0.02)

    def encode_parts(self, images):
        fmap = self.cnn(images)
        ctx = self.cnn_proj(fmap.flatten(2).transpose(1, 2)) + self.grid_pos
        heads = self.attributes(fmap) if self.attributes is not None else None
        if self.context:
            ctx = torch.cat([ctx, self.attribute_proj(heads[2]) + self.attribute_pos], 1)
        return self.enc_ln(ctx), heads

    def encode(self, images):
        return self.encode_parts(images)[0]

    def logits(self, ctx, tokens):
        x = self.tok_emb(tokens) + self.pos_emb[: tokens.shape[1]]
        for layer in self.dec:
            x = layer(x, ctx)
        return self.ln_f(x) @ self.tok_emb.weight.T

    def loss(self, images, tokens):
        ctx, heads = self.encode_parts(images)
        logits = self.logits(ctx, tokens[:, :-1])
        ce = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten(), ignore_index=0)
        if heads is None:
            return ce
        # Every head applies: class 0 everywhere (the trainer's bench uses the same rows).
        targets = torch.zeros(images.shape[0], 39, dtype=torch.long)
        return ce + self.attribute_weight * AttributeHeads.loss(heads[0], heads[1], targets)

    @torch.no_grad()
    def greedy(self, images, new_tokens, bos=1):
        """Greedy decoding with a KV cache, the usual Python loop (one call per token)."""
        ctx = self.encode(images)
        b = images.shape[0]
        cross = [(l.cross_attn.split(l.cross_attn.k_proj(ctx)), l.cross_attn.split(l.cross_attn.v_proj(ctx))) for l in self.dec]
        cache = [None] * len(self.dec)
        tok = torch.full((b, 1), bos, dtype=torch.long)
        out = []
        for t in range(new_tokens):
            x = self.tok_emb(tok) + self.pos_emb[t : t + 1]
            for i, layer in enumerate(self.dec):
                a = layer.self_attn
                h = layer.ln1(x)
                q, k, v = a.split(a.q_proj(h)), a.split(a.k_proj(h)), a.split(a.v_proj(h))
                if cache[i] is not None:
                    k, v = torch.cat([cache[i][0], k], 2), torch.cat([cache[i][1], v], 2)
                cache[i] = (k, v)
                x = x + a.out_proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2))
                c = layer.cross_attn
                q = c.split(c.q_proj(layer.ln2(x)))
                ck, cv = cross[i]
                x = x + c.out_proj(F.scaled_dot_product_attention(q, ck, cv).transpose(1, 2).flatten(2))
                x = x + layer.mlp(layer.ln3(x))
            logits = self.ln_f(x)[:, -1] @ self.tok_emb.weight.T
            tok = logits.argmax(-1, keepdim=True)
            out.append(tok)
        return torch.cat(out, 1)


# -------------------------------------------------------------------------------- GAN


class TextEncoder(nn.Module):
    def __init__(self, t, vocab):
        super().__init__()
        self.tok_emb = nn.Embedding(vocab, t["dim"])
        self.pos_emb = nn.Parameter(torch.randn(t["max_len"], t["dim"]) * 0.02)
        self.layers = nn.ModuleList(EncoderLayer(t["dim"], t["heads"], t["mlp"]) for _ in range(t["layers"]))
        self.ln = nn.LayerNorm(t["dim"])
        self.max_len = t["max_len"]

    def forward(self, tokens, pad=0):
        tokens = tokens[:, : self.max_len]
        mask = tokens != pad
        x = self.tok_emb(tokens) + self.pos_emb[: tokens.shape[1]]
        for layer in self.layers:
            x = layer(x, key_mask=mask)
        seq = self.ln(x)
        m = mask[..., None].float()
        pooled = (seq * m).sum(1) / m.sum(1).clamp_min(1.0)
        return pooled, seq, mask


def groups(ch):
    return next(g for g in (8, 4, 2, 1) if ch % g == 0)


class Film(nn.Module):
    def __init__(self, cond, ch):
        super().__init__()
        self.lin = nn.Linear(cond, 2 * ch)
        nn.init.zeros_(self.lin.weight)

    def forward(self, x, c):
        scale, shift = self.lin(c)[:, :, None, None].chunk(2, 1)
        return x * (scale + 1) + shift


class UpBlock(nn.Module):
    def __init__(self, cin, cout, cond, text_dim, attend):
        super().__init__()
        self.conv1, self.norm1 = nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(groups(cout), cout)
        self.film1 = Film(cond, cout)
        self.conv2, self.norm2 = nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(groups(cout), cout)
        self.film2 = Film(cond, cout)
        self.attn = None
        if attend:
            self.attn_ln = nn.LayerNorm(cout)
            self.attn = Attention(cout, text_dim, 4 if cout % 4 == 0 else 1)

    def forward(self, x, cond, tokens, mask):
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        h1 = F.leaky_relu(self.film1(self.norm1(self.conv1(x)), cond))
        out = h1 + F.leaky_relu(self.film2(self.norm2(self.conv2(h1)), cond))
        if self.attn is not None:
            b, c, hh, ww = out.shape
            seq = out.flatten(2).transpose(1, 2)
            a = self.attn(self.attn_ln(seq), ctx=tokens, key_mask=mask)
            out = (seq + a).transpose(1, 2).reshape(b, c, hh, ww)
        return out


class Generator(nn.Module):
    def __init__(self, g, cond, text_dim):
        super().__init__()
        chans = g["channels"]
        self.c0 = chans[0]
        self.fc = nn.Linear(g["z_dim"] + cond, self.c0 * 16)
        blocks, cin, side = [], self.c0, 4
        for c in chans:
            side *= 2
            blocks.append(UpBlock(cin, c, cond, text_dim, side <= g.get("attention_max_side", 16)))
            cin = c
        self.blocks = nn.ModuleList(blocks)
        self.to_rgb = nn.Conv2d(cin, 3, 3, padding=1)
        self.z_dim = g["z_dim"]

    def forward(self, z, cond, tokens, mask):
        x = self.fc(torch.cat([z, cond], 1)).view(-1, self.c0, 4, 4)
        for blk in self.blocks:
            x = blk(x, cond, tokens, mask)
        return torch.tanh(self.to_rgb(x))


class Discriminator(nn.Module):
    def __init__(self, gan, image_size, cond):
        super().__init__()
        convs, cin = [], 3
        for c in gan["disc_channels"]:
            convs.append(nn.Conv2d(cin, c, 4, stride=2, padding=1))
            cin = c
        self.convs = nn.ModuleList(convs)
        side = image_size >> len(gan["disc_channels"])
        t = min(64, cin)
        self.text = nn.Linear(cond, t)
        self.joint = nn.Conv2d(cin + t, cin, 3, padding=1)
        self.head = nn.Conv2d(cin, 1, side)

    def forward(self, x, s):
        h = x
        for c in self.convs:
            h = F.leaky_relu(c(h))
        b, _, hh, ww = h.shape
        t = F.leaky_relu(self.text(s)).view(b, -1, 1, 1).expand(b, -1, hh, ww)
        return self.head(F.leaky_relu(self.joint(torch.cat([h, t], 1)))).view(b)


class Gan(nn.Module):
    """Text encoder + generator + discriminator; hinge loss, mismatched pairs, MA-GP."""

    def __init__(self, m, vocab):
        super().__init__()
        self.text = TextEncoder(m["text"], vocab)
        d = m["text"]["dim"]
        self.generator = Generator(m["generator"], d, d)
        self.discriminator = Discriminator(m["gan"], m["image_size"], d)
        self.gan = m["gan"]

    def d_loss(self, real, tokens):
        z = torch.randn(real.shape[0], self.generator.z_dim)
        with torch.no_grad():
            g, seq, mask = self.text(tokens)
            fake = self.generator(z, g, seq, mask)
        real = real.detach().requires_grad_(True)
        s = g.detach().requires_grad_(True)
        d = self.discriminator
        d_real, d_fake, d_mis = d(real, s), d(fake, s), d(real, s.roll(1, 0))
        hinge = F.relu(1 - d_real).mean() + (F.relu(1 + d_fake).mean() + F.relu(1 + d_mis).mean()) * 0.5
        if self.gan.get("gp_weight", 2.0) <= 0:
            return hinge
        gr, gs = torch.autograd.grad(d_real.sum(), [real, s], create_graph=True)
        b = real.shape[0]
        norm = torch.cat([gr.reshape(b, -1), gs.reshape(b, -1)], 1).square().sum(1).sqrt()
        return hinge + norm.pow(self.gan.get("gp_power", 6.0)).mean() * self.gan.get("gp_weight", 2.0)

    def g_loss(self, real, tokens):
        z = torch.randn(real.shape[0], self.generator.z_dim)
        g, seq, mask = self.text(tokens)
        fake = self.generator(z, g, seq, mask)
        return -self.discriminator(fake, g.detach()).mean()


# ------------------------------------------------------------------------ benchmarks


def params(module):
    return sum(p.numel() for p in module.parameters())


def adamw(parameters, t):
    return torch.optim.AdamW(
        parameters, lr=t["lr"], betas=(t.get("beta1", 0.9), t.get("beta2", 0.999)),
        weight_decay=t.get("weight_decay", 0.01),
    )


def train_step(a):
    cfg = yaml.safe_load(open(a.config))
    m, t = cfg["model"], cfg["train"]
    b, side = t["batch_size"], m["image_size"]
    images = torch.rand(b, 3, side, side) * 2 - 1
    tokens = torch.randint(FIRST_TOKEN, a.vocab, (b, a.seq_len))
    if m.get("kind") == "gan":
        model = Gan(m, a.vocab)
        opt_d = adamw(model.discriminator.parameters(), t)
        opt_g = adamw(list(model.generator.parameters()) + list(model.text.parameters()), t)
        lr_d = t["lr"] * m["gan"].get("lr_d_scale", 4.0)
        for group in opt_d.param_groups:
            group["lr"] = lr_d
        phases = [(opt_d, model.d_loss), (opt_g, model.g_loss)]
        clip = t.get("grad_clip", 1.0)
    else:
        model = Captioner(m, a.vocab)
        opt = adamw(model.parameters(), t)
        phases = [(opt, model.loss)]
        clip = t.get("grad_clip", 1.0)
    n = params(model)
    if a.expect_params and n != a.expect_params:
        raise SystemExit(f"parameter count {n} differs from ekphrasis's {a.expect_params}: the mirror is wrong")
    model.train()
    fwd = bwd = optim = total = 0.0
    for i in range(a.warmup + a.steps):
        for opt, loss_fn in phases:
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=False)
            loss = loss_fn(images, tokens)
            t1 = time.perf_counter()
            loss.backward()
            t2 = time.perf_counter()
            if clip > 0:
                torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], clip)
            opt.step()
            t3 = time.perf_counter()
            if i >= a.warmup:
                fwd, bwd, optim, total = fwd + t1 - t0, bwd + t2 - t1, optim + t3 - t2, total + t3 - t0
    flops_note = "forward + backward, FlopCounterMode"
    if m.get("kind") == "gan":
        # FlopCounterMode cannot follow autograd.grad (MA-GP's double backward): it is
        # counted without the penalty, so the GAN's MFU is a lower bound.
        model.gan = dict(model.gan, gp_weight=0.0)
        flops_note += "; MA-GP's double backward not counted (MFU is a lower bound)"
    flops = step_flops(phases, images, tokens)
    print(json.dumps({
        "model": "gan" if m.get("kind") == "gan" else "captioner", "parameters": n, "batch": b,
        "steps": a.steps, "steps_per_s": a.steps / total, "forward_s": fwd / a.steps,
        "backward_s": bwd / a.steps, "optimizer_s": optim / a.steps,
        "threads": torch.get_num_threads(), "flops_per_step": flops, "flops_note": flops_note,
    }))


def step_flops(phases, images, tokens):
    """Model FLOPs of one training step (forward + backward) by FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        for opt, loss_fn in phases:
            opt.zero_grad(set_to_none=False)
            loss_fn(images, tokens).backward()
    return counter.get_total_flops()


def greedy(a):
    cfg = yaml.safe_load(open(a.config))
    m = cfg["model"]
    model = Captioner(m, a.vocab).eval()
    side = m["image_size"]
    images = torch.rand(a.batch, 3, side, side) * 2 - 1
    model.greedy(images, a.tokens)
    t0 = time.perf_counter()
    for _ in range(a.repeats):
        out = model.greedy(images, a.tokens)
    seconds = time.perf_counter() - t0
    produced = out.numel() * a.repeats
    print(json.dumps({"batch": a.batch, "tokens": produced, "seconds": seconds, "tokens_per_s": produced / seconds}))


def load_pillow(path, size):
    """Decode, centre-crop to a square and resize, as ekphrasis's loader does."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        im = im.crop((left, top, left + s, top + s)).resize((size, size), Image.BILINEAR)
        return np.asarray(im, dtype=np.uint8)


def files(d):
    return sorted(os.path.join(d, f) for f in os.listdir(d))


def pillow(a):
    paths = files(a.dir)
    t0 = time.perf_counter()
    for p in paths:
        load_pillow(p, a.size)
    seconds = time.perf_counter() - t0
    print(json.dumps({"files": len(paths), "seconds": seconds, "images_per_s": len(paths) / seconds}))


class FileDataset(torch.utils.data.Dataset):
    def __init__(self, paths, size):
        self.paths, self.size = paths, size

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return torch.from_numpy(load_pillow(self.paths[i], self.size).copy()).permute(2, 0, 1)


def dataloader(a):
    paths = files(a.dir)
    loader = torch.utils.data.DataLoader(FileDataset(paths, a.size), batch_size=32, num_workers=a.workers)
    t0 = time.perf_counter()
    n = sum(batch.shape[0] for batch in loader)
    seconds = time.perf_counter() - t0
    print(json.dumps({"files": n, "seconds": seconds, "images_per_s": n / seconds, "workers": a.workers}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("train-step")
    s.add_argument("--config", required=True)
    s.add_argument("--vocab", type=int, default=1000)
    s.add_argument("--seq-len", type=int, default=160)
    s.add_argument("--steps", type=int, default=10)
    s.add_argument("--warmup", type=int, default=2)
    s.add_argument("--expect-params", type=int, default=0)
    s = sub.add_parser("greedy")
    s.add_argument("--config", required=True)
    s.add_argument("--vocab", type=int, default=1000)
    s.add_argument("--batch", type=int, default=1)
    s.add_argument("--tokens", type=int, default=200)
    s.add_argument("--repeats", type=int, default=3)
    for name in ("pillow", "dataloader"):
        s = sub.add_parser(name)
        s.add_argument("--dir", required=True)
        s.add_argument("--size", type=int, default=64)
        s.add_argument("--workers", type=int, default=2)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    {"train-step": train_step, "greedy": greedy, "pillow": pillow, "dataloader": dataloader}[a.cmd](a)


if __name__ == "__main__":
    main()
