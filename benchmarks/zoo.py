"""The zoo table of docs/training.md: every registered arch trained with the README's own command and defaults.

    python benchmarks/zoo.py                                  # every arch on the digits: about an hour on 2 cores
    python benchmarks/zoo.py --archs simple_cnn xception      # some of them
    python benchmarks/zoo.py --mnist 3000 --data-dir ../shared/data --archs simple_cnn resnet18

Each arch runs as `python -m keras_digits.train --arch ARCH --run-dir OUT/runs/ARCH` in a fresh process:
nothing but the arch (and, with --mnist N, `--dataset mnist --max-train-samples N`) differs from what a
new user types, so the figures are what the defaults give. The table has test accuracy (scored once, at
the end, on the kept model), epochs run (early stopping included), the process's wall time, training
images per second of epoch time (training, validation and any precise-BatchNorm recalibration), the
recalibration's share of that time, and whether the collapse detector fired. It is written to
OUT/zoo.md and OUT/zoo.json with the CPU, its vector ISA (AVX2 / AVX-512 / AMX), the core count and the
date; a finished arch is kept, so an interrupted table resumes (--rerun trains again).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from keras_digits.runtime.precision import cpu_isa, cpu_name  # noqa: E402


def history_sums(path: Path) -> dict[str, float]:
    """Sums of the epoch_seconds and precise_bn_seconds columns of a run's history.csv."""
    out = {"epoch_seconds": 0.0, "precise_bn_seconds": 0.0}
    with path.open() as f:
        for row in csv.DictReader(f):
            for key in out:
                try:
                    out[key] += float(row.get(key) or 0.0)
                except ValueError:
                    pass
    return out


def run_arch(arch: str, run_dir: Path, extra: list[str], log: Path) -> dict:
    """Train one arch with the README's command (plus `extra`); its row of the table."""
    cmd = [
        sys.executable,
        "-m",
        "keras_digits.train",
        "--arch",
        arch,
        *extra,
        "--run-dir",
        str(run_dir),
        "--verbose",
        "2",
    ]
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.run(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env={**os.environ})
    wall = time.perf_counter() - start
    row = {"arch": arch, "command": "python -m keras_digits.train --arch " + " ".join([arch, *extra]), "wall_s": wall}
    metrics_path = run_dir / "metrics.json"
    if proc.returncode != 0 or not metrics_path.is_file():
        row["error"] = f"exit {proc.returncode}; see {log}"
        return row
    metrics = json.loads(metrics_path.read_text())
    dataset = json.loads((run_dir / "dataset.json").read_text())
    sums = history_sums(run_dir / "history.csv")
    n_train = int((dataset.get("sizes") or {}).get("train") or dataset.get("n_train") or 0)
    epochs = int(metrics.get("epochs_run") or 0)
    row.update(
        test_accuracy=metrics.get("test", {}).get("accuracy"),
        val_accuracy=metrics.get("val", {}).get("accuracy"),
        epochs=epochs,
        train_images=n_train,
        images_per_s=n_train * epochs / sums["epoch_seconds"] if sums["epoch_seconds"] and n_train else None,
        precise_bn_share=sums["precise_bn_seconds"] / sums["epoch_seconds"] if sums["epoch_seconds"] else 0.0,
        collapse_epochs=len(json.loads((run_dir / "collapse.json").read_text()).get("epochs", []))
        if (run_dir / "collapse.json").is_file()
        else 0,
    )
    return row


def fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def markdown(rows: list[dict], header: dict) -> str:
    measured = sorted({f"{r.get('machine', header['machine'])}, {r.get('date', header['date'])}" for r in rows})
    lines = [
        f"{'; '.join(measured)}; each row: the command shown, defaults otherwise.",
        "",
        "| arch | test acc | epochs | wall | train img/s | precise BN | collapse | command |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['arch']} | failed | | {r['wall_s']:.0f} s | | | | `{r['command']}` ({r['error']}) |")
            continue
        lines.append(
            f"| {r['arch']} | {fmt(r['test_accuracy'], '.4f')} | {r['epochs']} | {r['wall_s']:.0f} s | "
            f"{fmt(r['images_per_s'], '.0f')} | {r['precise_bn_share']:.0%} | "
            f"{'fired at ' + str(r['collapse_epochs']) + ' epoch(s)' if r['collapse_epochs'] else 'quiet'} | "
            f"`{r['command']}` |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", nargs="*", help="default: every registered arch, in the registry's order")
    p.add_argument("--out", default="reports/zoo", help="output folder (default: reports/zoo)")
    p.add_argument(
        "--mnist", type=int, metavar="N", help="train on an N-image stratified MNIST subset instead of the digits"
    )
    p.add_argument("--data-dir", help="folder holding mnist.npz (with --mnist)")
    p.add_argument("--rerun", action="store_true", help="train archs again that the table already has")
    args = p.parse_args()

    from keras_digits.models import list_models

    archs = args.archs or list_models()
    unknown = sorted(set(archs) - set(list_models()))
    if unknown:
        p.error(f"unknown arch(s): {', '.join(unknown)}")
    extra: list[str] = []
    tag = "digits"
    if args.mnist:
        extra = ["--dataset", "mnist", "--max-train-samples", str(args.mnist)]
        extra += ["--data-dir", args.data_dir] if args.data_dir else []
        tag = f"mnist{args.mnist}"
    out = Path(args.out) / tag
    (out / "runs").mkdir(parents=True, exist_ok=True)
    table_path = out / "zoo.json"
    old = json.loads(table_path.read_text()) if table_path.is_file() else {}
    done = {r["arch"]: r for r in old.get("rows", []) if "error" not in r}
    header = {
        "machine": f"{cpu_name()}, {cpu_isa()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
        "dataset": tag,
    }
    rows = []
    for arch in archs:
        if arch in done and not args.rerun:
            rows.append(done[arch])
            print(f"{arch}: kept from {table_path}", flush=True)
            continue
        run_dir = out / "runs" / arch
        if run_dir.exists():
            import shutil

            shutil.rmtree(run_dir)
        print(f"{arch}: training ...", flush=True)
        row = {
            **run_arch(arch, run_dir, extra, out / f"{arch}.log"),
            "machine": header["machine"],
            "date": header["date"],
        }
        rows.append(row)
        print(
            f"{arch}: test {fmt(row.get('test_accuracy'), '.4f')}, {row.get('epochs', '?')} epochs, "
            f"{row['wall_s']:.0f} s, {fmt(row.get('images_per_s'), '.0f')} img/s [{header['machine']}]"
            + (f" FAILED: {row['error']}" if "error" in row else ""),
            flush=True,
        )
        kept = {r["arch"]: r for r in [*old.get("rows", []), *rows]}
        table_path.write_text(json.dumps({**header, "rows": list(kept.values())}, indent=2) + "\n")
    every = {r["arch"]: r for r in [*old.get("rows", []), *rows]}
    ordered = [every[a] for a in list_models() if a in every]
    table_path.write_text(json.dumps({**header, "rows": ordered}, indent=2) + "\n")
    text = markdown(ordered, header)
    (out / "zoo.md").write_text(text)
    print(text)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
