"""PyTorch re-creations of registry models, for `train_throughput.py --peer torch`.

Each peer is the same network as keras_digits' model of that name (layer for layer: filters, kernel
sizes, BatchNorm momentum 0.1 = Keras' 0.9, dropout rates, He-normal convs in the ResNet, softmax
folded into the cross-entropy), trained the way a PyTorch user would write it: NCHW tensors, Adam
1e-3, `loss.backward()`, `optimizer.step()`, with the batch accuracy computed each step as Keras'
metric does. `torch.autocast("cpu", torch.bfloat16)` for bfloat16. Needs the optional `bench` extra
(`pip install -e ".[bench]"`).
"""

from __future__ import annotations

import time

import numpy as np


def available() -> str | None:
    """torch's version, or None when it is not installed."""
    try:
        import torch
    except ImportError:
        return None
    return torch.__version__


def simple_cnn(in_ch: int, classes: int, size: int):
    """keras_digits' simple_cnn: 3x (conv 3x3 + BN + ReLU + maxpool 2 + dropout .25), dense 256 + BN +
    ReLU + dropout .5, dense classes."""
    from torch import nn

    layers, ch = [], in_ch
    for f in (32, 64, 128):
        layers += [
            nn.Conv2d(ch, f, 3, padding=1),
            nn.BatchNorm2d(f, momentum=0.1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Dropout(0.25),
        ]
        ch, size = f, size // 2
    layers += [
        nn.Flatten(),
        nn.Linear(ch * size * size, 256),
        nn.BatchNorm1d(256, momentum=0.1),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(256, classes),
    ]
    return nn.Sequential(*layers)


def resnet18(in_ch: int, classes: int, size: int, width: int = 64):
    """keras_digits' resnet18: basic blocks (2, 2, 2, 2), 3x3 stride-1 stem without max-pool below 64 px."""
    import torch
    from torch import nn

    def conv(cin, cout, k, stride=1):
        c = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)
        nn.init.kaiming_normal_(c.weight, nonlinearity="relu")
        return c

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.body = nn.Sequential(
                conv(cin, cout, 3, stride), nn.BatchNorm2d(cout), nn.ReLU(), conv(cout, cout, 3), nn.BatchNorm2d(cout)
            )
            self.short = (
                nn.Sequential(conv(cin, cout, 1, stride), nn.BatchNorm2d(cout))
                if stride != 1 or cin != cout
                else nn.Identity()
            )

        def forward(self, x):
            return torch.relu(self.short(x) + self.body(x))

    small = size < 64
    stem = [conv(in_ch, width, 3) if small else conv(in_ch, width, 7, 2), nn.BatchNorm2d(width), nn.ReLU()]
    if not small:
        stem.append(nn.MaxPool2d(3, 2, padding=1))
    blocks, cin = [], width
    for s, n in enumerate((2, 2, 2, 2)):
        cout = width * 2**s
        for b in range(n):
            blocks.append(Block(cin, cout, 2 if (s > 0 and b == 0) else 1))
            cin = cout
    return nn.Sequential(*stem, *blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes))


PEERS = {"simple_cnn": simple_cnn, "resnet18": resnet18}


def train_images_per_second(
    arch: str,
    x: np.ndarray,
    y: np.ndarray,
    classes: int,
    batch_size: int,
    steps: int,
    warmup: int,
    precision: str = "float32",
    seed: int = 0,
) -> float:
    """Images/s of `steps` training steps after `warmup`, on uint8 NHWC `x` (scaled to 0..1 in the
    loop, as the Keras model's Rescaling layer does), batches gathered by a shuffled index each epoch."""
    import torch
    from torch import nn

    if arch not in PEERS:
        raise SystemExit(f"no PyTorch peer for {arch}; peers: {', '.join(PEERS)}")
    torch.manual_seed(seed)
    model = PEERS[arch](x.shape[-1], classes, x.shape[1])
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    images = torch.from_numpy(np.ascontiguousarray(x))
    labels = torch.from_numpy(y.astype(np.int64))
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=gen)
    pos = 0
    autocast = precision == "bfloat16"
    t0 = 0.0
    for step in range(steps + warmup):
        if step == warmup:
            t0 = time.perf_counter()
        if pos + batch_size > len(order):
            order, pos = torch.randperm(len(labels), generator=gen), 0
        idx = order[pos : pos + batch_size]
        pos += batch_size
        xb = images[idx].permute(0, 3, 1, 2).float().div_(255.0)
        yb = labels[idx]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = model(xb)
            loss = loss_fn(logits.float(), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        (logits.argmax(1) == yb).float().mean().item()  # the batch accuracy Keras reports, and a sync point
    return steps * batch_size / (time.perf_counter() - t0)
