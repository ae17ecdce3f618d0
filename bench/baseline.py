"""The articles' pipeline and loop, written from their description, as the benchmark's point of comparison.

Per sample: skimage reads one TIFF, keeps channels (3, 2, 1), divides by 4000 into a float tensor, clips
to [0, 1], permutes to CHW. Per step: move to the device, fp16 autocast (CUDA), cross-entropy, gradient
scaler, and a `.item()` for the loss and the accuracy with a progress-bar update every step.

    python bench/baseline.py --data data/eurosat --epochs 3   # trains, printing val_acc each epoch
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from skimage import io
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from eurosat.files import list_files
from eurosat.gpu import resolve_device
from eurosat.models import build_model
from eurosat.timeline import Timeline
from eurosat.training import seed_everything


class BaselineDataset(Dataset):
    def __init__(self, paths, labels):
        self.paths, self.labels = list(paths), list(labels)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        image = io.imread(self.paths[i])[:, :, (3, 2, 1)] / 4000
        return torch.tensor(image, dtype=torch.float32).clip(0, 1).permute(2, 0, 1), self.labels[i]


def baseline_loader(dataset, batch_size: int, workers: int, device: torch.device, shuffle: bool = True) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers, pin_memory=device.type == "cuda")


def baseline_train_epoch(model, batches, optimizer, scaler, device: torch.device) -> tuple[float, float]:
    model.train()
    loss_sum = correct = seen = 0.0
    bar = tqdm(batches, file=sys.stderr, disable=None, leave=False)
    for x, y in bar:
        x, y = x.to(device), y.to(device)
        with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            logits = model(x)
            loss = F.cross_entropy(logits, y)
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        loss_sum += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
        bar.set_description(f"loss {loss_sum / seen:.4f} acc {correct / seen:.4f}")
    return loss_sum / seen, correct / seen


@torch.no_grad()
def baseline_accuracy(model, batches, device: torch.device) -> float:
    model.eval()
    correct = seen = 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            correct += (model(x).argmax(1) == y).sum().item()
        seen += len(y)
    return correct / seen


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/eurosat")
    parser.add_argument("--model", default="tf_efficientnet_b5")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=Path("."), help="metrics.jsonl (one line per epoch) and metrics.json go here")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    files = list_files(args.data)
    # the articles' 80/20 with seed 42, as they write it: the project draws the same split without scikit-learn
    indices = range(len(files.labels))
    train_idx, val_idx = train_test_split(indices, test_size=0.2, stratify=files.labels, random_state=42)
    paths = list(files.paths())
    train, val = ([paths[i] for i in idx] for idx in (train_idx, val_idx))
    train_set = BaselineDataset(train, [files.labels[i] for i in train_idx])
    val_set = BaselineDataset(val, [files.labels[i] for i in val_idx])
    seed_everything(args.seed)
    model = build_model(args.model, len(files.classes), 3).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
    timeline = Timeline()  # the project's record of its time, so that make bench reads both runs the same way
    timeline.mark("model_built", device)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "metrics.jsonl", "w") as metrics:
        for epoch in range(args.epochs):
            baseline_train_epoch(
                model, baseline_loader(train_set, args.batch_size, args.workers, device), optimizer, scaler, device
            )
            val_acc = baseline_accuracy(model, baseline_loader(val_set, args.batch_size, args.workers, device, False), device)
            print(f"Epoch {epoch + 1}/{args.epochs} val_acc {val_acc:.4f}", flush=True)
            metrics.write(json.dumps({"epoch": epoch + 1, "val_acc": val_acc, "elapsed_s": timeline.epoch_end()}) + "\n")
            metrics.flush()
    (args.out / "metrics.json").write_text(json.dumps({"timeline": timeline.summary()}) + "\n")


if __name__ == "__main__":
    main()
