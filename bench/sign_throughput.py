"""Signing and verification throughput on a large file, side by side with ``sha256sum``.

Creates a file of random bytes (1 GiB by default) in a temporary folder,
then times, each ``--runs`` times after one warm-up so the file is in the page
cache for every command:

- ``sha256sum FILE`` (GNU coreutils);
- ``mlwarden sign FILE`` and ``mlwarden verify MANIFEST`` as whole processes
  (start-up and imports included);
- :func:`mlwarden.integrity.hash_file` inside this process (hashing alone).

It prints the median wall time and MB/s (10**6 bytes per second) of each and
deletes the file. Usage::

    .venv/bin/python bench/sign_throughput.py [--size-mib 1024] [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlwarden.integrity import hash_file

MLWARDEN = str(Path(sys.executable).with_name("mlwarden"))


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="file size in MiB (default 1024)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each command (default 5)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="mlwarden-throughput-"))
    try:
        data = folder / "big.bin"
        with data.open("wb") as stream:
            for _ in range(args.size_mib):
                stream.write(os.urandom(2**20))
        size = data.stat().st_size
        subprocess.run([MLWARDEN, "keygen", "--output", str(folder)], check=True, stdout=subprocess.DEVNULL)
        manifest = folder / "manifest.json"
        commands = {
            "sha256sum": ["sha256sum", str(data)],
            "mlwarden sign": [MLWARDEN, "sign", str(data), "--key", str(folder / "mlwarden.key"), "--output", str(manifest), "--quiet"],
            "mlwarden verify": [MLWARDEN, "verify", str(manifest), "--key", str(folder / "mlwarden.pub")],
        }
        times: dict[str, list[float]] = {name: [] for name in [*commands, "hash_file (in process)"]}
        for run in range(args.runs + 1):
            # Interleave the commands so that a noisy neighbour slows all of them alike.
            for name, command in commands.items():
                seconds = timed(command)
                if run:
                    times[name].append(seconds)
            start = time.perf_counter()
            hash_file(data)
            if run:
                times["hash_file (in process)"].append(time.perf_counter() - start)
        print(f"file: {size} bytes, {args.runs} runs after one warm-up, {os.cpu_count()} CPUs")
        print("| command | median s | min s | max s | MB/s (median) |")
        print("|---|---|---|---|---|")
        for name, values in times.items():
            median = statistics.median(values)
            print(f"| {name} | {median:.2f} | {min(values):.2f} | {max(values):.2f} | {size / median / 1e6:.0f} |")
    finally:
        shutil.rmtree(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
