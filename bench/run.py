"""`make bench`: ekphrasis against the PyTorch-in-Python way of doing the same jobs,
side by side in one run, as ratios (the machine is noisy; absolute numbers drift), each
side the best of three interleaved trials.

Rows: decode + resize of image files (rayon vs a Pillow loop and a 2-worker DataLoader);
training steps/s of the demo captioner and GAN (same architecture, batch and threads;
parameter counts asserted equal); greedy decoding tokens/s with a KV cache; model FLOPs
utilisation of each training step against the matmul peak measured in the same run.
Writes bench/results.json and prints the table.

usage: run.py --bin target/release/ekphrasis [--quick]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CAPTIONER = os.path.join(ROOT, "experiments/bench/captioner.yaml")
GAN = os.path.join(ROOT, "experiments/demo/t2i-gan.yaml")


def run_json(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"benchmark step failed: {' '.join(cmd)}\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def best_of(trials, key, *cmds):
    """Runs the commands in turn, `trials` rounds, and keeps each one's fastest run by
    `key`. Interleaving spreads the machine's background load over both sides, and the
    best run is the least disturbed one."""
    best = [None] * len(cmds)
    for _ in range(trials):
        for i, cmd in enumerate(cmds):
            r = run_json(cmd)
            if best[i] is None or r[key] > best[i][key]:
                best[i] = r
    return best


def write_images(d, n, side=256, seed=0):
    """n paintings-like files, half JPEG and half PNG: gradients with a few shapes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side] / side
    for i in range(n):
        top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        img = (top * (1 - yy[..., None]) + bottom * yy[..., None]).astype(np.uint8)
        for _ in range(4):
            x0, y0 = rng.integers(0, side - 40, 2)
            w, h = rng.integers(16, 80, 2)
            img[y0 : y0 + h, x0 : x0 + w] = rng.integers(0, 256, 3)
        img = img + (xx[..., None] * 20).astype(np.uint8)  # texture JPEG has to code
        ext = "jpg" if i % 2 == 0 else "png"
        Image.fromarray(img).save(os.path.join(d, f"img{i:05d}.{ext}"))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", default=os.path.join(ROOT, "target/release/ekphrasis"))
    p.add_argument("--quick", action="store_true", help="a one-minute version (fewer files and steps)")
    p.add_argument("--out", default=os.path.join(HERE, "results.json"))
    a = p.parse_args()
    ek = [a.bin, "--device", "cpu"]
    py = [sys.executable, os.path.join(HERE, "reference.py")]
    files, steps, gan_steps, repeats, trials = (300, 3, 2, 1, 1) if a.quick else (1000, 20, 8, 3, 3)
    t_start = time.time()
    rows, raw = [], {}

    def row(name, ours, ref, unit, target=None):
        ratio = ours / ref
        rows.append({
            "row": name, "ekphrasis": ours, "reference": ref, "unit": unit, "ratio": ratio,
            "target": target, "met": None if target is None else ratio >= target,
        })

    # 1. Decode + resize.
    with tempfile.TemporaryDirectory() as d:
        write_images(d, files)
        ours, pil, dl = best_of(
            trials, "images_per_s",
            ek + ["bench", "decode-files", "--dir", d, "--size", "64"],
            py + ["pillow", "--dir", d, "--size", "64"],
            py + ["dataloader", "--dir", d, "--size", "64", "--workers", "2"],
        )
    raw["decode"] = {"ekphrasis": ours, "pillow_loop": pil, "dataloader_2_workers": dl}
    row(f"decode+resize {files} JPEG/PNG → 64 px vs Pillow loop", ours["images_per_s"], pil["images_per_s"], "images/s", 3.0)
    row("decode+resize vs DataLoader(num_workers=2)", ours["images_per_s"], dl["images_per_s"], "images/s")

    # 2. Training steps, same threads.
    (peak,) = best_of(trials, "gflops", ek + ["bench", "matmul"])
    threads = str(peak["threads"])
    raw["matmul_peak"] = peak
    for name, cfg, n in (("captioner", CAPTIONER, steps), ("gan", GAN, gan_steps)):
        params = run_json(ek + ["bench", "train-step", "-c", cfg, "--steps", "1", "--warmup", "0"])["parameters"]
        ours, ref = best_of(
            trials, "steps_per_s",
            ek + ["bench", "train-step", "-c", cfg, "--steps", str(n), "--warmup", "1"],
            py[:2] + ["--threads", threads] + py[2:] + [
                "train-step", "--config", cfg, "--steps", str(n), "--warmup", "1",
                "--expect-params", str(params),
            ],
        )
        raw[f"train_{name}"] = {"ekphrasis": ours, "reference": ref}
        row(f"train steps/s, demo {name} (batch {ours['batch']}, {ours['parameters']:,} params)",
            ours["steps_per_s"], ref["steps_per_s"], "steps/s", 1.0)
        flops = ref["flops_per_step"]
        mfu = {
            "ekphrasis": flops * ours["steps_per_s"] / (peak["gflops"] * 1e9),
            "reference": flops * ref["steps_per_s"] / (peak["gflops"] * 1e9),
            "flops_per_step": flops, "peak_gflops": peak["gflops"], "note": ref["flops_note"],
        }
        raw[f"mfu_{name}"] = mfu
        row(f"MFU of the {name} step ({flops / 1e9:.1f} GFLOP/step; peak {peak['gflops']:.0f} GFLOP/s)",
            mfu["ekphrasis"], mfu["reference"], "fraction of peak")

    # 3. Greedy decoding.
    ours, ref = best_of(
        trials, "tokens_per_s",
        ek + ["bench", "greedy", "-c", CAPTIONER, "--tokens", "200", "--repeats", str(repeats)],
        py[:2] + ["--threads", threads] + py[2:] + [
            "greedy", "--config", CAPTIONER, "--tokens", "200", "--repeats", str(repeats)],
    )
    raw["greedy"] = {"ekphrasis": ours, "reference": ref}
    row("greedy decoding, KV cache, batch 1, 200 tokens", ours["tokens_per_s"], ref["tokens_per_s"], "tokens/s", 2.0)

    # 4. Exported models (make export), when there are any.
    models = os.path.join(ROOT, "models")
    if any(os.path.exists(os.path.join(models, d, "manifest.json")) for d in os.listdir(models)):
        raw["exported"] = run_json(ek + ["bench", "exported", "--models", models])

    result = {"quick": a.quick, "seconds": time.time() - t_start, "threads": peak["threads"], "rows": rows, "raw": raw}
    with open(a.out, "w") as f:
        json.dump(result, f, indent=2)
    w = max(len(r["row"]) for r in rows)
    print(f"{'row':<{w}}  {'ekphrasis':>11}  {'reference':>11}  {'ratio':>6}  target")
    for r in rows:
        t = "" if r["target"] is None else f"≥{r['target']:.1f}× {'met' if r['met'] else 'MISSED'}"
        print(f"{r['row']:<{w}}  {r['ekphrasis']:>11.4g}  {r['reference']:>11.4g}  {r['ratio']:>5.2f}×  {t}")
    for name in ("captioner", "gan"):
        e = raw[f"train_{name}"]["ekphrasis"]
        print(f"where a {name} step goes (ekphrasis): forward {e['forward_s'] * 1e3:.0f} ms, "
              f"backward {e['backward_s'] * 1e3:.0f} ms, optimizer {e['optimizer_s'] * 1e3:.0f} ms")
    for e in raw.get("exported", []):
        print(f"exported {e['kind']:<9} {e['megabytes']:6.1f} MB, loads in {e['load_s'] * 1e3:4.0f} ms, "
              f"{e['per_s']:7.1f} {e['unit']}/s (batch {e['batch']}, CPU)")
    print(f"wrote {a.out} in {result['seconds']:.0f} s")


if __name__ == "__main__":
    main()
