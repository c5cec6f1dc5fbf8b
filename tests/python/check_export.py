"""Loads exported ekphrasis models with plain PyTorch (torch.jit.load) and checks that
they give the trainer's outputs on fixed inputs written by tests/export.rs.

usage: check_export.py CASES.json   (exit 0 when every case matches)
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch


def load_input(base, spec):
    t = torch.from_numpy(np.load(base / spec["npy"]))
    return t.to(torch.bool) if spec.get("dtype") == "bool" else t


def greedy(model_dir, images):
    """Greedy decoding over encoder.pt + step.pt, the KV cache updated in place."""
    manifest = json.loads((model_dir / "manifest.json").read_text())
    cfg, special = manifest["config"]["model"], manifest["tokenizer"]
    encoder = torch.jit.load(str(model_dir / "encoder.pt"))
    step = torch.jit.load(str(model_dir / "step.pt"))
    b = images.shape[0]
    heads = cfg["heads"]
    with torch.no_grad():
        cross_kv = encoder(images)
        self_kv = torch.zeros(2, cfg["layers"], b, heads, cfg["max_len"], cfg["dim"] // heads)
        rows = [[special["bos"]] for _ in range(b)]
        done = [False] * b
        for pos in range(cfg["max_len"] - 1):
            last = torch.tensor([[r[-1]] for r in rows])
            nxt = step(last, torch.tensor([pos]), self_kv, cross_kv).argmax(-1).tolist()
            for i, tok in enumerate(nxt):
                if not done[i]:
                    rows[i].append(tok)
                    done[i] = tok == special["eos"]
            if all(done):
                break
    return rows


def main():
    cases_path = Path(sys.argv[1])
    base = cases_path.parent
    cases = json.loads(cases_path.read_text())
    failures = []
    for case in cases["modules"]:
        module = torch.jit.load(str(Path(case["model"]) / case["module"]))
        # A device constant in the graph (e.g. from a dtype cast that records the tracing
        # device) makes the module fail once loaded on a GPU.
        if 'value="cpu"' in str(module.inlined_graph):
            print(f"PINNED   {case['name']}: the graph holds a CPU device constant")
            failures.append(case["name"] + " (pinned to the CPU)")
        inputs = [load_input(base, s) for s in case["inputs"]]
        with torch.no_grad():
            got = module(*inputs)
        want = torch.from_numpy(np.load(base / case["expected"]))
        err = (got.float() - want.float()).abs().max().item()
        status = "ok" if err <= case["atol"] else "MISMATCH"
        print(f"{status:8} {case['name']}: max |python - trainer| = {err:.2e}")
        if err > case["atol"]:
            failures.append(case["name"])
    cap = cases.get("captioner")
    if cap:
        rows = greedy(Path(cap["model"]), torch.from_numpy(np.load(base / cap["images"])))
        same = rows == cap["ids"]
        print(f"{'ok' if same else 'MISMATCH':8} captioner greedy tokens ({len(rows)} images)")
        if not same:
            failures.append("captioner greedy tokens")
    if failures:
        print("failed:", ", ".join(failures))
        sys.exit(1)


if __name__ == "__main__":
    main()
