#!/usr/bin/env python3
"""redsky benchmark, run by hand:  python3 tests/bench.py [--quick] [--runs 3]

Prints one table.  For lists of 1,000 / 10,000 / 50,000 / 100,000 members:
`queue` seconds and peak RSS; `send` seconds, recipients/s, peak RSS and the
sink's CPU seconds for per-recipient SMTP (1 and 4 connections), xverp SMTP
(100 recipients a transaction), and the sendmail transport batched (-XV, 100
a process) and per recipient (a no-op sendmail; only up to 10,000); then
`filter` (content-filter mode, with and without a DNSBL zone answered from
the loopback test resolver), a MIME digest of 100 posts sent to 100 digest
members, and `archive export` of 1,000 archived posts.  In the
same run: `python3 -c pass` (so `queue` reads as a ratio of interpreter
start-up) and Postfix's C load generator smtp-source against the same sink,
when it is installed.  Figures are medians of --runs runs; the sink counts
every recipient it accepts and the run fails if one is missing.
`--delivery [N]`: issue 19's table, `queue` and `send` for N members beside
smtp-source sending the same message to the same sink, with the CPU per
recipient of client and sink.
`--pipe [N]`: issue 28's table, one post to 10 and N members (default
100,000) through the README's pipe command line (cached bytecode) and as a
script, beside `python3 -c pass`, mlmmj's receive + process and `lmtp` per
message: CPU (user + system) and peak RSS.
`--intake`: posts per second and CPU per post through `queue` (a process
per message, as an MTA pipe runs it) against `lmtp` (one server).
`--search [N ...]`: issue 33's table at N archived posts (default 10,000 and
100,000): CPU per search query by the FTS5 index and by the fallback scan,
the index's size on disk, and the CPU to archive and publish one more post.
`--backup [N]`: issue 30's table, `backup` and `restore` of a list of N
members (default 100,000) with 1,000 archived posts and 100 waiting.
`--web [N]`: issue 20's table for N members (default 100,000): `queue` with
a private and with a public archive (its pages written), `send` per recipient
with and without one-click headers, a one-click POST and page GETs against
`redsky.py web`, and `archive html` over 1,000 posts.
`--tokens [N]`: issue 29's made-up one-click tokens at N members (default
100,000): the CGI script, `web` and mail to LIST-leave+TOKEN@, CPU each.
`--admin [N]`: issue 32's web admin and member's pages for a list of N members
(default 10,000): each page's weight (bytes) and the CPU `web` spends per
request (100 requests, the server's own CPU), and the CGI script's per request.
Not a unit test: timings depend on the machine.
"""

import argparse
import logging
import os
import re
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
# what an MTA's pipe and cron run redsky with (README), unless --python says otherwise
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from asyncsink import Sink  # noqa: E402

# Runs a command; prints its exit code, wall time and the peak RSS of it alone.
MEASURE = """\
import resource, subprocess, sys, time
stdin = open(sys.argv[1], 'rb') if sys.argv[1] != '-' else subprocess.DEVNULL
t = time.perf_counter()
rc = subprocess.run(sys.argv[2:], stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
elapsed = time.perf_counter() - t
use = resource.getrusage(resource.RUSAGE_CHILDREN)
print(rc, elapsed, use.ru_maxrss, use.ru_utime + use.ru_stime)
"""

POST = (b"From: Alice <alice@example.org>\nTo: bench@lists.example.org\nSubject: benchmark\n"
        b"Message-ID: <bench@example.org>\nMIME-Version: 1.0\nContent-Type: text/plain\n\n"
        + b"A line of a typical short post to a mailing list.\n" * 60)


def measure(cmd, stdin="-", cpu=False):
    """(wall seconds, peak RSS in MB[, CPU seconds]) of ``cmd`` alone."""
    out = subprocess.run([sys.executable, "-c", MEASURE, stdin, *cmd], capture_output=True, text=True,
                         check=True).stdout.split()
    if int(out[0]) != 0:
        raise SystemExit(f"command failed ({out[0]}): {' '.join(cmd)}")
    return (float(out[1]), int(out[2]) / 1024) + ((float(out[3]),) if cpu else ())


class Home:
    """A throwaway redsky with one list of ``members``."""

    def __init__(self, members):
        self.dir = Path(tempfile.mkdtemp(prefix="redsky-bench-"))
        self.config = self.dir / "redsky.ini"
        self.configure()
        subprocess.run(self.cmd("newlist", "bench@lists.example.org", "--access", "open"), check=True,
                       stdout=subprocess.DEVNULL)
        subprocess.run(self.cmd("set", "bench@lists.example.org", "dmarc", "never"), check=True,
                       stdout=subprocess.DEVNULL)          # measure redsky, not a DNS server
        db = sqlite3.connect(self.dir / "redsky.db")
        with db:
            db.executemany("INSERT INTO members (list_id, address, subscribed) VALUES (1, ?, 0)",
                           ((f"member{i}@example.net",) for i in range(members)))
        db.close()
        self.post = self.dir / "post.eml"
        self.post.write_bytes(POST)

    def configure(self, extra="", **send):
        lines = ["[redsky]", "log = stderr", "[send]"] + [f"{k} = {v}" for k, v in send.items()]
        self.config.write_text("\n".join(lines) + "\n" + extra)
        self.config.chmod(0o644)        # redsky run in this process (--search) leaves its umask, 007

    def cmd(self, *args):
        return [PYTHON, REDSKY, "-c", str(self.config), *args]

    def queue(self, cpu=False):
        return measure(self.cmd("queue", "--recipient", "bench@lists.example.org"), str(self.post), cpu)

    def send(self, cpu=False):
        return measure(self.cmd("send"), cpu=cpu)

    def reset(self):
        db = sqlite3.connect(self.dir / "redsky.db")
        db.execute("PRAGMA foreign_keys = ON")
        with db:
            db.execute("DELETE FROM messages")
            db.execute("DELETE FROM events")
            db.execute("DELETE FROM recent_posts")        # the same post is queued again on purpose
        db.close()
        for f in (self.dir / "spool").glob("*.eml"):
            f.unlink()

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def median_run(runs, fn):
    results = [fn() for _ in range(runs)]
    return statistics.median(r[0] for r in results), max(r[1] for r in results), \
        statistics.median(r[2] for r in results) if len(results[0]) > 2 else None


def smtp_source(sink, transactions, rcpts, sessions, message=None, port=None, cpu=False):
    """Postfix's smtp-source: ``transactions`` messages of ``rcpts`` recipients
    (``message``: a file with the message to send, -F).  (wall, sink CPU[,
    smtp-source's own CPU])."""
    exe = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
    sink.reset()
    sink_cpu = sink.cpu()
    argv = [exe, "-d", "-s", str(sessions), "-m", str(transactions), "-r", str(rcpts),
            *(["-F", str(message)] if message else ["-l", "3000"]),
            "-f", "bench-bounces@lists.example.org", "-t", "member@example.net", f"127.0.0.1:{port or sink.port}"]
    wall, _, used = measure(argv, cpu=True)
    if port is None:
        assert sink.received == transactions * rcpts, (sink.received, transactions * rcpts)
    return (wall, sink.cpu() - sink_cpu) + ((used,) if cpu else ())


