"""Process memory (RSS) across the trials of a KerasTuner search, with and without --max-rss-mb.

    python benchmarks/tuner_memory.py                       # 20 tiny trials of simple_cnn on digits
    python benchmarks/tuner_memory.py --trials 40 --max-rss-mb 1200
    python benchmarks/tuner_memory.py -- --arch keras_cnn --dataset mnist --data-dir ../shared/data

Runs `python -m keras_digits.tune` in a fresh folder, reads the RSS the tuner prints after each trial
("trial N done (...): ..., RSS 812 MB") and reports the first, last and largest figure and the mean
growth per trial. Keras/TensorFlow keep some memory per built-and-fitted model even after
`keras.backend.clear_session()` + `gc.collect()` (the tuner does both after every trial);
--max-rss-mb makes the tuner restart its process, resuming the search, when a trial leaves it above
the limit.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--max-rss-mb", type=float, default=0.0)
    p.add_argument("extra", nargs="*", help="more tune flags (after --)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tunemem-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "keras_digits.tune",
            "--arch",
            "simple_cnn",
            "--dataset",
            "digits",
            "--max-trials",
            str(args.trials),
            "--max-epochs",
            "1",
            "--max-train-samples",
            "300",
            "--directory",
            tmp,
            "--verbose",
            "0",
            "--no-tensorboard",
            "--max-rss-mb",
            str(args.max_rss_mb),
            *args.extra,
        ]
        print(" ".join(cmd[1:]))
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - start
    rss = [float(m.group(1)) for m in re.finditer(r"done \(.*?RSS (\d+) MB", proc.stdout)]
    restarts = proc.stdout.count("restarting the process")
    if proc.returncode or not rss:
        print(proc.stdout[-2000:], proc.stderr[-2000:], sep="\n")
        return proc.returncode or 1
    growth = (rss[-1] - rss[0]) / max(1, len(rss) - 1)
    print(
        f"{len(rss)} trials in {seconds:.0f} s, {restarts} restarts: RSS first {rss[0]:.0f} MB, "
        f"last {rss[-1]:.0f} MB, max {max(rss):.0f} MB, mean growth {growth:+.1f} MB/trial"
    )
    print("RSS per trial (MB): " + " ".join(f"{r:.0f}" for r in rss))
    return 0


if __name__ == "__main__":
    sys.exit(main())
