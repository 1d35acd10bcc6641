"""Benchmark: mnistcnn's training path against the textbook PyTorch MNIST loop (and Lightning).

For each model and seed, each side trains in its own fresh subprocess (so peak memory is
its own), with the same model, optimizer (Adam), learning rate, batch size, epochs and seed:

- textbook: torchvision `datasets.MNIST` with per-item `ToTensor`/`Normalize`, a
  `DataLoader`, the loop from pytorch/examples;
- lightning (when `lightning` is importable): a `LightningModule` and `Trainer` fed by a
  `DataLoader` with worker processes and pinned memory, as Lightning's docs advise;
- mnistcnn: its own `engine.fit` (on CUDA: the step replayed as a CUDA graph).

Every epoch is timed alone (the first carries start-up: cuDNN autotuning, graph capture,
worker start), and after every epoch, untimed, the test accuracy is measured, which gives
the training time to reach --target. The order of the sides rotates between runs so that
machine drift hits them all.

    python scripts/bench.py                      # all five models, 2 epochs, 60,000 images
    python scripts/bench.py --models classic --limit 2048 --epochs 1 --out /tmp/bench

Writes bench.json and bench.md into --out (default: the current folder).
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mnistcnn.base.formats import amount, pct
from mnistcnn.base.provenance import cpu_model, recorded_command

MODELS = ["classic", "tiny", "conv5x5", "keras", "mobilenet"]
SIDES = ["textbook", "lightning", "mnistcnn"]
ACCURACY_TOLERANCE = 0.003  # a speed-up counts when mean test accuracies agree this closely
LIGHTNING_WORKERS = 4
PATH_OPTIONS = ("--out", "--data-dir")  # recorded relative to where the bench ran


# ----------------------------------------------------------------------------- workers
def setup(args):
    """Seeded torch and the device; every side starts the same way."""
    import torch

    torch.manual_seed(args.seed)
    device = torch.device(args.device if args.device != "auto" else
                          ("cuda" if torch.cuda.is_available() else "cpu"))
    return torch, device


def bench_config(args):
    """The mnistcnn config of the run; its model section builds every side's model, so a
    --override model.KEY=VALUE changes the architecture for all of them."""
    from mnistcnn.base.config import compose_config

    overrides = [f"model={args.model}", f"data.dir={args.data_dir}", "data.val_size=0",
                 f"trainer.epochs={args.epochs}", f"trainer.batch_size={args.batch_size}",
                 f"optim.lr={args.lr}", f"seed={args.seed}", "report.enabled=false",
                 f"trainer.device={args.device}", *args.override]
    if args.limit:
        overrides.append(f"data.limit={args.limit}")
    return compose_config(overrides)


def build_model(args, device, place: bool = False):
    from mnistcnn import models
    from mnistcnn.training.device import place_model

    model = models.build(bench_config(args).model, 10)
    return place_model(model, device) if place else model.to(device)


def torchvision_sets(args):
    """The textbook datasets: torchvision's MNIST with per-item transforms."""
    from torch.utils.data import Subset
    from torchvision import datasets, transforms

    root = prepare_torchvision_root(Path(args.data_dir), Path(args.scratch))
    transform = transforms.Compose([transforms.ToTensor(),
                                    transforms.Normalize((0.1307,), (0.3081,))])
    train_set = datasets.MNIST(root, train=True, download=False, transform=transform)
    test_set = datasets.MNIST(root, train=False, download=False, transform=transform)
    if args.limit:
        train_set = Subset(train_set, range(args.limit))
    return train_set, test_set


def loader_accuracy(torch, model, loader, device) -> float:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += (model(x.to(device)).argmax(1) == y.to(device)).sum().item()
            total += len(y)
    return correct / total


