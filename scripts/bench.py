"""Benchmark: mnistcnn's training path against the textbook PyTorch MNIST loop.

For each model, one invocation runs (a) the textbook pipeline — torchvision
`datasets.MNIST` with per-item `ToTensor`/`Normalize` and a `DataLoader`, the
loop from pytorch/examples — and (b) mnistcnn's own `engine.fit` path, with the
same model, optimizer, learning rate, batch size, epochs and seed. Each side
runs in its own fresh subprocess (so peak memory is its own), and the order
alternates between models so that machine drift hits both.

    python scripts/bench.py                      # all five models, 1 epoch, 60,000 images
    python scripts/bench.py --models classic --limit 2048 --out /tmp/bench

Writes bench.json and bench.md into --out (default: the current folder).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODELS = ["classic", "tiny", "conv5x5", "keras", "mobilenet"]
ACCURACY_TOLERANCE = 0.003  # the ratio counts only when test accuracies agree this closely


# ----------------------------------------------------------------------------- workers
def common_setup(args):
    import torch

    torch.manual_seed(args.seed)
    device = torch.device(args.device if args.device != "auto" else
                          ("cuda" if torch.cuda.is_available() else "cpu"))
    return torch, device


def build_model(name: str, torch_device, place=False):
    from mnistcnn import engine, models
    from mnistcnn.cli import compose_config

    model = models.build(compose_config([f"model={name}"]).model, 10)
    return engine.place_model(model, torch_device) if place else model.to(torch_device)


def textbook(args) -> dict:
    """The textbook loop, written plainly: per-item transforms, DataLoader, .item() logging."""
    torch, device = common_setup(args)
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    root = prepare_torchvision_root(Path(args.data_dir), Path(args.scratch))
    transform = transforms.Compose([transforms.ToTensor(),
                                    transforms.Normalize((0.1307,), (0.3081,))])
    train_set = datasets.MNIST(root, train=True, download=False, transform=transform)
    test_set = datasets.MNIST(root, train=False, download=False, transform=transform)
    if args.limit:
        train_set = Subset(train_set, range(args.limit))
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True)
    test_loader = DataLoader(test_set, batch_size=1000)
    model = build_model(args.model, device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sync(torch, device)
    start = time.perf_counter()
    for _epoch in range(args.epochs):
        model.train()
        for batch, (x, y) in enumerate(train_loader):
            x, y = x.to(device), y.to(device)
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            if batch % 10 == 0:
                loss.item()  # the example's progress logging reads the loss every 10 batches
    sync(torch, device)
    train_time = time.perf_counter() - start
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in test_loader:
            correct += (model(x.to(device)).argmax(1) == y.to(device)).sum().item()
    return finish(torch, device, len(train_set) * args.epochs, train_time,
                  correct / len(test_set))


def mnistcnn_path(args) -> dict:
    """mnistcnn's own training path: data.load + engine.fit + engine.evaluate."""
    torch, device = common_setup(args)
    from mnistcnn import data as data_mod
    from mnistcnn import engine
    from mnistcnn.cli import compose_config

    overrides = [f"model={args.model}", f"data.dir={args.data_dir}", "data.val_size=0",
                 f"trainer.epochs={args.epochs}", f"trainer.batch_size={args.batch_size}",
                 f"optim.lr={args.lr}", f"seed={args.seed}", *args.override]
    if args.limit:
        overrides.append(f"data.limit={args.limit}")
    cfg = compose_config(overrides)
    engine.seed_everything(cfg.seed)
    data = data_mod.load(cfg.data, device, cfg.seed)
    model = build_model(args.model, device, place=True)
    sync(torch, device)
    start = time.perf_counter()
    engine.fit(model, data, cfg, lambda record, training: None)
    sync(torch, device)
    train_time = time.perf_counter() - start
    _, acc, _ = engine.evaluate(model, data.test, data, engine.make_loss(cfg.loss, 10),
                                cfg.trainer.eval_batch_size)
    return finish(torch, device, len(data.train) * args.epochs, train_time, acc)


