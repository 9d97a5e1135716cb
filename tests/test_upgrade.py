"""Upgrades: a database made by any earlier redsky (taken from git history,
one per change of the schema) is upgraded in place by today's code, backed
up first, and everything works on it; a database newer than the code is
refused with a clear message.

The old versions run for real: each commit's own redsky.py makes its
database (init, newlist, subscribe, a queued post), then today's takes it
over.  The commits are found in the history, so every future change of
SCHEMA is tested from the one before it."""

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import redsky
from conftest import ROOT, PYTHON


SCHEMA_TEXT = re.compile(r'SCHEMA = """(.*?)"""', re.S)


def git(*args):
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, check=True).stdout


def schema_commits():
    """(commit, redsky.py source) of every commit whose SCHEMA differs from the one before it, on
    the main line (--first-parent): a branch's own commits never ran anywhere, and two branches
    gave their schemas the same number until the merge renumbered one."""
    try:
        commits = git("log", "--first-parent", "--format=%h", "--reverse", "--", "redsky.py").decode().split()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return []
    found, last = [], None
    for commit in commits:
        source = git("show", f"{commit}:redsky.py").decode("utf-8", "replace")
        m = SCHEMA_TEXT.search(source)
        if m and m.group(1) != last:
            found.append((commit, source))
            last = m.group(1)
    today = SCHEMA_TEXT.search((ROOT / "redsky.py").read_text()).group(1)
    return [(commit, source) for commit, source in found if SCHEMA_TEXT.search(source).group(1) != today]


COMMITS = schema_commits()


def test_the_history_is_here():
    """CI runs on a full clone: the upgrade tests below must not silently test nothing."""
    assert len(COMMITS) >= 19, "git history with redsky.py is needed (a shallow clone?)"


def old_redsky(tmp_path, commit, source):
    """Make a data directory with redsky as of ``commit``; return a runner for it."""
    code = tmp_path / "old"
    code.mkdir()
    (code / "redsky.py").write_text(source)
    data = tmp_path / "data"
    data.mkdir()
    config = data / "redsky.ini"
    config.write_text(f"[redsky]\nlog = stderr\n[send]\ntransport = maildir\nmaildir = {tmp_path / 'out'}\n")
    config.chmod(0o600)

    def run(script, *args, input=b""):
        return subprocess.run([PYTHON, str(script), "-c", str(config), *args], input=input,
                              capture_output=True, timeout=120)
    for args in (("init",), ("newlist", "team@lists.example.org"),
                 ("subscribe", "team@lists.example.org", "bob@example.net", "carol@example.org")):
        r = run(code / "redsky.py", *args)
        assert r.returncode == 0, (commit, args, r.stderr)
    post = (b"From: Bob <bob@example.net>\nTo: team@lists.example.org\nSubject: before the upgrade\n"
            b"Message-ID: <old@example.net>\nDate: Wed, 25 Nov 2026 10:00:00 +0000\n\nWritten by old code.\n")
    r = run(code / "redsky.py", "queue", "--recipient", "team@lists.example.org", "--sender", "bob@example.net",
            input=post)
    assert r.returncode == 0, (commit, r.stderr)
    return data, (lambda *args, input=b"": run(ROOT / "redsky.py", *args, input=input))


def delivered(tmp_path):
    """{recipient: [subjects]} of what the maildir transport wrote."""
    out = {}
    for f in (tmp_path / "out").rglob("new/*"):
        subject = re.search(rb"(?m)^Subject: (.*)$", f.read_bytes())
        out.setdefault(f.parent.parent.name, []).append(subject.group(1).decode() if subject else "")
    return out


def normalized_schema(db_path):
    db = sqlite3.connect(db_path)
    try:
        rows = db.execute("SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL"
                          " AND name NOT LIKE 'sqlite_%' ORDER BY type, name").fetchall()
    finally:
        db.close()
    return [(t, n, " ".join(sql.replace("(", " ( ").replace(")", " ) ").replace(",", " , ").split()))
            for t, n, sql in rows]