def textbook(args) -> dict:
    """The textbook loop, written plainly: per-item transforms, DataLoader, .item() logging."""
    torch, device = setup(args)
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    train_set, test_set = torchvision_sets(args)
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True)
    test_loader = DataLoader(test_set, batch_size=1000)
    model = build_model(args, device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    epoch_s, test_acc = [], []
    for _epoch in range(args.epochs):
        sync(torch, device)
        start = time.perf_counter()
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
        epoch_s.append(time.perf_counter() - start)
        test_acc.append(loader_accuracy(torch, model, test_loader, device))
    return worker_result(torch, device, model, len(train_set), epoch_s, test_acc)


def lightning_side(args) -> dict:
    """Lightning's way: a LightningModule, a Trainer, DataLoader workers, pinned memory."""
    torch, device = setup(args)
    import lightning as L
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    train_set, test_set = torchvision_sets(args)
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True,
                              num_workers=LIGHTNING_WORKERS, pin_memory=device.type == "cuda",
                              persistent_workers=True)
    test_loader = DataLoader(test_set, batch_size=1000)
    epoch_s, test_acc = [], []

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = build_model(args, device)

        def training_step(self, batch, _index):
            x, y = batch
            return F.cross_entropy(self.model(x), y)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=args.lr)

    class EpochTimer(L.Callback):
        """Times each training epoch alone, then measures test accuracy untimed."""

        def on_train_epoch_start(self, trainer, module):
            sync(torch, device)
            self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer, module):
            sync(torch, device)
            epoch_s.append(time.perf_counter() - self.start)
            test_acc.append(loader_accuracy(torch, module.model, test_loader, device))
            module.model.train()

    trainer = L.Trainer(max_epochs=args.epochs, accelerator=device.type, devices=1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[EpochTimer()])
    module = Module()
    trainer.fit(module, train_loader)
    return worker_result(torch, device, module.model, len(train_set), epoch_s, test_acc)


def mnistcnn_side(args) -> dict:
    """mnistcnn's own training path: dataset.load + engine.fit, test accuracy after each epoch."""
    torch, device = setup(args)
    from mnistcnn.data import dataset
    from mnistcnn.training import engine
    from mnistcnn.training.cuda_graph_policy import plan_graph
    from mnistcnn.training.device import seed_everything

    cfg = bench_config(args)
    seed_everything(cfg.seed)
    data = dataset.load(cfg.data, device, cfg.seed)
    model = build_model(args, device, place=True)
    training = engine.Training(model, data, cfg, plan_graph(cfg, device))
    epoch_s, test_acc, path = [], [], {}
    for epoch in engine.fit(training):
        # fit times the epoch itself (it ends with a host read, so the device is idle)
        epoch_s.append(epoch.record["epoch_time_s"])
        test_acc.append(engine.evaluate(model, data.test, data, training.loss_fn,
                                        cfg.trainer.eval_batch_size)[1])
        path = epoch.train_path
    # Which loop was timed (eager, CUDA graph, or eager after a failed capture), so that no
    # eager figure is read as a graphed one.
    return {**worker_result(torch, device, model, len(data.train), epoch_s, test_acc),
            "train_path": path}