def sync(torch, device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def finish(torch, device, images: int, train_time: float, acc: float) -> dict:
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"images": images, "train_time_s": train_time, "images_per_s": images / train_time,
              "test_acc": acc, "peak_rss_mb": peak_rss_mb}
    if device.type == "cuda":
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def prepare_torchvision_root(data_dir: Path, scratch: Path) -> Path:
    """torchvision's MNIST wants uncompressed files in ROOT/MNIST/raw; make them once."""
    raw = scratch / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        if (raw / stem).exists():
            continue
        if (data_dir / stem).exists():
            shutil.copy(data_dir / stem, raw / stem)
        else:
            (raw / stem).write_bytes(gzip.decompress((data_dir / (stem + ".gz")).read_bytes()))
    return scratch


# ----------------------------------------------------------------------------- driver
def machine() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def run_worker(kind: str, model: str, args, scratch: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--models", model,
           "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
           "--lr", str(args.lr), "--seed", str(args.seed), "--device", args.device,
           "--data-dir", args.data_dir, "--scratch", scratch]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    for o in args.override:
        cmd += ["--override", o]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{kind} worker for {model} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def markdown(results: list[dict], info: dict, command: str) -> str:
    lines = [f"Machine: {info['cpu']}, {info['cores']} cores"
             + (f", {info['gpu']}" if "gpu" in info else "")
             + f"; torch {info['torch']} ({info['threads']} threads). Command: `{command}`", "",
             "| model | textbook img/s | mnistcnn img/s | speed-up | textbook test acc "
             "| mnistcnn test acc | peak RSS textbook / mnistcnn (MB) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        t, m = r["textbook"], r["mnistcnn"]
        ratio = f"{r['speedup']:.2f}×" + ("" if r["accuracy_agrees"] else " (acc differs)")
        mem = f"{t['peak_rss_mb']:.0f} / {m['peak_rss_mb']:.0f}"
        if "peak_cuda_mb" in m:
            mem += f" (CUDA {t['peak_cuda_mb']:.0f} / {m['peak_cuda_mb']:.0f})"
        lines.append(f"| {r['model']} | {t['images_per_s']:,.0f} | {m['images_per_s']:,.0f} | "
                     f"{ratio} | {100 * t['test_acc']:.2f}% | {100 * m['test_acc']:.2f}% | "
                     f"{mem} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--limit", type=int, default=0, help="train on the first N images (0 = all)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir", default=os.environ.get("MNISTCNN_DATA_DIR", "data"))
    p.add_argument("--override", action="append", default=[],
                   help="extra Hydra override for the mnistcnn side, e.g. trainer.compile=true")
    p.add_argument("--out", default=".")
    p.add_argument("--worker", choices=["textbook", "mnistcnn"], help=argparse.SUPPRESS)
    p.add_argument("--scratch", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.data_dir = str(Path(args.data_dir).resolve())

    if args.worker:
        args.model = args.models
        result = (textbook if args.worker == "textbook" else mnistcnn_path)(args)
        print(json.dumps(result))
        return

    info = machine()
    command = "python scripts/bench.py " + " ".join(sys.argv[1:])
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        for i, model in enumerate(args.models.split(",")):
            # Alternate which side goes first so that drift does not favour one of them.
            order = ["textbook", "mnistcnn"] if i % 2 == 0 else ["mnistcnn", "textbook"]
            sides = {kind: run_worker(kind, model, args, scratch) for kind in order}
            t, m = sides["textbook"], sides["mnistcnn"]
            r = {"model": model, **sides, "speedup": m["images_per_s"] / t["images_per_s"],
                 "accuracy_agrees": abs(m["test_acc"] - t["test_acc"]) <= ACCURACY_TOLERANCE}
            results.append(r)
            print(f"{model}: textbook {t['images_per_s']:,.0f} img/s ({100 * t['test_acc']:.2f}%)"
                  f", mnistcnn {m['images_per_s']:,.0f} img/s ({100 * m['test_acc']:.2f}%), "
                  f"{r['speedup']:.2f}x", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: getattr(args, k) for k in ("epochs", "limit", "batch_size", "lr", "seed",
                                              "device", "override")}
    report = {"machine": info, "command": command, "settings": settings, "results": results}
    (out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "bench.md").write_text(markdown(results, info, command))
    print(f"wrote {out / 'bench.json'} and {out / 'bench.md'}")


if __name__ == "__main__":
    main()