@pytest.mark.parametrize("commit,source", COMMITS, ids=[c for c, _ in COMMITS])
def test_a_database_of_every_earlier_schema_upgrades_in_place(tmp_path, commit, source):
    data, now = old_redsky(tmp_path, commit, source)
    before = sqlite3.connect(data / "redsky.db").execute("PRAGMA user_version").fetchone()[0]
    status = now("status", "--json")
    assert status.returncode == 0, status.stderr.decode()
    # backed up first, as it was
    backups = sorted(data.glob("redsky.db.*.bak"))
    assert backups, os.listdir(data)
    assert sqlite3.connect(backups[0]).execute("PRAGMA user_version").fetchone()[0] == before
    # the same schema as a database made today
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "redsky.ini").write_text("[redsky]\nlog = stderr\n")
    subprocess.run([PYTHON, str(ROOT / "redsky.py"), "-c", str(fresh / "redsky.ini"), "init"], check=True,
                   capture_output=True)
    assert normalized_schema(data / "redsky.db") == normalized_schema(fresh / "redsky.db")
    # the members, the queued post, and a new post all work
    members = json.loads(now("members", "team@lists.example.org", "--json").stdout)
    assert {m["address"] for m in members} == {"bob@example.net", "carol@example.org"}
    r = now("send")
    assert r.returncode == 0, r.stderr.decode()
    assert delivered(tmp_path) == {"bob@example.net": ["before the upgrade"],
                                   "carol@example.org": ["before the upgrade"]}
    post = (b"From: Carol <carol@example.org>\nTo: team@lists.example.org\nSubject: after\n"
            b"Message-ID: <new@example.org>\n\nWritten by new code.\n")
    r = now("queue", "--recipient", "team@lists.example.org", "--sender", "carol@example.org", input=post)
    assert r.returncode == 0, r.stderr.decode()
    assert now("send").returncode == 0
    assert sorted(delivered(tmp_path)["bob@example.net"]) == ["after", "before the upgrade"]
    doctor = now("doctor")
    assert f"schema version {redsky.SCHEMA_VERSION}" in doctor.stdout.decode()
    # a second run does not upgrade (or back up) again
    assert now("status").returncode == 0
    assert sorted(data.glob("redsky.db.*.bak")) == backups


def test_a_database_newer_than_the_code_is_refused_clearly(rs):
    rs.run("init", check=0)
    db = sqlite3.connect(rs.home / "redsky.db")
    db.execute(f"PRAGMA user_version = {redsky.SCHEMA_VERSION + 1}")
    db.close()
    for command in (("status",), ("send",)):
        r = rs.run(*command)
        assert r.returncode == 78, r.err
        assert f"schema version {redsky.SCHEMA_VERSION + 1}" in r.err and "newer" in r.err
    r = rs.queue(b"From: a@example.org\nSubject: x\n\nx\n")
    assert r.returncode == 75, r.err            # the MTA keeps the post until the right redsky is back


def test_version_names_the_release_and_the_schema(rs):
    out = rs.run("--version", check=0).out
    assert re.fullmatch(rf"redsky \d+\.\d+\.\d+ \(schema {redsky.SCHEMA_VERSION}\)\n", out), out
    readme = (ROOT / "README.md").read_text()
    assert f"### {redsky.__version__} " in readme          # the changelog names this release


def test_schema_names_its_version():
    assert f"PRAGMA user_version = {redsky.SCHEMA_VERSION};" in redsky.SCHEMA


def test_a_held_post_number_is_never_given_again(rs):
    """`approve 2` from yesterday's listing must not act on a post held since."""
    rs.newlist("team@lists.example.org", "--access", "moderated", "--owner", "owner@example.org")
    ids = []
    for n in range(3):
        rs.queue(b"From: x@example.org\nSubject: held %d\nMessage-ID: <h%d@x>\n\nx\n" % (n, n),
                 recipient="team@lists.example.org", sender="x@example.org", check=0)
        (held,) = json.loads(rs.run("held", "--json", check=0).out)
        ids.append(held["id"])
        rs.run("discard", str(held["id"]), check=0)
    assert ids == sorted(set(ids)) and len(set(ids)) == 3
    assert rs.run("approve", str(ids[0])).returncode == 65


def pages_era_commit():
    """(commit, source) of the newest redsky before permanent archive numbers (its pages keep a
    state.json and month JSON files), or None without the history."""
    try:
        commits = git("log", "--format=%h", "--", "redsky.py").decode().split()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return None
    for commit in commits:
        source = git("show", f"{commit}:redsky.py").decode("utf-8", "replace")
        if "state.json" in source and "archived_posts" not in source:
            return commit, source
    return None