def sync(torch, device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def worker_result(torch, device, model, images: int, epoch_s: list[float],
                  test_acc: list[float]) -> dict:
    result = {"images": images, "epoch_s": epoch_s, "test_acc": test_acc,
              "params": sum(p.numel() for p in model.parameters()),
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
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


WORKERS = {"textbook": textbook, "lightning": lightning_side, "mnistcnn": mnistcnn_side}


# ----------------------------------------------------------------------------- summaries
def time_to_target(run: dict, target: float) -> float | None:
    """Training seconds until the first epoch whose test accuracy reaches the target."""
    elapsed = 0.0
    for seconds, acc in zip(run["epoch_s"], run["test_acc"], strict=True):
        elapsed += seconds
        if acc >= target:
            return elapsed
    return None


def summarize(runs: list[dict], target: float) -> dict:
    """One side of one model over its seeds: means (and spreads) of what the table shows.
    The steady epoch is the mean of every epoch after the first."""
    images = runs[0]["images"]
    first = [r["epoch_s"][0] for r in runs]
    steady = [statistics.fmean(r["epoch_s"][1:]) for r in runs if len(r["epoch_s"]) > 1]
    reached = [time_to_target(r, target) for r in runs]
    accs = [r["test_acc"][-1] for r in runs]
    summary = {"images": images, "params": runs[0]["params"], "seeds": len(runs),
               "first_epoch_s": statistics.fmean(first),
               "steady_epoch_s": statistics.fmean(steady) if steady else None,
               "test_acc": statistics.fmean(accs),
               "test_acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
               # None unless every seed reached the target: a mean over some seeds flatters
               "time_to_target_s": (statistics.fmean(reached)
                                    if all(t is not None for t in reached) else None),
               "peak_rss_mb": max(r["peak_rss_mb"] for r in runs), "runs": runs}
    paths = sorted({r["train_path"]["train_path"] for r in runs if "train_path" in r})
    if paths:
        summary["train_path"] = "/".join(paths)
    epoch = summary["steady_epoch_s"] or summary["first_epoch_s"]
    summary["images_per_s"] = images / epoch
    if "peak_cuda_mb" in runs[0]:
        summary["peak_cuda_mb"] = max(r["peak_cuda_mb"] for r in runs)
    return summary


def speedups(sides: dict) -> dict:
    """mnistcnn's steady-epoch speed over each other side, and whether the accuracies agree:
    within ACCURACY_TOLERANCE, or within two standard errors of the difference."""
    ours = sides["mnistcnn"]
    out = {}
    for name, other in sides.items():
        if name == "mnistcnn":
            continue
        se = ((ours["test_acc_std"] ** 2 / ours["seeds"]) +
              (other["test_acc_std"] ** 2 / other["seeds"])) ** 0.5
        gap = abs(ours["test_acc"] - other["test_acc"])
        out[name] = {"speedup": ours["images_per_s"] / other["images_per_s"],
                     "accuracy_agrees": gap <= max(ACCURACY_TOLERANCE, 2 * se)}
    return out


# ----------------------------------------------------------------------------- driver
def machine() -> dict:
    import torch

    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def run_worker(side: str, model: str, seed: int, args, scratch: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", side, "--models", model,
           "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
           "--lr", str(args.lr), "--seed", str(seed), "--device", args.device,
           "--data-dir", args.data_dir, "--scratch", scratch, "--limit", str(args.limit)]
    for o in args.override:
        cmd += ["--override", o]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{side} worker for {model} (seed {seed}) failed:\n"
                         f"{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_model(model: str, sides: list[str], args, scratch: str, turn: int) -> dict:
    """Every side over every seed; the side that goes first rotates from run to run."""
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    for seed in range(args.seed, args.seed + args.seeds):
        k = turn + seed
        for side in sides[k % len(sides):] + sides[:k % len(sides)]:
            runs[side].append(run_worker(side, model, seed, args, scratch))
    summaries = {side: summarize(r, args.target) for side, r in runs.items()}
    return {"model": model, **summaries, "vs": speedups(summaries)}


def fmt_s(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds:.2f}"


def markdown(results: list[dict], info: dict, command: str, settings: dict) -> str:
    sides = [s for s in SIDES if s in results[0]]
    others = [s for s in sides if s != "mnistcnn"]
    lines = [f"Machine: {info['cpu']}, {info['cores']} cores"
             + (f", {info['gpu']}" if "gpu" in info else "")
             + f"; torch {info['torch']} ({info['threads']} threads). Command: `{command}`",
             "", f"{settings['epochs']} epochs of {results[0]['mnistcnn']['images']:,} images, "
             f"batch {settings['batch_size']}, {settings['seeds']} seed(s) per side; times are "
             f"means over seeds; time to {100 * settings['target']:g}% test accuracy counts "
             f"training time only ('–': not reached by every seed).", "",
             "| model | side | first epoch (s) | steady epoch (s) | img/s | "
             f"to {100 * settings['target']:g}% (s) | test acc | peak RSS (MB) | "
             + " | ".join(f"speed-up vs {o}" for o in others) + " |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | "
             + " | ".join("---:" for _ in others) + " |"]
    for r in results:
        for side in sides:
            s = r[side]
            acc = pct(s["test_acc"])
            if s["seeds"] > 1:
                acc += f" ± {amount(s['test_acc_std'], 'acc')}"
            mem = f"{s['peak_rss_mb']:.0f}"
            if "peak_cuda_mb" in s:
                mem += f" (CUDA {s['peak_cuda_mb']:.0f})"
            ratios = [(f"{r['vs'][o]['speedup']:.2f}×"
                       + ("" if r["vs"][o]["accuracy_agrees"] else " (acc differs)"))
                      if side == "mnistcnn" else "" for o in others]
            name = f"{side} ({s['train_path']})" if "train_path" in s else side
            lines.append(f"| {r['model']} | {name} | {fmt_s(s['first_epoch_s'])} | "
                         f"{fmt_s(s['steady_epoch_s'])} | {s['images_per_s']:,.0f} | "
                         f"{fmt_s(s['time_to_target_s'])} | {acc} | {mem} | "
                         + " | ".join(ratios) + " |")
    return "\n".join(lines) + "\n"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--epochs", type=int, default=2,
                   help="epochs per run; the first is reported apart from the later ones")
    p.add_argument("--seeds", type=int, default=1, help="runs per side and model (seeds)")
    p.add_argument("--target", type=float, default=0.97,
                   help="test accuracy whose training time is reported")
    p.add_argument("--limit", type=int, default=0, help="train on the first N images (0 = all)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--device", default="auto")
    p.add_argument("--sides", default=",".join(SIDES),
                   help="which sides to run; lightning is left out when it is not installed")
    p.add_argument("--data-dir", default=os.environ.get("MNISTCNN_DATA_DIR", "data"))
    p.add_argument("--override", action="append", default=[],
                   help="extra Hydra override, e.g. trainer.cuda_graph=false; model.* ones "
                        "change every side's model")
    p.add_argument("--out", default=".")
    p.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--scratch", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.data_dir = str(Path(args.data_dir).resolve())
    return args


def chosen_sides(args) -> list[str]:
    sides = [s for s in args.sides.split(",") if s]
    unknown = set(sides) - set(SIDES)
    if unknown or "mnistcnn" not in sides:
        raise SystemExit(f"--sides takes mnistcnn plus any of {', '.join(SIDES)}")
    if "lightning" in sides and importlib.util.find_spec("lightning") is None:
        print("lightning is not installed: its column is left out", file=sys.stderr)
        sides.remove("lightning")
    return sides


def main() -> None:
    args = parse_args()
    if args.worker:
        args.model = args.models
        print(json.dumps(WORKERS[args.worker](args)))
        return
    sides = chosen_sides(args)
    command = recorded_command(["python", "scripts/bench.py"], sys.argv[1:], PATH_OPTIONS)
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        for turn, model in enumerate(args.models.split(",")):
            r = bench_model(model, sides, args, scratch, turn)
            results.append(r)
            print(f"{model}: " + ", ".join(
                f"{s} {r[s]['images_per_s']:,.0f} img/s ({pct(r[s]['test_acc'])})"
                for s in sides) + "; mnistcnn " + ", ".join(
                f"{v['speedup']:.2f}x vs {o}" for o, v in r["vs"].items()), flush=True)
    settings = {k: getattr(args, k) for k in ("epochs", "seeds", "target", "limit",
                                              "batch_size", "lr", "seed", "device", "override")}
    report = {"machine": machine(), "command": command, "settings": settings,
              "results": results}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "bench.md").write_text(markdown(results, report["machine"], command, settings))
    print(f"wrote {out / 'bench.json'} and {out / 'bench.md'}")


if __name__ == "__main__":
    main()
