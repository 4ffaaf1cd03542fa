"""Summarise a TensorFlow profiler trace (an .xplane.pb file) as a table of op types by time.

TensorFlow's profiler writes an XSpace protobuf that TensorBoard's Profile tab reads; this reads the
host plane (on a CPU every op runs there) without TensorBoard: for each op executed on the
`tf_Compute` threads, its type (the part after ':' in 'scope/name:Type'), summed over the trace,
and the share of all op time. Ops on the tf.data threads are reported apart as the input pipeline.

    python benchmarks/profile_table.py DIR/plugins/profile/<run>/<host>.xplane.pb [--steps N]
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path


def op_times(path: str | Path) -> tuple[collections.Counter, collections.Counter, float]:
    """(time per op type on the compute threads, per op on the tf.data threads, step wall time), in ms."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    space.ParseFromString(Path(path).read_bytes())
    compute, data = collections.Counter(), collections.Counter()
    wall = 0.0
    for plane in space.planes:
        if not plane.name.startswith("/host"):
            continue
        meta = plane.event_metadata
        for line in plane.lines:
            for event in line.events:
                name = meta[event.metadata_id].name
                ms = event.duration_ps / 1e9
                if line.name == "python" and name.startswith(("multi_step_on_iterator", "one_step_on_iterator")):
                    wall += ms
                elif ":" in name and "/" in name.split(":", 1)[0] or name.endswith(":GatherV2"):
                    kind = name.rsplit(":", 1)[1]
                    if line.name.startswith("tf_Compute"):
                        compute[kind] += ms
                    elif line.name.startswith("tf_data"):
                        data[kind] += ms
    return compute, data, wall


def op_table(path: str | Path, steps: int, top: int = 15) -> str:
    """The table `op_times` describes, per training step."""
    compute, data, wall = op_times(path)
    total = sum(compute.values()) or 1.0
    lines = [f"  {'op type':34s} {'ms/step':>8s} {'share':>6s}"]
    for kind, ms in compute.most_common(top):
        lines.append(f"  {kind:34s} {ms / steps:8.2f} {100 * ms / total:5.1f}%")
    rest = total - sum(ms for _, ms in compute.most_common(top))
    lines.append(f"  {'(other op types)':34s} {rest / steps:8.2f} {100 * rest / total:5.1f}%")
    lines.append(
        f"  op time {total / steps:.2f} ms/step over the compute threads; "
        f"step wall time {wall / steps:.2f} ms; input pipeline ops {sum(data.values()) / steps:.2f} ms/step "
        "(on their own threads)"
    )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("trace", help="an .xplane.pb file")
    p.add_argument("--steps", type=int, default=1, help="steps the trace holds (for per-step figures)")
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args()
    print(op_table(args.trace, args.steps, args.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
