#!/usr/bin/env python3
"""redsky benchmark, run by hand: python3 tests/bench.py [--quick]

Prints a table: `queue` time and peak RSS for lists of 1,000 / 10,000 /
100,000 members, and `send` throughput (recipients/s) and peak RSS to a
local SMTP listener and to a no-op sendmail.  Each figure is the median of
--runs runs.  `python3 -c pass` is timed in the same run so the `queue`
figures can be read as a ratio of interpreter start-up.
Not a unit test: timings depend on the machine.
"""

import argparse
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REDSKY = str(HERE.parent / "redsky.py")
sys.path.insert(0, str(HERE))
from smtpsink import SMTPSink  # noqa: E402

# Runs a command and reports its wall time and the peak RSS of it alone.
MEASURE = """\
import resource, subprocess, sys, time
stdin = open(sys.argv[1], 'rb') if sys.argv[1] != '-' else subprocess.DEVNULL
t = time.perf_counter()
rc = subprocess.run(sys.argv[2:], stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE).returncode
elapsed = time.perf_counter() - t
print(rc, elapsed, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""

POST = (b"From: Alice <alice@example.org>\nTo: bench@lists.example.org\nSubject: benchmark\n"
        b"Message-ID: <bench@example.org>\nMIME-Version: 1.0\nContent-Type: text/plain\n\n"
        + b"A line of a typical short post to a mailing list.\n" * 60)


def measure(cmd, stdin="-"):
    out = subprocess.run([sys.executable, "-c", MEASURE, stdin, *cmd], capture_output=True, text=True,
                         check=True).stdout.split()
    rc, seconds, rss_kb = int(out[0]), float(out[1]), int(out[2])
    if rc != 0:
        raise SystemExit(f"command failed ({rc}): {' '.join(cmd)}")
    return seconds, rss_kb / 1024


class Home:
    def __init__(self, members, **send):
        self.dir = Path(tempfile.mkdtemp(prefix="redsky-bench-"))
        self.config = self.dir / "redsky.ini"
        lines = ["[redsky]", "log = stderr", "[send]"] + [f"{k} = {v}" for k, v in send.items()]
        self.config.write_text("\n".join(lines) + "\n")
        self.redsky("newlist", "bench@lists.example.org", "--access", "open")
        db = sqlite3.connect(self.dir / "redsky.db")
        with db:
            db.executemany("INSERT INTO members (list_id, address, subscribed) VALUES (1, ?, 0)",
                           ((f"member{i}@example.net",) for i in range(members)))
        db.close()
        self.post = self.dir / "post.eml"
        self.post.write_bytes(POST)

    def redsky(self, *args):
        subprocess.run([sys.executable, REDSKY, "-c", str(self.config), *args], check=True,
                       stdout=subprocess.DEVNULL)

    def cmd(self, *args):
        return [sys.executable, REDSKY, "-c", str(self.config), *args]

    def queue(self):
        return measure(self.cmd("queue", "--recipient", "bench@lists.example.org"), str(self.post))

    def send(self):
        return measure(self.cmd("send"))

    def reset_ledger(self):
        """Make every delivery due again (the spool file is restored) to repeat a send run."""
        db = sqlite3.connect(self.dir / "redsky.db")
        db.execute("PRAGMA foreign_keys = ON")
        with db:
            db.execute("DELETE FROM messages")
        db.close()

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def median_of(runs, fn, before=None):
    results = []
    for _ in range(runs):
        if before:
            before()
        results.append(fn())
    return statistics.median(r[0] for r in results), max(r[1] for r in results)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="smaller lists, one run")
    args = ap.parse_args()
    runs = 1 if args.quick else args.runs
    queue_sizes = (1_000, 10_000) if args.quick else (1_000, 10_000, 100_000)
    smtp_size = 2_000 if args.quick else 10_000
    sendmail_size = 200 if args.quick else 1_000

    rows = []
    startup = statistics.median(measure([sys.executable, "-c", "pass"])[0] for _ in range(max(runs, 3)))
    rows.append(("python3 -c pass", "-", f"{startup:.3f} s", "", ""))

    for n in queue_sizes:
        home = Home(n)
        seconds, rss = median_of(runs, home.queue, before=home.reset_ledger)
        rows.append((f"queue, {n:,} members", n, f"{seconds:.3f} s", f"{seconds / startup:.1f}x start-up",
                     f"{rss:.1f} MB"))
        home.cleanup()

    def send_row(label, n, **send):
        home = Home(n, **send)

        def queue_and_send():
            home.queue()
            return home.send()
        seconds, rss = median_of(runs, queue_and_send, before=home.reset_ledger)
        rows.append((f"{label}, {n:,} recipients", n, f"{seconds:.2f} s", f"{n / seconds:,.0f} rcpt/s",
                     f"{rss:.1f} MB"))
        home.cleanup()

    with SMTPSink() as sink:
        send_row("send smtp", smtp_size, transport="smtp", smtp_host="127.0.0.1", smtp_port=sink.port)
    noop = Path(tempfile.mkdtemp()) / "sendmail"
    noop.write_text("#!/bin/sh\nexec cat >/dev/null\n")
    noop.chmod(0o755)
    send_row("send sendmail (no-op)", sendmail_size, transport="sendmail", sendmail=str(noop))
    shutil.rmtree(noop.parent, ignore_errors=True)

    print(f"redsky benchmark, median of {runs} run(s), {os.cpu_count()} CPUs, Python {sys.version.split()[0]}\n")
    header = ("what", "N", "time", "rate / ratio", "peak RSS")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(5)]
    line = lambda r: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    print(line(header))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line(r))


if __name__ == "__main__":
    main()
