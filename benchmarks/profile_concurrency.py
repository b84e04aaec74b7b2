"""Where the gateway's CPU per request goes at 1 and at 32 concurrent, against the floor's.

    .venv/bin/python benchmarks/profile_concurrency.py [--duration 8]

Starts the bench's mock, floor and gateway (benchmarks/run.py), py-spies each at
nonstream-c1 and nonstream-c32, and prints, per package and per function, the µs per
request at each concurrency and how much they grow: what grows with concurrency in the
gateway but not in the floor is what issue 17 is after.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=8)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--cases", default="nonstream-c1,nonstream-c32")
    args = parser.parse_args()
    echo, gateway_bin = run.check_prerequisites()
    os.sched_setaffinity(0, {int(run.LOAD_CORE)})
    cases = [c for c in run.make_cases() if c.id in args.cases.split(",")]
    with tempfile.TemporaryDirectory(prefix="trio-gateway-prof-") as tmp:
        env = run.Env(
            tmp=Path(tmp), python=sys.executable, gateway_bin=gateway_bin, echo_module=echo
        )
        run.write_bodies(env)
        mock = run.start_mock(env)
        floor, floor_port = run.start_floor(env)
        gateway, gateway_port, _ = run.start_gateway(env)
        servers = [
            run.Server("floor", floor, floor_port),
            run.Server("gateway", gateway, gateway_port),
        ]
        out = Path(os.environ.get("PROFILE_DIR", tmp))
        out.mkdir(parents=True, exist_ok=True)
        found: dict[tuple[str, str], dict | None] = {}
        try:
            for case in cases:
                for server in servers:
                    run.validate(env, server, case)
                    print(f"== {server.name} at {case.id}", flush=True)
                    found[server.name, case.id] = run.profile(env, server, case, args, out)
        finally:
            for proc in (gateway, floor, mock):
                proc.stop()
        if len(cases) == 2:
            lo, hi = (c.id for c in cases)
            for name in ("floor", "gateway"):
                a, b = found[name, lo], found[name, hi]
                if a is None or b is None:
                    continue  # no py-spy: run.profile said so
                print(f"\n{name}:\n" + run.package_diff(a, b, f"{lo} → {hi}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
