"""Never lose a message, never send one twice: concurrency, crashes, full disks, locks."""

import os
import resource
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import REDSKY, parse, post

MEMBERS = tuple(f"member{i}@example.net" for i in range(5))
LIST_OPTIONS = ("--access", "open")


def test_twenty_parallel_queues_then_send_deliver_each_post_once(lst):
    posts = [post(subject=f"post {i}", msgid=f"<p{i}@example.org>") for i in range(20)]
    with ThreadPoolExecutor(20) as pool:          # twenty processes at once, as the MTA runs them
        results = list(pool.map(lambda p: lst.queue(p, subprocess=True), posts))
    assert [r.returncode for r in results] == [0] * 20, [r.err for r in results if r.returncode]
    lst.run("send", check=0)
    got = Counter((argv[-1], parse(data)["Message-ID"]) for argv, data in lst.sent())
    assert got == Counter({(m, f"<p{i}@example.org>"): 1 for m in MEMBERS for i in range(20)})
    assert lst.status()["sent"] == 100 and lst.status()["queued_posts"] == 0


def test_send_killed_mid_run_loses_nothing(lst):
    (lst.sendmail_dir / "slow").write_text("member2@example.net")
    lst.queue(post(), check=0)
    proc = subprocess.Popen([sys.executable, REDSKY, "-c", str(lst.config), "send"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 30
    while not (lst.sendmail_dir / "slow_started").exists():
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)            # send and the sendmail it is waiting for
    proc.wait()
    before = Counter(lst.sent_to())
    assert before == Counter({"member0@example.net": 1, "member1@example.net": 1})
    (lst.sendmail_dir / "slow").unlink()
    lst.run("send", check=0)
    after = Counter(lst.sent_to())
    assert set(after) == set(MEMBERS)
    assert all(n == 1 for n in after.values())      # the in-flight one was never accepted, so no repeat
    assert lst.status()["sent"] == 5 and lst.status()["queued_posts"] == 0


def test_a_send_that_outlives_its_timeout_is_stopped_and_the_next_one_finishes(lst):
    """An in-process run has a timeout too: send waiting on a hung sendmail
    ends in TimeoutExpired, and lets go of its lock for the next one."""
    (lst.sendmail_dir / "slow").write_text("member2@example.net")
    lst.queue(post(), check=0)
    with pytest.raises(subprocess.TimeoutExpired):
        lst.run("send", timeout=2)
    (lst.sendmail_dir / "slow").unlink()
    assert lst.run("send").returncode == 0
    assert sorted(lst.sent_to()) == sorted(MEMBERS)
    assert lst.status()["sent"] == 5


def test_send_killed_after_delivery_before_record_repeats_only_that_one(lst):
    # the in-flight delivery completes (sendmail accepted it) but send dies before the ledger write
    lst.queue(post(), check=0)
    code = (
        "import os, signal, sys\n"
        "sys.argv = ['redsky.py', '-c', sys.argv[1], 'send']\n"
        "import redsky\n"
        "real = redsky.Ledger.record\n"
        "count = [0]\n"
        "def dying(*a, **kw):\n"
        "    count[0] += 1\n"
        "    if count[0] == 3:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return real(*a, **kw)\n"
        "redsky.Ledger.record = dying\n"
        "redsky.main()\n")
    proc = subprocess.run([sys.executable, "-c", code, str(lst.config)], cwd=os.path.dirname(REDSKY),
                          capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    assert len(lst.sent()) == 3 and lst.status()["sent"] == 2
    lst.run("send", check=0)
    counts = Counter(lst.sent_to())
    assert set(counts) == set(MEMBERS) and sum(counts.values()) == 6
    assert sorted(counts.values()) == [1, 1, 1, 1, 2]


def _small_file_limit():
    # a write past RLIMIT_FSIZE fails with EFBIG, as a full disk fails with ENOSPC
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (512 * 1024, 512 * 1024))


def test_full_disk_during_queue_exits_75_and_leaves_nothing(lst):
    big = post(body="x" * 2_000_000 + "\n")
    r = lst.queue(big, subprocess=True, preexec_fn=_small_file_limit)      # the limit is the process's
    assert r.returncode == 75, r.err
    assert "spool" in r.err and "Traceback" not in r.err and r.err.count("\n") == 1
    assert lst.status()["queued_posts"] == 0
    assert not list((lst.home / "spool").rglob("*.eml"))
    lst.queue(big, check=0)                          # the MTA's retry succeeds
    assert lst.status()["pending"] == 5


def test_locked_database_during_queue_exits_75(lst):
    lst.write_config(redsky={"busy_timeout": "0.2s"})
    holder = sqlite3.connect(lst.home / "redsky.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        r = lst.queue(post())
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert r.returncode == 75 and "locked" in r.err and "Traceback" not in r.err
    assert not list((lst.home / "spool").glob("*.eml"))
    lst.queue(post(), check=0)
    assert lst.status()["queued_posts"] == 1


def test_unwritable_spool_exits_75(lst):
    lst.write_config(redsky={"spool": "/proc/redsky-cannot-write-here"})
    r = lst.queue(post())
    assert r.returncode == 75 and "cannot write spool" in r.err


def test_unexpected_error_in_queue_is_75_not_a_traceback(lst):
    code = ("import sys\nsys.argv = ['redsky.py', '-c', sys.argv[1], 'queue', '--recipient', "
            "'test@lists.example.org']\nimport redsky\n"
            "def boom(ctx): raise ZeroDivisionError('simulated bug')\n"
            "redsky.FILTERS['subjecttag'].__code__ = boom.__code__\nsys.exit(redsky.main())\n")
    r = subprocess.run([sys.executable, "-c", code, str(lst.config)], cwd=os.path.dirname(REDSKY),
                       input=post(), capture_output=True)
    assert r.returncode == 75
    assert b"Traceback" not in r.stderr and b"simulated bug" in r.stderr
