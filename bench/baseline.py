"""The articles' pipeline and loop, written from their description, as the benchmark's point of comparison.

Per sample: skimage reads one TIFF, keeps channels (3, 2, 1), divides by 4000 into a float tensor, clips
to [0, 1], permutes to CHW. Per step: move to the device, fp16 autocast (CUDA), cross-entropy, gradient
scaler, and a `.item()` for the loss and the accuracy with a progress-bar update every step.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from skimage import io
from torch.utils.data import Dataset
from tqdm import tqdm


class BaselineDataset(Dataset):
    def __init__(self, paths, labels):
        self.paths, self.labels = list(paths), list(labels)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        image = io.imread(self.paths[i])[:, :, (3, 2, 1)] / 4000
        return torch.tensor(image, dtype=torch.float32).clip(0, 1).permute(2, 0, 1), self.labels[i]


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