def issue6_rows(runs, startup, sink, rows, row):
    """Content-filter mode, a digest, an archive export."""
    from fakedns import FakeDNS
    import redsky
    home = Home(100)
    dns = FakeDNS()
    argv = home.cmd("filter", "--sender", "alice@example.org", "--recipient", "me@example.org",
                    "--client-address", "81.2.69.142")
    for label, extra in (("filter: default chain, no zones", ""),
                         ("filter: one DNSBL zone, cached", f"[dnsbl]\nzones = bl.bench.test\nnameserver = {dns.address}\n")):
        home.configure(extra)
        measure(argv, str(home.post))                      # creates the database, fills the cache
        seconds, rss, _ = median_run(runs, lambda: (*measure(argv, str(home.post)), 0))
        rows.append((label, "1", f"{seconds:.3f} s", f"{seconds / startup:.1f}x start-up", f"{rss:.1f} MB", ""))

    home.configure(transport="smtp", smtp_host="127.0.0.1", smtp_port=sink.port)

    def digest_once():
        db = sqlite3.connect(home.dir / "redsky.db")
        with db:
            db.execute("UPDATE members SET digest = 1")
            db.executemany("INSERT INTO digest_posts (list_id, received, raw) VALUES (1, 0, ?)",
                           [(POST.replace(b"<bench@", f"<bench{i}@".encode()),) for i in range(100)])
        db.close()
        sink.reset()
        seconds, rss = home.send()
        assert sink.received == 100, f"digest: sink got {sink.received} of 100"
        return seconds, rss, 0
    seconds, rss, _ = median_run(runs, digest_once)
    rows.append(("send: MIME digest of 100 posts", "100", f"{seconds:.3f} s", f"{100 / seconds:,.0f} rcpt/s",
                 f"{rss:.1f} MB", ""))

    config = redsky.Config(str(home.config))
    list_row = {"name": "bench", "domain": "lists.example.org"}
    for i in range(1000):
        redsky.maildir_add(redsky.archive_path(config, list_row), POST.replace(b"<bench@", f"<a{i}@".encode()))
    out = home.dir / "export.mbox"
    seconds, rss, _ = median_run(runs, lambda: (*measure(home.cmd("archive", "export", "bench@lists.example.org",
                                                                   "--output", str(out))), 0))
    rows.append(("archive export to mbox", "1,000", f"{seconds:.3f} s", f"{1000 / seconds:,.0f} posts/s",
                 f"{rss:.1f} MB", ""))
    home.cleanup()


def year_table(members=1_000, days=365):
    """A simulated year of one list (a post a day, 1,000 members, a member
    leaving and one joining each week), the clock
    set forward a day at a time: the database size at the end, with [send]
    keep_deliveries at its default and with nothing ever pruned.  One member in ten fails every delivery."""
    sys.path.insert(0, str(HERE.parent))
    import redsky
    real_time = time.time
    print(f"a year of one list: {members:,} members, a post a day, housekeeping daily\n")
    print(f"{'keep_deliveries':16} {'database':>10} {'delivery rows':>14} {'CPU s':>7}")
    for keep in ("30d", "100000d"):
        home = Path(tempfile.mkdtemp())
        (home / "redsky.ini").write_text(f"[redsky]\nlog = stderr\n[send]\nkeep_deliveries = {keep}\n"
                                         "[postfix]\nmap =\n")
        config = redsky.Config(str(home / "redsky.ini"))
        redsky.setup_logging(config)
        redsky.log.setLevel(logging.WARNING)
        clock = [real_time() - days * 86400]
        time.time = lambda: clock[0]
        cpu = time.process_time()
        store = redsky.open_store(config, create=True)
        with store.transaction() as db:
            list_id = store.add_list(db, {"name": "year", "domain": "lists.example.org", "dmarc": "never",
                                          "archive": "off", "created": clock[0]})
            for i in range(members):
                db.execute(redsky.SQL["add_member"], (list_id, f"member{i}@example.net", clock[0]))
            db.execute(redsky.SQL["add_member"], (list_id, "new0@example.net", clock[0]))
        queue_chain = redsky.build_chain(config.chain("queue"), "message", "queue")
        for day in range(days):
            ctx = redsky.Context(config, store)
            ctx.raw = POST.replace(b"<bench@", f"<day{day}@".encode())
            ctx.recipient, ctx.sender = "year@lists.example.org", "new0@example.net"
            redsky.run_chain(queue_chain, ctx)
            with store.transaction() as db:      # what send records: all sent, one in 100 failed
                db.execute("UPDATE deliveries SET state = CASE WHEN address LIKE '%7@example.net'"
                           " THEN 'failed' ELSE 'sent' END, attempts = 1, updated = ?"
                           " WHERE message = (SELECT max(id) FROM messages)", (clock[0],))
                db.execute("UPDATE messages SET state = 'done'")
                if day % 7 == 0:
                    db.execute("DELETE FROM members WHERE address = ?", (f"member{day // 7}@example.net",))
                    db.execute(redsky.SQL["add_member"], (list_id, f"new{day}@example.net", clock[0]))
            for name in os.listdir(config.spool) if os.path.isdir(config.spool) else []:
                if name.endswith(".eml"):
                    os.unlink(os.path.join(config.spool, name))
            redsky.FILTERS["housekeeping"](redsky.Context(config, store))
            clock[0] += 86400
        store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        rows = store.db.execute("SELECT count(*) FROM deliveries").fetchone()[0]
        store.close()
        time.time = real_time
        size = os.path.getsize(config.database)
        print(f"{keep:16} {size / 1e6:9.2f}M {rows:14,} {time.process_time() - cpu:7.1f}")
        shutil.rmtree(home, ignore_errors=True)