def test_an_archive_published_before_permanent_numbers_keeps_every_published_number(tmp_path):
    """redsky 0.4 numbered the pages as it wrote them: a post whose page could not be written left
    the pages' numbers behind the archive's.  The upgrade keeps the published ones (people link to
    them), gives the others their old place when free, and builds the pages anew without the JSON."""
    found = pages_era_commit()
    if found is None:
        pytest.skip("the git history with redsky 0.4 is needed")
    data, now = old_redsky(tmp_path, *found)
    old = tmp_path / "old" / "redsky.py"

    def run(script, *args, input=b""):
        return subprocess.run([PYTHON, str(script), "-c", str(data / "redsky.ini"), *args], input=input,
                              capture_output=True, timeout=120)
    for args in (("set", "team@lists.example.org", "archive", "public"),
                 ("set", "team@lists.example.org", "dmarc", "never")):
        assert run(old, *args).returncode == 0
    pages = data / "pages" / "team@lists.example.org"

    def queue(script, name):
        mail = (f"From: Carol <carol@example.org>\nTo: team@lists.example.org\nSubject: {name}\n"
                f"Message-ID: <{name}@example.org>\nDate: Wed, 25 Nov 2026 10:00:00 +0000\n\n{name}\n").encode()
        r = run(script, "queue", "--recipient", "team@lists.example.org", "--sender", "carol@example.org",
                input=mail)
        assert r.returncode == 0, r.stderr
    queue(old, "alpha")                                   # archive 2 (after "before the upgrade"), page 2
    (pages / "3.html").mkdir()                            # the next page cannot be written
    queue(old, "beta")                                    # archive 3, no page
    (pages / "3.html").rmdir()
    queue(old, "gamma")                                   # archive 4, page 3
    queue(old, "delta")                                   # archive 5, page 4
    assert (pages / "state.json").exists() and "<h1>gamma</h1>" in (pages / "3.html").read_text()
    listing = json.loads(now("archive", "team@lists.example.org", "--json").stdout)
    numbers = {r["number"]: r["subject"] for r in listing}
    assert numbers == {1: "before the upgrade", 2: "alpha", 3: "gamma", 4: "delta", 5: "beta"}
    queue(ROOT / "redsky.py", "epsilon")
    assert {r["number"]: r["subject"] for r in json.loads(now("archive", "team@lists.example.org",
                                                              "--json").stdout)}[6] == "epsilon"
    for n, name in ((2, "alpha"), (3, "gamma"), (4, "delta"), (5, "beta"), (6, "epsilon")):
        assert f"<h1>{name}</h1>" in (pages / f"{n}.html").read_text()
    assert not list(pages.glob("*.json"))                 # the 0.4 files, with full addresses, are gone
def test_an_upgrade_takes_a_name_in_the_old_database_as_a_name(rs):
    """A table named "main.members" in an older database made the upgrade drop the real members."""
    rs.newlist("team@lists.example.org", members=("bob@example.net",))
    db = sqlite3.connect(rs.home / "redsky.db")
    db.execute('CREATE TABLE "main.members" (x)')
    db.execute('CREATE TABLE "x; DROP TABLE lists" (x)')
    db.execute(f"PRAGMA user_version = {redsky.SCHEMA_VERSION - 1}")
    db.commit()
    db.close()
    assert set(rs.members("team@lists.example.org")) == {"bob@example.net"}
    names = {n for (n,) in sqlite3.connect(rs.home / "redsky.db").execute("SELECT name FROM sqlite_master")}
    assert "main.members" not in names and "lists" in names and "members" in names


def test_lists_on_the_front_page_stay_there_after_the_upgrade(tmp_path):
    """The front page named the lists with a public archive; after the upgrade that added the
    setting `advertised`, they are advertised (the others are not)."""
    commit, source = next((c, s) for c, s in reversed(COMMITS) if "advertised" not in s)
    data, now = old_redsky(tmp_path, commit, source)
    old = tmp_path / "old" / "redsky.py"
    config = data / "redsky.ini"
    for args in (("newlist", "open@lists.example.org"), ("set", "open@lists.example.org", "archive", "public")):
        subprocess.run([PYTHON, str(old), "-c", str(config), *args], check=True, capture_output=True)
    lists = {r["list"]: r for r in json.loads(now("lists", "--json").stdout)}
    assert lists["open@lists.example.org"]["advertised"] == 1 and lists["team@lists.example.org"]["advertised"] == 0