def hostile_table(runs):
    """The slowest of tests/hostile.py's 1 MB inputs for each parser of
    untrusted text: CPU seconds (user + system), median of ``runs``."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import hostile
    inputs = hostile.patterns(1_000_000)
    print(f"hostile input: 1 MB of each of {len(inputs)} patterns; CPU seconds of the slowest, median of {runs}\n")
    print(f"{'parser':22} {'slowest input':16} {'CPU s':>7}")
    for name, fn in hostile.PARSERS.items():
        worst = max((statistics.median(hostile.cpu(fn, text) for _ in range(runs)), key)
                    for key, text in inputs.items())
        print(f"{name:22} {worst[1]:16} {worst[0]:7.3f}")


def process_cpu(pid):
    """User + system CPU seconds of a running process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def intake_table(runs, n=200):
    """N posts to a 10-member list: each through its own `redsky.py queue`
    process (as an MTA pipe runs it), then all over one LMTP connection to
    one `redsky.py lmtp` (CPU of the server process)."""
    import resource
    import socket
    from smtpsink import free_port
    rows = []
    for label in ("pipe: one `queue` process per message", "lmtp: one server, one connection"):
        results = []
        for _ in range(runs):
            home = Home(10)
            home.reset()
            posts = [POST.replace(b"<bench@", f"<in{i}@".encode()) for i in range(n)]
            if label.startswith("pipe"):
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                start = time.perf_counter()
                for data in posts:
                    subprocess.run([sys.executable, REDSKY, "-c", str(home.config), "queue", "--recipient",
                                    "bench@lists.example.org", "--sender", "alice@example.org"], input=data,
                                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                wall = time.perf_counter() - start
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
            else:
                port = free_port()
                server = subprocess.Popen([sys.executable, REDSKY, "-c", str(home.config), "lmtp", "--listen",
                                           f"127.0.0.1:{port}"], stderr=subprocess.DEVNULL)
                for _ in range(200):
                    try:
                        sock = socket.create_connection(("127.0.0.1", port))
                        break
                    except OSError:
                        time.sleep(0.05)
                rfile = sock.makefile("rb")
                read = rfile.readline
                read()
                cpu0, start = process_cpu(server.pid), time.perf_counter()
                sock.sendall(b"LHLO bench\r\n")
                while not read().startswith(b"250 "):
                    pass
                for data in posts:
                    body = data.replace(b"\n", b"\r\n")
                    sock.sendall(b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bench@lists.example.org>\r\nDATA\r\n")
                    for _ in range(3):
                        read()
                    sock.sendall(body + b".\r\n")
                    reply = read()
                    assert reply.startswith(b"250"), reply
                wall = time.perf_counter() - start
                cpu = process_cpu(server.pid) - cpu0
                sock.close()
                server.terminate()
                server.wait(30)
            queued = sqlite3.connect(home.dir / "redsky.db").execute(
                "SELECT count(*) FROM messages WHERE kind = 'post'").fetchone()[0]
            assert queued == n, f"{label}: {queued} of {n} queued"
            results.append((wall, cpu))
            home.cleanup()
        wall = statistics.median(r[0] for r in results)
        cpu = statistics.median(r[1] for r in results)
        rows.append((label, f"{n:,}", f"{wall:.2f} s", f"{n / wall:,.0f} msg/s", f"{cpu / n * 1000:.1f} ms"))
    print(f"intake benchmark: {n} posts to a 10-member list, median of {runs} run(s), {os.cpu_count()} CPUs,"
          f" Python {sys.version.split()[0]}\n")
    header = ("how", "posts", "wall", "rate", "CPU per post")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    for r in [header, tuple("-" * w for w in widths)] + rows:
        print("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths))))


def spawn_measure(cmd, stdin="-"):
    """(wall seconds, peak RSS in MB, CPU seconds) of ``cmd`` alone: the CPU
    as measure() takes it, the peak RSS as /usr/bin/time reports it (a
    child's ru_maxrss also counts the python that forked it, 8 MB or more,
    which hides a small C program's own; GNU time forks from 1 MB)."""
    if not os.access("/usr/bin/time", os.X_OK):
        return measure(cmd, stdin, cpu=True)
    with tempfile.NamedTemporaryFile("r") as out:
        wall, _, cpu = measure(["/usr/bin/time", "-f", "%M", "-o", out.name, *cmd], stdin, cpu=True)
        rss = int(out.read().split()[-1]) / 1024
    return wall, rss, cpu


def mlmmj_list(members, home):
    """A list for the real mlmmj (mlmmj-make-ml) with ``members`` subscribers
    (written into subscribers.d/ as mlmmj-sub writes them)."""
    spool = home / "mlmmj"
    spool.mkdir()
    subprocess.run(["/usr/bin/mlmmj-make-ml", "-L", "bench", "-s", str(spool)], check=True,
                   input="lists.example.org\nowner@example.org\nen\n", capture_output=True, text=True)
    listdir = spool / "bench"
    (listdir / "subscribers.d" / "m").write_text("".join(f"member{i}@example.net\n" for i in range(members)))
    (listdir / "control" / "relayhost").write_text("127.0.0.1\n")
    return listdir


def mlmmj_once(listdir, post):
    """mlmmj-receive then mlmmj-process of one post, as the MTA's pipe starts
    them (mlmmj-process without mlmmj-send): (CPU seconds, peak RSS MB)."""
    for d in ("incoming", "queue"):
        for f in (listdir / d).iterdir():
            if f.is_file():
                f.unlink()
    _, rss1, cpu1 = spawn_measure(["/usr/bin/mlmmj-receive", "-L", str(listdir), "-F", "-P"], str(post))
    (mail,) = [f for f in (listdir / "incoming").iterdir() if f.is_file()]
    _, rss2, cpu2 = spawn_measure(["/usr/bin/mlmmj-process", "-L", str(listdir), "-m", str(mail), "-P"])
    return cpu1 + cpu2, max(rss1, rss2)


def lmtp_per_message(home, n=100):
    """CPU per post and peak RSS of one `redsky.py lmtp` server taking ``n``
    posts over one connection."""
    import socket
    from smtpsink import free_port
    home.reset()
    port = free_port()
    server = subprocess.Popen([PYTHON, REDSKY, "-c", str(home.config), "lmtp", "--listen", f"127.0.0.1:{port}"],
                              stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                sock = socket.create_connection(("127.0.0.1", port))
                break
            except OSError:
                time.sleep(0.05)
        read = sock.makefile("rb").readline
        read()
        sock.sendall(b"LHLO bench\r\n")
        while not read().startswith(b"250 "):
            pass
        cpu0 = process_cpu(server.pid)
        for i in range(n):
            body = POST.replace(b"<bench@", f"<lmtp{i}@".encode()).replace(b"\n", b"\r\n")
            sock.sendall(b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bench@lists.example.org>\r\nDATA\r\n")
            for _ in range(3):
                read()
            sock.sendall(body + b".\r\n")
            assert read().startswith(b"250")
        cpu = (process_cpu(server.pid) - cpu0) / n
        rss = int(re.search(r"VmHWM:\s+(\d+)", Path(f"/proc/{server.pid}/status").read_text()).group(1)) / 1024
        sock.close()
    finally:
        server.terminate()
        server.wait(30)
    return cpu, rss


def pipe_table(runs, sizes=(10, 100_000)):
    """Issue 28's table: one post through the MTA's pipe command line (the
    README's, from cached bytecode) beside `queue` run as a script, a bare
    interpreter, mlmmj's receive + process, and LMTP intake per message."""
    import redsky
    rows = []
    bare = [spawn_measure([PYTHON, "-c", "pass"]) for _ in range(max(runs, 5))]
    bare_cpu = statistics.median(b[2] for b in bare)
    rows.append(("python3 -c pass", "-", bare_cpu, max(b[1] for b in bare)))
    for n in sizes:
        home = Home(n)
        install = home.dir / "opt"                 # redsky where `init` compiles it, as the README installs it
        install.mkdir()
        shutil.copy(REDSKY, install / "redsky.py")
        subprocess.run([PYTHON, str(install / "redsky.py"), "-c", str(home.config), "init"], check=True,
                       capture_output=True)
        queue = ["queue", "--recipient=bench@lists.example.org", "--sender=alice@example.org"]
        commands = (("queue, the pipe's command line (bytecode)",
                     [PYTHON, "-I", "-c", redsky.PIPE_CODE, str(install), "-c", str(home.config), *queue]),
                    ("queue as a script", [PYTHON, str(install / "redsky.py"), "-c", str(home.config), *queue]))
        for label, cmd in commands:
            def queue_once():
                home.reset()
                wall, rss, cpu = spawn_measure(cmd, str(home.post))
                return cpu, rss
            results = [queue_once() for _ in range(runs)]
            rows.append((label, f"{n:,}", statistics.median(r[0] for r in results), max(r[1] for r in results)))
        if os.access("/usr/bin/mlmmj-receive", os.X_OK):
            listdir = mlmmj_list(n, home.dir)
            results = [mlmmj_once(listdir, home.post) for _ in range(runs)]
            rows.append(("mlmmj-receive + mlmmj-process", f"{n:,}", statistics.median(r[0] for r in results),
                         max(r[1] for r in results)))
        results = [lmtp_per_message(home) for _ in range(runs)]
        rows.append(("lmtp, per message (one server)", f"{n:,}", statistics.median(r[0] for r in results),
                     max(r[1] for r in results)))
        home.cleanup()
    print(f"pipe benchmark: one post, median of {runs} run(s), {os.cpu_count()} CPUs, {PYTHON}"
          f" (Python {subprocess.run([PYTHON, '-V'], capture_output=True, text=True).stdout.split()[-1]})\n")
    table = [(what, n, f"{cpu * 1000:.1f} ms", f"{cpu / bare_cpu:.1f}x", f"{rss:.1f} MB")
             for what, n, cpu, rss in rows]
    header = ("what", "members", "CPU (user+sys)", "x python3 -c pass", "peak RSS")
    widths = [max(len(str(r[i])) for r in table + [header]) for i in range(len(header))]
    for r in [header, tuple("-" * w for w in widths)] + table:
        print("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths))))


def machine_busy():
    """CPU seconds all processors have spent busy so far (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def postfix_rows(runs, add, n=5_000):
    """`send` into a private Postfix whose smtpd takes the mail and discards
    it (root only; needs Debian's postfix): what a user gets.  The time is
    until smtpd has accepted every copy; "server CPU" is the machine's busy
    time minus the client's, so Postfix's smtpd, cleanup and queue manager."""
    if os.geteuid() != 0 or not os.path.exists("/usr/sbin/postfix"):
        return
    import postfix as pf
    mta = pf.PrivatePostfix(bare=True)
    try:
        subprocess.run(["postconf", "-c", str(mta.etc), "-e", "default_transport = discard:bench",
                        "relay_transport = discard:bench", "smtpd_client_connection_rate_limit = 0"],
                       env=mta.env, check=True)
        mta.postfix("reload")
        home = Home(n)
        for label, settings in (("Postfix smtpd: per-recipient VERP, default conns", {}),
                                ("Postfix smtpd: xverp, 100 rcpt/txn", dict(verp="xverp"))):
            home.configure(transport="smtp", smtp_host="127.0.0.1", smtp_port=mta.port, **settings)

            def send_once():
                home.reset()
                home.queue()
                busy = machine_busy()
                wall, rss, cpu = home.send(cpu=True)
                server = machine_busy() - busy - cpu
                mta.wait_idle(timeout=600)
                return wall, rss, cpu, server
            add(label, *[statistics.median(r[i] for r in results) if i != 1 else max(r[1] for r in results)
                         for results in [[send_once() for _ in range(runs)]] for i in range(4)], count=n)
        home.cleanup()
    finally:
        mta.stop()
        shutil.rmtree(mta.dir, ignore_errors=True)


def delivery_table(runs, n):
    """Issue 19's table: `queue` of one post for N members, then `send` of
    it by SMTP (per-recipient VERP over one connection and over the default
    count, xverp), beside Postfix's smtp-source sending the same message to
    the same sink, one recipient per transaction, over 1, 2 and 4
    connections; CPU per recipient of the client and of the sink."""
    rows = []

    def add(what, wall, rss, cpu, sink_cpu, count=n):
        rows.append((what, f"{count:,}", f"{wall:.3f} s", f"{count / wall:,.0f}/s" if count else "",
                     f"{cpu / count * 1e6:.1f} µs" if count else f"{cpu:.3f} s",
                     "" if sink_cpu is None else f"{sink_cpu / count * 1e6:.1f} µs", rss and f"{rss:.1f} MB"))

    def med(results):
        return [statistics.median(r[i] for r in results) if i != 1 else max(r[1] for r in results)
                for i in range(len(results[0]))]
    home = Home(n)
    message = home.dir / "message.eml"
    wall, rss, cpu = med([measure([PYTHON, "-c", "pass"], cpu=True) for _ in range(runs)])
    rows.append((f"{PYTHON} -c pass", "-", f"{wall:.3f} s", "", f"{cpu:.3f} s", "", f"{rss:.1f} MB"))
    with Sink() as sink, Sink(chunking=False) as plain:
        def queue_once():
            home.reset()
            return home.queue(cpu=True)
        wall, rss, cpu = med([queue_once() for _ in range(runs)])
        rows.append((f"queue (one post)", f"{n:,}", f"{wall:.3f} s", "", f"{cpu:.3f} s", "", f"{rss:.1f} MB"))
        for label, target, settings in (
                ("send per-recipient VERP, 1 conn", sink, dict(smtp_connections=1)),
                ("send per-recipient VERP, default conns", sink, {}),
                ("  the same, sink without CHUNKING, 1 conn", plain, dict(smtp_connections=1)),
                ("  the same, sink without CHUNKING, default", plain, {}),
                ("send xverp, 100 rcpt/txn", sink, dict(verp="xverp"))):
            home.configure(transport="smtp", smtp_host="127.0.0.1", smtp_port=target.port, **settings)

            def send_once():
                home.reset()
                home.queue()
                target.reset()
                sink_cpu = target.cpu()
                wall, rss, cpu = home.send(cpu=True)
                assert target.received == n, f"{label}: sink got {target.received} of {n}"
                return wall, rss, cpu, target.cpu() - sink_cpu
            add(label, *med([send_once() for _ in range(runs)]))
        spool = list((home.dir / "spool").glob("*.eml"))
        message.write_bytes((spool[0].read_bytes() if spool else POST).replace(b"\n", b"\r\n"))
        for sessions in (1, 2, 4):
            results = [smtp_source(plain, n, 1, sessions, message, cpu=True) for _ in range(runs)]
            wall, sink_cpu, cpu = (statistics.median(r[i] for r in results) for i in range(3))
            add(f"smtp-source (C) 1 rcpt/txn, {sessions} conn{'s' if sessions > 1 else ''}", wall, "", cpu,
                sink_cpu)
    home.cleanup()
    postfix_rows(runs, add)
    version = subprocess.run([PYTHON, "-c", "import sys; print(sys.version.split()[0])"], capture_output=True,
                             text=True).stdout.strip()
    print(f"delivery benchmark: N = {n:,}, median of {runs} run(s), {os.cpu_count()} CPUs, {PYTHON} {version},"
          " sink: asyncio BufferedProtocol, one process (with CHUNKING unless said)\n")
    header = ("what", "N", "wall", "rate", "client CPU/rcpt", "sink/server CPU/rcpt", "peak RSS")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    for r in [header, tuple("-" * w for w in widths)] + rows:
        print("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths))))


def web_table(runs, n):
    """Issue 20: what the web pages cost `queue`, `send` and a request."""
    import urllib.request
    from smtpsink import free_port
    rows, address = [], "bench@lists.example.org"

    def add(what, values, unit, scale=1.0):
        rows.append((what, f"{statistics.median(v[0] for v in values):.3f} s",
                     f"{statistics.median(v[-1] for v in values) * scale:.3f} {unit}",
                     f"{max(v[1] for v in values):.1f} MB" if len(values[0]) > 2 else ""))
    with Sink() as sink:
        home = Home(n)
        for archive in ("private", "public"):
            subprocess.run(home.cmd("set", address, "archive", archive), check=True, stdout=subprocess.DEVNULL)

            def queue_once():
                home.reset()
                return home.queue(cpu=True)
            add(f"queue, archive {archive}", [queue_once() for _ in range(runs)], "s CPU")
        for base in ("", "https://lists.example.org/redsky"):
            home.configure(f"[web]\nbase_url = {base}\n", transport="smtp", smtp_host="127.0.0.1",
                           smtp_port=sink.port, smtp_connections=1)

            def send_once():
                home.reset()
                home.queue()
                sink.reset()
                result = home.send(cpu=True)
                assert sink.received == n, sink.received
                return result
            add("send per-recipient" + (", one-click headers" if base else ""),
                [send_once() for _ in range(runs)], "µs CPU/rcpt", 1e6 / n)
        port = free_port()
        home.configure()
        server = subprocess.Popen(home.cmd("web", "--listen", f"127.0.0.1:{port}"), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            for _ in range(100):
                try:
                    urllib.request.urlopen(url + "/").read()
                    break
                except OSError:
                    time.sleep(0.1)

            def timed(path, data=None):
                start = time.perf_counter()
                urllib.request.urlopen(url + path, data=data).read()
                return (time.perf_counter() - start,)
            leave = f"/{address}/leave/{'0' * 16}", b"List-Unsubscribe=One-Click"
            add(f"first one-click POST ({n:,} members' tokens computed)", [timed(*leave)], "s")
            add("next one-click POSTs, unknown tokens", [timed(*leave) for _ in range(runs)], "s")
            add("GET a post page", [timed(f"/archive/{address}/1.html") for _ in range(runs)], "s")
            add("GET the subscribe page", [timed(f"/{address}/") for _ in range(runs)], "s")
        finally:
            server.terminate()
            server.wait()
        home.cleanup()
    posts = Home(1)
    subprocess.run(posts.cmd("set", address, "archive", "public"), check=True, stdout=subprocess.DEVNULL)
    for i in range(1000):
        data = POST.replace(b"<bench@", f"<bench{i}@".encode()).replace(b"benchmark", f"topic {i % 50}".encode())
        posts.post.write_bytes(data)
        posts.queue()
    add("archive html, 1,000 posts", [measure(posts.cmd("archive", "html", address), cpu=True)
                                      for _ in range(runs)], "s CPU")
    posts.cleanup()
    print(f"redsky web: N = {n:,}, median of {runs}, {PYTHON}\n")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} |")


def search_table(runs, sizes):
    """Issue 33: the archive's search at each size of archive: CPU per query (FTS5 and the
    fallback scan, the whole results page with its snippets), the index's size on disk, and
    the CPU to archive one more post (in `queue`, and the archive's own part of it)."""
    import random
    sys.path.insert(0, str(HERE.parent))
    import redsky
    random.seed(33)
    vocabulary = [w for w in re.findall(r"[a-z]{3,}", (HERE.parent / "README.md").read_text().lower())]
    vocabulary = sorted(set(vocabulary)) + ["zürich", "café", "naïve", "grüße", "ελληνικά"]
    weights = [1 / (i + 1) for i in range(len(vocabulary))]           # Zipf: a few words everywhere
    names = [f"{random.choice(vocabulary).title()} {random.choice(vocabulary).title()}" for _ in range(500)]
    queries = ["list", "zürich", "budget meeting", '"the list"', "from:" + names[0].split()[0],
               "subject:archive", "d:2024-01..2024-03 list", "nothingmatchesthis"]
    address = "bench@lists.example.org"
    rows = []
    for n in sizes:
        home = Home(1)
        subprocess.run(home.cmd("set", address, "archive", "public"), check=True, stdout=subprocess.DEVNULL)
        config = redsky.Config.find(str(home.config))
        store = redsky.open_store(config, durable=False)
        list_row = store.require_list(address)
        start, ids, texts = time.time() - 4 * 365 * 86400, [], []
        with store.transaction() as db:
            for i in range(n):
                parent = ids[-random.randrange(1, min(50, len(ids)) + 1)] if ids and random.random() < 0.4 else None
                words = random.choices(vocabulary, weights, k=random.randrange(60, 300))
                body = "\n".join(" ".join(words[j:j + 12]) for j in range(0, len(words), 12))
                name = random.choice(names)
                when = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(start + i * 4 * 365 * 86400 / n))
                data = (f"From: {name} <{name.split()[0].lower()}@example.org>\nTo: {address}\n"
                        f"Subject: {'Re: ' if parent else ''}{' '.join(random.choices(vocabulary, k=4))}\n"
                        f"Message-ID: <b{i}@example.org>\nDate: {when}\n"
                        + (f"In-Reply-To: <b{parent}@example.org>\n" if parent is not None else "")
                        + f"\n{body}\n-- \n{name} <{name.split()[0].lower()}@example.org>\n").encode()
                facts = redsky.post_facts(data, list_row)
                row = redsky.add_archive_row(db, list_row, facts, f"bench{i}")
                texts.append((row["id"], *redsky.search_texts(facts, redsky.published_copy(data))))
                ids.append(i)
                if len(texts) == 1000:
                    redsky.index_texts(db, texts)
                    texts = []
            redsky.index_texts(db, texts)
        sizes_on_disk = {}
        try:
            for name, size in store.db.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name"):
                kind = "index" if name.startswith("archive_fts") else "texts" if name == "archive_texts" else \
                    "numbers" if name.startswith("archived_posts") else None
                if kind:
                    sizes_on_disk[kind] = sizes_on_disk.get(kind, 0) + size
        except sqlite3.Error:
            sizes_on_disk["database"] = os.path.getsize(home.dir / "redsky.db")
        pages = redsky.Pages(config, store, list_row)
        try:
            pages.refresh([time.strftime("%Y-%m", time.gmtime(start + 4 * 365 * 86400))])
        finally:
            pages.close()
        fts = redsky.search_index_ready(store.db)
        for label, forced in (("FTS5", None), ("scan", False)):
            if label == "FTS5" and not fts:
                continue
            saved, redsky.FTS5 = redsky.FTS5, forced if forced is not None else redsky.FTS5
            try:
                for q in queries:
                    from urllib.parse import urlencode
                    cpu = []
                    for _ in range(runs):
                        t = time.process_time()
                        status, body, _, _ = redsky.search_page(config, store, list_row, urlencode({"q": q}))
                        cpu.append(time.process_time() - t)
                    found = len(re.findall(r"<li><a href", body))
                    rows.append((f"search {label}: {q}", f"{n:,}", f"{statistics.median(cpu) * 1000:.1f} ms CPU",
                                 f"{found} shown"))
            finally:
                redsky.FTS5 = saved
        store.close()
        for kind, size in sorted(sizes_on_disk.items()):
            rows.append((f"on disk: {kind}", f"{n:,}", f"{size / 2**20:.1f} MB", f"{size / n:,.0f} B/post"))
        cpu = []
        for k in range(runs):
            home.post.write_bytes(POST.replace(b"<bench@", f"<new{k}@".encode()))
            cpu.append(home.queue(cpu=True)[2])
        rows.append(("queue a post (public archive)", f"{n:,}", f"{statistics.median(cpu):.3f} s CPU", ""))
        store = redsky.open_store(config)
        cpu = []
        for k in range(runs):
            data = POST.replace(b"<bench@", f"<own{k}@".encode())
            t = time.process_time()
            published = redsky.published_copy(data)
            row = redsky.archive_post(config, store, list_row, data, published=published)
            redsky.publish_post(config, store, list_row, row, data, published)
            cpu.append(time.process_time() - t)
        store.close()
        rows.append(("  of which archiving and publishing it", f"{n:,}", f"{statistics.median(cpu) * 1000:.1f} ms CPU",
                     ""))
        home.cleanup()
    print(f"redsky search: median of {runs}, SQLite {sqlite3.sqlite_version}\n")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} |")
def admin_table(runs, n, requests=100):
    """Issue 32: each page of the web admin and of the member's pages, its bytes and its CPU."""
    import urllib.parse
    import urllib.request
    sys.path.insert(0, str(HERE.parent))
    sys.path.insert(0, str(HERE))
    import redsky
    from smtpsink import free_port
    address, owner = "bench@lists.example.org", "owner@example.org"
    home = Home(n)
    port = free_port()
    home.configure(f"[web]\nbase_url = http://127.0.0.1:{port}\nsignin_per_client = 0\nsignin_per_address = 0\n",
                   transport="maildir")
    subprocess.run(home.cmd("set", address, "owners", owner), check=True, stdout=subprocess.DEVNULL)
    subprocess.run(home.cmd("set", address, "access", "subscribers"), check=True, stdout=subprocess.DEVNULL)
    for i in range(20):                         # held posts: from a stranger
        home.post.write_bytes(POST.replace(b"<bench@", f"<held{i}@".encode()))
        measure(home.cmd("queue", "--recipient", address, "--sender", "stranger@example.org"), str(home.post))
    config = redsky.Config(str(home.config))
    store = redsky.open_store(config)
    list_row = store.list_by_address(address)
    signin = urllib.parse.urlsplit(redsky.signin_link(config, store.verp_key, list_row, owner))
    member_signin = urllib.parse.urlsplit(redsky.signin_link(config, store.verp_key, None, "member7@example.net"))
    token = store.db.execute("SELECT token FROM pending WHERE action = 'moderate' LIMIT 1").fetchone()[0]
    store.close()
    server = subprocess.Popen(home.cmd("web", "--listen", f"127.0.0.1:{port}"), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args):
            return None
    opener = urllib.request.build_opener(NoRedirect)

    def fetch(path, fields=None, cookie=""):
        data = urllib.parse.urlencode(fields, doseq=True).encode() if fields is not None else None
        req = urllib.request.Request(url + path, data=data, headers={"Cookie": cookie} if cookie else {})
        try:
            with opener.open(req) as r:
                return r.headers, r.read()
        except urllib.error.HTTPError as e:
            return e.headers, e.read()
    rows = []
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(url + "/").read()
                break
            except OSError:
                time.sleep(0.1)
        def sign_in(link):              # open the link's page, press its button (with the page's cookie)
            headers, page = fetch(f"{link.path}?{link.query}")
            fields = {**dict(urllib.parse.parse_qsl(link.query)),
                      "page": re.search(rb'name="page" value="([^"]+)"', page).group(1).decode()}
            headers, _ = fetch(link.path, fields, headers["Set-Cookie"].split(";")[0])
            return headers["Set-Cookie"].split(";")[0]
        owner_cookie, member_cookie = sign_in(signin), sign_in(member_signin)
        csrf = re.search(rb'name="csrf" value="([^"]+)"', fetch(f"/{address}/admin/", cookie=owner_cookie)[1])
        csrf = csrf.group(1).decode()
        admin = f"/{address}/admin/"
        pages = [("/ (front page)", "/", None, ""), ("the list's page", f"/{address}/", None, ""),
                 ("admin: sign-in form", admin, None, ""), ("admin: at a glance", admin, None, owner_cookie),
                 ("admin: settings", admin + "settings", None, owner_cookie),
                 (f"admin: members (first 200 of {n:,})", admin + "members", None, owner_cookie),
                 ("admin: a member's options", admin + "member?who=member7@example.net", None, owner_cookie),
                 ("admin: held posts (20)", admin + "held", None, owner_cookie),
                 ("admin: a held post (notice's link)", admin + f"held/{token}", None, ""),
                 ("admin: bounces", admin + "bounces", None, owner_cookie),
                 (f"admin: members.csv ({n:,})", admin + "members.csv", None, owner_cookie),
                 ("manage: sign-in form", "/manage/", None, ""),
                 ("manage: a member's lists", "/manage/", None, member_cookie),
                 ("POST settings (one change)", admin + "settings", {"csrf": csrf, "subject_tag": "[b]"},
                  owner_cookie),
                 ("POST a member's options", admin + "member", {"csrf": csrf, "who": "member7@example.net",
                                                                "notmetoo": "on"}, owner_cookie)]
        for what, path, fields, cookie in pages:
            size = len(fetch(path, fields, cookie)[1])
            count = 10 if "csv" in path else requests
            before = process_cpu(server.pid)
            for _ in range(count):
                fetch(path, fields, cookie)
            rows.append((what, size, (process_cpu(server.pid) - before) / count))
    finally:
        server.terminate()
        server.wait()
    cgi_env = {**os.environ, "REDSKY_CONFIG": str(home.config), "GATEWAY_INTERFACE": "CGI/1.1",
               "REQUEST_METHOD": "GET", "PATH_INFO": f"/{address}/admin/", "HTTP_COOKIE": owner_cookie,
               "REMOTE_ADDR": "127.0.0.1", "SERVER_NAME": "x", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1"}
    cgi = []
    for _ in range(runs):
        start = resource_children()
        subprocess.run([PYTHON, REDSKY], env=cgi_env, stdout=subprocess.DEVNULL, check=True)
        cgi.append(resource_children() - start)
    home.cleanup()
    print(f"redsky web admin: N = {n:,} members, {requests} requests each, `web`'s CPU per request; {PYTHON}\n")
    print("| page | bytes | CPU per request |\n| --- | ---: | ---: |")
    for what, size, cpu in rows:
        print(f"| {what} | {size:,} | {cpu * 1000:.1f} ms |")
    print(f"| the CGI script, a signed-in page (a process per request) | | {statistics.median(cgi) * 1000:.0f} ms |")


def resource_children():
    import resource
    use = resource.getrusage(resource.RUSAGE_CHILDREN)
    return use.ru_utime + use.ru_stime


def backup_table(runs, members):
    """`backup` (plain and gzip) and `restore` of N members, 1,000 archived posts, 100 waiting."""
    home = Home(members)
    home.configure("[archive]\ndir = archive\n")
    subprocess.run(home.cmd("set", "bench@lists.example.org", "archive", "private"), check=True,
                   stdout=subprocess.DEVNULL)
    sys.path.insert(0, str(HERE.parent))
    import io
    import redsky
    logging.getLogger("redsky").setLevel(logging.WARNING)
    for n in range(1_100):                  # in this process: 1,100 queue runs would take a minute
        data = POST.replace(b"<bench@example.org>", b"<bench%d@example.org>" % n)
        sys.stdin = io.TextIOWrapper(io.BytesIO(data))
        assert redsky.main(["-c", str(home.config), "queue", "--recipient", "bench@lists.example.org"]) == 0
        if n == 999:                        # the first 1,000 are delivered, 100 wait
            db = sqlite3.connect(home.dir / "redsky.db")
            with db:
                db.execute("UPDATE messages SET state = 'done', member_cursor = NULL")
            db.close()
    sys.stdin = sys.__stdin__
    os.umask(0o022)                         # main() set redsky's own
    logging.getLogger("redsky").handlers.clear()
    rows = []
    for name in ("backup.tar", "backup.tar.gz"):
        target = home.dir.parent / f"{home.dir.name}-{name}"
        results = []
        for _ in range(runs):
            target.unlink(missing_ok=True)
            results.append(measure(home.cmd("backup", str(target)), cpu=True))
        wall, rss, cpu = (statistics.median(r[i] for r in results) for i in range(3))
        rows.append((f"backup {name}", f"{wall:.2f} s", f"{cpu:.2f} s", f"{rss:.0f} MB",
                     f"{target.stat().st_size / 1e6:.1f} MB"))
    results = []
    for _ in range(runs):
        fresh = Path(tempfile.mkdtemp(prefix="redsky-restore-"))
        (fresh / "redsky.ini").write_text("[redsky]\nlog = stderr\n[archive]\ndir = archive\n")
        results.append(measure([PYTHON, REDSKY, "-c", str(fresh / "redsky.ini"), "restore", str(target)],
                               cpu=True))
        shutil.rmtree(fresh, ignore_errors=True)
    wall, rss, cpu = (statistics.median(r[i] for r in results) for i in range(3))
    rows.append(("restore (from .tar.gz)", f"{wall:.2f} s", f"{cpu:.2f} s", f"{rss:.0f} MB", ""))
    size = (home.dir / "redsky.db").stat().st_size / 1e6
    print(f"{members:,} members, 1,000 archived posts, 100 waiting; database {size:.1f} MB; median of {runs}")
    print(f"{'':24} {'wall':>8} {'CPU':>8} {'peak RSS':>9} {'file':>9}")
    for row in rows:
        print(f"{row[0]:24} {row[1]:>8} {row[2]:>8} {row[3]:>9} {row[4]:>9}")
    home.cleanup()


def token_table(runs, n):
    """Issue 29.10: what a made-up one-click token costs, at N members: a leave POST to the CGI
    script (a process per request), a subscribe POST then a leave POST with a made-up token to a
    running `web` (an open list: every pair adds a member), and mail to LIST-leave+TOKEN@ against
    a `help` mail to LIST-request@ (CPU of the process, or of the server per pair)."""
    import secrets
    import urllib.parse
    import urllib.request
    from smtpsink import free_port
    sys.path.insert(0, str(HERE.parent))
    import redsky
    rows, address = [], "bench@lists.example.org"
    home = Home(n)
    extra = "[web]\nsubscribe_per_client = 0\nsubscribe_per_list = 0\nsubscribe_per_day = 0\n" \
        if hasattr(redsky, "sign_token") else ""
    home.configure(extra)
    subprocess.run(home.cmd("set", address, "subscribe_policy", "open"), check=True, stdout=subprocess.DEVNULL)
    key = sqlite3.connect(home.dir / "redsky.db").execute("SELECT value FROM meta WHERE key = 'verp_key'").fetchone()[0]

    def form(email):
        fields = {"address": email}
        if hasattr(redsky, "sign_token"):       # a form fetched a minute ago
            fields["form"] = redsky.sign_token(key, "subscribe", address, "127.0.0.1", issued=time.time() - 60)
        return urllib.parse.urlencode(fields).encode()

    def cgi(path, body=b""):
        env = {**os.environ, "GATEWAY_INTERFACE": "CGI/1.1", "REQUEST_METHOD": "POST" if body else "GET",
               "PATH_INFO": path, "SCRIPT_NAME": "/redsky", "SERVER_NAME": "lists.example.org",
               "SERVER_PORT": "443", "SERVER_PROTOCOL": "HTTP/1.1", "REDSKY_CONFIG": str(home.config),
               "CONTENT_LENGTH": str(len(body)), "CONTENT_TYPE": "application/x-www-form-urlencoded",
               "REMOTE_ADDR": "192.0.2.7"}
        stdin = home.dir / "body"
        stdin.write_bytes(body)
        out = subprocess.run([sys.executable, "-c", MEASURE, str(stdin), PYTHON, REDSKY], env=env,
                             capture_output=True, text=True, check=True).stdout.split()
        return float(out[1]), int(out[2]) / 1024, float(out[3])

    def add(what, values):
        rows.append((what, f"{statistics.median(values) * 1000:.1f} ms CPU"))
    bogus = lambda: secrets.token_hex(8)                                       # noqa: E731
    add("CGI: GET the subscribe page", [cgi(f"/{address}/")[2] for _ in range(runs)])
    add(f"CGI: the first one-click POST (since {n:,} members joined)",
        [cgi(f"/{address}/leave/{bogus()}", b"List-Unsubscribe=One-Click")[2]])
    add("CGI: one-click POST, made-up token", [cgi(f"/{address}/leave/{bogus()}", b"List-Unsubscribe=One-Click")[2]
                                              for _ in range(runs)])
    for name, recipient in (("help", "bench-request"), ("LIST-leave+BOGUS", None)):
        values = []
        for i in range(runs):
            to = f"{recipient or 'bench-leave+' + bogus()}@lists.example.org"
            home.post.write_bytes(f"From: someone{i}{name[:4]}@example.com\nTo: {to}\nSubject: help\n"
                                  f"Message-ID: <{secrets.token_hex(8)}@example.com>\n\nhelp\n".encode())
            values.append(measure(home.cmd("queue", "--recipient", to), str(home.post), cpu=True)[2])
        add(f"mail: `queue` of a {name} mail", values)
    port = free_port()
    server = subprocess.Popen(home.cmd("web", "--listen", f"127.0.0.1:{port}"), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                urllib.request.urlopen(url + "/").read()
                break
            except OSError:
                time.sleep(0.1)
        leave = b"List-Unsubscribe=One-Click"
        urllib.request.urlopen(f"{url}/{address}/leave/{bogus()}", data=leave).read()     # the first: table built
        pairs = 10 if hasattr(redsky, "sign_token") else 1        # CPU ticks are 10 ms: count many
        values = []
        for i in range(runs):
            before = process_cpu(server.pid)
            for j in range(pairs):
                urllib.request.urlopen(f"{url}/{address}/", data=form(f"pair{i}.{j}@example.com")).read()
                urllib.request.urlopen(f"{url}/{address}/leave/{bogus()}", data=leave).read()
            values.append((process_cpu(server.pid) - before) / pairs)
        add("web: subscribe POST + one-click POST with a made-up token, per pair", values)
        values = []
        for i in range(runs):
            before = process_cpu(server.pid)
            for j in range(pairs):
                urllib.request.urlopen(f"{url}/{address}/leave/{bogus()}", data=leave).read()
            values.append((process_cpu(server.pid) - before) / pairs)
        add("web: one-click POST with a made-up token, nobody joined", values)
    finally:
        server.terminate()
        server.wait()
    members = sqlite3.connect(home.dir / "redsky.db").execute("SELECT count(*) FROM members").fetchone()[0]
    home.cleanup()
    print(f"made-up one-click tokens: N = {n:,} ({members:,} at the end), median of {runs}, {PYTHON}\n")
    for r in rows:
        print(f"| {r[0]} | {r[1]} |")


def main():
    global PYTHON
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="1,000 and 10,000 members, one run")
    ap.add_argument("--sink-processes", type=int, default=1)
    ap.add_argument("--hostile", action="store_true",
                    help="only the hostile-input table: the slowest 1 MB input per parser")
    ap.add_argument("--year", action="store_true", help="only the database size after a simulated year")
    ap.add_argument("--intake", action="store_true",
                    help="only intake: messages/s and CPU per message, `queue` by pipe against `lmtp`")
    ap.add_argument("--delivery", type=int, metavar="N", nargs="?", const=100_000,
                    help="only delivery: queue and send for N members (default 100,000) beside smtp-source")
    ap.add_argument("--web", type=int, metavar="N", nargs="?", const=100_000,
                    help="only the web: queue, send, requests and archive html for N members (default 100,000)")
    ap.add_argument("--pipe", type=int, metavar="N", nargs="?", const=100_000,
                    help="only the pipe: one post to 10 and N members (default 100,000) through the MTA's"
                         " pipe command line, as a script, beside python3 -c pass, mlmmj and lmtp")
    ap.add_argument("--search", type=int, metavar="N", nargs="*",
                    help="only the archive's search: CPU per query, index size, archiving a post at N posts"
                         " (default 10,000 and 100,000)")
    ap.add_argument("--backup", type=int, metavar="N", nargs="?", const=100_000,
                    help="only backup and restore of N members (default 100,000) with 1,000 archived posts")
    ap.add_argument("--tokens", type=int, metavar="N", nargs="?", const=100_000,
                    help="only made-up one-click tokens: CGI, web and mail for N members (default 100,000)")
    ap.add_argument("--admin", type=int, metavar="N", nargs="?", const=10_000,
                    help="only the web admin's and the member's pages: bytes and CPU per request, N members")
    ap.add_argument("--python", default=PYTHON, help=f"the interpreter that runs redsky (default {PYTHON})")
    args = ap.parse_args()
    PYTHON = args.python
    if args.search is not None:
        return search_table(args.runs, args.search or (10_000, 100_000))
    if args.pipe:
        return pipe_table(args.runs, (10, args.pipe))
    if args.backup:
        return backup_table(args.runs, args.backup)
    if args.delivery:
        return delivery_table(args.runs, args.delivery)
    if args.web:
        return web_table(args.runs, args.web)
    if args.tokens:
        return token_table(args.runs, args.tokens)
    if args.admin:
        return admin_table(args.runs, args.admin)
    if args.hostile:
        return hostile_table(args.runs)
    if args.year:
        return year_table()
    if args.intake:
        return intake_table(args.runs)
    runs = 1 if args.quick else args.runs
    sizes = (1_000, 10_000) if args.quick else (1_000, 10_000, 50_000, 100_000)
    rows = []

    def row(what, n, seconds, rss="", sink_cpu=None, rate=True):
        rows.append((what, f"{n:,}" if n else "-", f"{seconds:.3f} s",
                     f"{n / seconds:,.0f} rcpt/s" if rate and n else "", rss and f"{rss:.1f} MB",
                     "" if sink_cpu is None else f"{sink_cpu:.2f} s"))

    startup = statistics.median(measure([PYTHON, "-c", "pass"])[0] for _ in range(5))
    row("python3 -c pass", 0, startup)
    noop = Path(tempfile.mkdtemp()) / "sendmail"
    noop.write_text("#!/bin/sh\nexec cat >/dev/null\n")
    noop.chmod(0o755)

    with Sink(args.sink_processes) as sink:
        for n in sizes:
            home = Home(n)

            def queue_once():
                home.reset()
                return home.queue()
            seconds, rss, _ = median_run(runs, queue_once)
            rows.append((f"queue", f"{n:,}", f"{seconds:.3f} s", f"{seconds / startup:.1f}x start-up",
                         f"{rss:.1f} MB", ""))
            configs = [
                ("send smtp per-recipient, 1 conn", dict(transport="smtp", smtp_connections=1)),
                ("send smtp per-recipient, 4 conns", dict(transport="smtp", smtp_connections=4)),
                ("send smtp xverp, 100/txn", dict(transport="smtp", verp="xverp")),
                ("send sendmail -XV, 100/process", dict(transport="sendmail", sendmail=noop, verp="xverp")),
            ]
            if n <= 10_000:
                configs.append(("send sendmail per-recipient", dict(transport="sendmail", sendmail=noop)))
            for label, settings in configs:
                smtp = settings["transport"] == "smtp"
                home.configure(smtp_host="127.0.0.1", smtp_port=sink.port, **settings)

                def send_once():
                    home.reset()
                    home.queue()
                    sink.reset()
                    cpu = sink.cpu()
                    seconds, rss = home.send()
                    if smtp:
                        assert sink.received == n, f"{label}: sink got {sink.received} of {n}"
                    return seconds, rss, sink.cpu() - cpu
                seconds, rss, sink_cpu = median_run(runs, send_once)
                row(label, n, seconds, rss, sink_cpu if smtp else None)
            home.cleanup()

        issue6_rows(runs, startup, sink, rows, row)

        if shutil.which("smtp-source") or os.path.exists("/usr/sbin/smtp-source"):
            n = 20_000 if not args.quick else 5_000
            for label, txns, rcpts, sessions in (("smtp-source 1 rcpt/txn, 1 conn", n, 1, 1),
                                                 ("smtp-source 1 rcpt/txn, 4 conns", n, 1, 4),
                                                 ("smtp-source 100 rcpt/txn, 1 conn", n // 100, 100, 1)):
                seconds, cpu, _ = median_run(runs, lambda: (*smtp_source(sink, txns, rcpts, sessions), 0))
                row(label, txns * rcpts, seconds, "", cpu)
    shutil.rmtree(noop.parent, ignore_errors=True)

    print(f"redsky benchmark: median of {runs} run(s), {os.cpu_count()} CPUs, Python {sys.version.split()[0]},"
          f" sink: asyncio, {args.sink_processes} process(es)\n")
    header = ("what", "N", "time", "rate / ratio", "peak RSS", "sink CPU")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    fmt = lambda r: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    print(fmt(header))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(fmt(r))


if __name__ == "__main__":
    main()
