"""Moving in and out (issue 16): importers from mlmmj (lists made by the real
mlmmj), Mailman 2 and Mailman 3 (files in the formats their commands print),
redsky's own export and import, and personal data (whois, forget)."""

import json
import mailbox
import os
import shutil
import sqlite3
import subprocess
import time

import pytest

from conftest import ledger_view, post
from smtpsink import SMTPSink

MLMMJ = "/usr/bin/mlmmj-make-ml"
needs_mlmmj = pytest.mark.skipif(not os.access(MLMMJ, os.X_OK) and not os.environ.get("REDSKY_REQUIRE_MLMMJ"),
                                 reason="mlmmj is not installed (Debian package mlmmj)")


def mlmmj_list(tmp_path, sink):
    """A list made and used by the real mlmmj: members of each kind, settings
    in control/, and three posts it archived after sending them to ``sink``."""
    spool = tmp_path / "mlmmj"
    spool.mkdir()
    r = subprocess.run([MLMMJ, "-L", "team", "-s", str(spool)], input="lists.example.org\nowner@example.org\nen\n",
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    listdir = spool / "team"
    control = listdir / "control"
    for address, flag in (("ann@example.org", None), ("Bob@Example.NET", None), ("dig@example.org", "-d"),
                          ("quiet@example.org", "-n"), ("not an address", None)):
        subprocess.run(["/usr/bin/mlmmj-sub", "-L", str(listdir), "-a", address, "-f", "-q", "-s", "-U"]
                       + ([flag] if flag else []), check=True, capture_output=True, timeout=60)
    (control / "prefix").write_text("[team]\n")
    (control / "footer").write_text("-- \nteam mailing list\n")
    (control / "subonlypost").write_text("")
    (control / "closedlistsub").write_text("")
    (control / "moderators").write_text("mod@example.org\n")
    (control / "customheaders").write_text("X-Team: yes\n")
    (control / "relayhost").write_text("127.0.0.1\n")
    (control / "smtpport").write_text(f"{sink.port}\n")
    for i in range(3):
        mail = (f"Return-Path: <ann@example.org>\nDelivered-To: team@lists.example.org\n"    # as the MTA adds
                f"From: ann@example.org\nTo: team@lists.example.org\nSubject: post {i}\n"
                f"Message-ID: <mlmmj-{i}@example.org>\n\nbody {i}\n").encode()
        subprocess.run(["/usr/bin/mlmmj-receive", "-L", str(listdir), "-F"], input=mail, check=True,
                       capture_output=True, timeout=60)
    deadline = time.time() + 30
    while len([n for n in os.listdir(listdir / "archive") if n.isdigit()]) < 3 and time.time() < deadline:
        time.sleep(0.1)
    assert len([n for n in os.listdir(listdir / "archive") if n.isdigit()]) == 3
    return listdir


@pytest.mark.mta
@needs_mlmmj
def test_import_mlmmj_list_made_by_mlmmj(rs, tmp_path):
    with SMTPSink() as sink:
        listdir = mlmmj_list(tmp_path, sink)
    dry = rs.run("import", "mlmmj", str(listdir), "--dry-run", check=0).out
    assert "would create list team@lists.example.org" in dry
    assert "would add 4 members (1 digest, 1 nomail)" in dry and "would add 3 archived posts" in dry
    assert "invalid addresses, not imported: not an address" in dry or "invalid" not in dry
    assert "not carried over: control/customheaders" in dry
    assert rs.run("lists", "--json", check=0).out.strip() in ("[]", "")          # a dry run changes nothing
    out = rs.run("import", "mlmmj", str(listdir), check=0).out
    assert "create list team@lists.example.org" in out and "would" not in out
    members = {m["address"]: m for m in json.loads(rs.run("members", "team@lists.example.org", "--json",
                                                          check=0).out)}
    assert set(members) == {"ann@example.org", "bob@example.net", "dig@example.org", "quiet@example.org"}
    assert members["dig@example.org"]["digest"] and members["quiet@example.org"]["status"] == "disabled"
    (listing,) = json.loads(rs.run("lists", "--json", check=0).out)
    assert (listing["subject_tag"], listing["access"], listing["subscribe_policy"]) == \
        ("[team]", "subscribers", "closed")
    assert listing["footer"] == "-- \nteam mailing list" and listing["owners"] == "owner@example.org, mod@example.org"
    archive = json.loads(rs.run("archive", "team@lists.example.org", "--json", check=0).out)
    assert [a["subject"] for a in archive] == ["post 0", "post 1", "post 2"]         # the list's tag not repeated
    # the second time, nothing changes
    again = rs.run("import", "mlmmj", str(listdir), check=0).out
    assert "nothing to change" in again
    assert len(json.loads(rs.run("archive", "team@lists.example.org", "--json", check=0).out)) == 3
    # a nomail member gets nothing
    rs.queue(post(sender="ann@example.org"), recipient="team@lists.example.org", sender="ann@example.org", check=0)
    queued = {address for address, _ in ledger_view(rs.db())}
    assert "quiet@example.org" not in queued and "dig@example.org" not in queued and "ann@example.org" in queued


def test_import_mlmmj_refuses_what_is_not_a_list(rs, tmp_path):
    r = rs.run("import", "mlmmj", str(tmp_path))
    assert r.returncode == 65 and "not an mlmmj list directory" in r.err


# Mailman 2.1's `config_list -o team` prints Python 2 assignments; written
# here after the documented format (comments, strings, lists, numbers).
MAILMAN2_CONFIG = '''\
## "team" mailing list configuration settings -*- python -*-
## captured on Mon Nov 30 12:00:00 2026

## Mailman - The GNU Mailing List Management System
# The public name of this list (make case-changes only).
real_name = 'Team'

# The list administrator email addresses.
owner = ['owner@example.org']

moderator = ['mod@example.org', 'owner@example.org']

description = 'The team list'

subject_prefix = '[Team %d] '

msg_footer = """_______________________________________________
%(real_name)s mailing list
%(real_name)s@%(host_name)s
%(web_page_url)slistinfo%(cgiext)s/%(_internal_name)s"""

host_name = 'lists.example.org'

reply_goes_to_list = 1

generic_nonmember_action = 2

max_message_size = 40L

ban_list = ['^.*@spam.example$']

subscribe_policy = 3

archive = True

archive_private = 0

digestable = 1

available_languages = ['en']

bounce_info_stale_after = 604800
'''
# `list_members -f team` (regular), `--digest`, `--nomail`: "Full Name <addr>" or "addr".
MAILMAN2_MEMBERS = "Ann Example <ann@example.org>\nbob@example.net\n\"Doe, Jane\" <jane@example.org>\nbroken@\n"
MAILMAN2_DIGEST = "Dee Gest <dig@example.org>\n"
MAILMAN2_NOMAIL = "quiet@example.org\n"


def pipermail_mbox(path, n=2):
    box = mailbox.mbox(str(path))
    for i in range(n):
        box.add((f"From: ann@example.org\nSubject: archived {i}\nMessage-ID: <mm-{i}@example.org>\n"
                 f"Date: Mon, 2{i} Apr 2026 10:00:00 +0000\n\nFrom the start of a line {i}\n").encode())
    box.flush()
    box.close()


def mailman2_files(tmp_path):
    files = {"config": MAILMAN2_CONFIG, "members": MAILMAN2_MEMBERS, "digest": MAILMAN2_DIGEST,
             "nomail": MAILMAN2_NOMAIL}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    pipermail_mbox(tmp_path / "team.mbox")
    return ["--config", str(tmp_path / "config"), "--members", str(tmp_path / "members"),
            "--digest-members", str(tmp_path / "digest"), "--nomail-members", str(tmp_path / "nomail"),
            "--mbox", str(tmp_path / "team.mbox")]


def test_import_mailman2(rs, tmp_path):
    args = mailman2_files(tmp_path)
    out = rs.run("import", "mailman2", *args, check=0).out
    assert "create list team@lists.example.org" in out
    assert "add 5 members (1 digest, 1 nomail)" in out and "add 2 archived posts" in out
    assert "invalid addresses, not imported: broken@" in out
    for item in ("msg_footer placeholders _internal_name, cgiext, web_page_url",):
        assert f"not carried over: {item}" in out, item
    for item in ("reply_goes_to_list", "max_message_size", "subject_prefix", "generic_nonmember_action", "ban_list"):
        assert f"not carried over: {item}" not in out, item
    (listing,) = json.loads(rs.run("lists", "--json", check=0).out)
    assert listing["subject_tag"] == "[Team %d]" and listing["subscribe_policy"] == "confirm+approve"
    assert (listing["reply_to"], listing["max_size"], listing["nonmember_action"]) == ("list", 40, "reject")
    assert rs.run("ban", "team@lists.example.org", check=0).out == "^.*@spam.example$\n"
    assert listing["footer"].splitlines()[1:3] == ["Team mailing list", "Team@lists.example.org"]
    assert listing["owners"] == "owner@example.org, mod@example.org" and listing["archive"] == "public"
    assert listing["description"] == "The team list" and "not carried over: description" not in out
    pages = rs.home / "pages" / "team@lists.example.org"             # a public archive is published
    assert (pages / "2.html").exists() and "The team list" in (pages / "index.html").read_text()
    export = json.loads(rs.run("export", "team@lists.example.org", check=0).out)
    names = {m["address"]: m["name"] for m in export["members"]}
    assert names["ann@example.org"] == "Ann Example" and names["jane@example.org"] == "Doe, Jane"
    assert rs.run("import", "mailman2", *args, check=0).out.rstrip().endswith("nothing to change")


def test_mailman2_config_is_read_never_run(rs, tmp_path):
    args = mailman2_files(tmp_path)
    evil = tmp_path / "pwned"
    (tmp_path / "config").write_text(MAILMAN2_CONFIG + f"\nimport os\nos.system('touch {evil}')\n"
                                     f"real_name = __import__('os').system('touch {evil}')\n")
    r = rs.run("import", "mailman2", *args, "--dry-run", check=0)
    assert r.returncode == 0 and not evil.exists()
    (tmp_path / "config").write_text("real_name = 'Team\n")
    r = rs.run("import", "mailman2", *args)
    assert r.returncode == 65 and "config_list" in r.err and "Traceback" not in r.err


def test_import_mailman3(rs, tmp_path):
    # `mailman lists` and `mailman members team@lists.example.org` output
    (tmp_path / "info").write_text("1 matching mailing lists found:\nteam@lists.example.org\n")
    (tmp_path / "members").write_text("Ann Example <ann@example.org>\nbob@example.net\n")
    pipermail_mbox(tmp_path / "team.mbox", 1)
    out = rs.run("import", "mailman3", "--info", str(tmp_path / "info"), "--members", str(tmp_path / "members"),
                 "--mbox", str(tmp_path / "team.mbox"), check=0).out
    assert "create list team@lists.example.org" in out and "add 2 members" in out and "add 1 archived posts" in out
    assert "not carried over: settings" in out


def populate(rs):
    """A list with every kind of state an export carries."""
    rs.newlist("team@lists.example.org", "--access", "acl", "--owner", "owner@example.org",
               members=("ann@example.org", "bob@example.net"))
    rs.run("set", "team@lists.example.org", "subject_tag", "[team]", check=0)
    rs.run("set", "team@lists.example.org", "archive", "public", check=0)
    rs.run("acl", "team@lists.example.org", "add", "ann@example.org", "*@example.net", check=0)
    rs.run("set-member", "team@lists.example.org", "bob@example.net", "digest", "on", check=0)
    rs.queue(post(sender="ann@example.org", msgid="<p1@example.org>"), recipient="team@lists.example.org",
             sender="ann@example.org", check=0)
    rs.queue(post(sender="eve@elsewhere.example", msgid="<held@example.org>"), recipient="team@lists.example.org",
             sender="eve@elsewhere.example", check=0)
    rs.queue(b"From: new@example.org\nSubject: subscribe\n\n", recipient="team-join@lists.example.org",
             sender="new@example.org", check=0)


def strip_times(doc):
    if isinstance(doc, dict):
        return {k: strip_times(v) for k, v in doc.items()
                if k not in ("created", "expires", "received", "subscribed", "last_bounce", "disabled_at",
                             "last_warning")}
    if isinstance(doc, list):
        return [strip_times(v) for v in doc]
    return doc


def test_export_import_round_trip(rs, tmp_path):
    from conftest import Redsky
    populate(rs)
    out = tmp_path / "team.json"
    rs.run("export", "team@lists.example.org", "--output", str(out), check=0)
    first = json.loads(out.read_text())
    assert {m["address"] for m in first["members"]} == {"ann@example.org", "bob@example.net"}
    assert len(first["held"]) == 1 and {p["action"] for p in first["pending"]} >= {"subscribe", "moderate"}
    assert (tmp_path / "team.json.mbox").exists()
    other = Redsky(tmp_path / "other")
    other.run("init", check=0)
    imported = other.run("import", "redsky", str(out), check=0).out
    assert "create list team@lists.example.org" in imported
    assert "not imported: 1 pending confirmations (subscribe new@example.org)" in imported
    again = tmp_path / "again.json"
    other.run("export", "team@lists.example.org", "--output", str(again), check=0)
    second = json.loads(again.read_text())
    # all but the tokens: the held post's is new, the confirmation is left out (whoever asked asks again)
    assert strip_times(dict(second, pending=[])) == strip_times(dict(first, pending=[]))
    assert [(p["action"], p["held"]) for p in second["pending"]] == [("moderate", 1)]
    assert not {p["token"] for p in first["pending"]} & {p["token"] for p in second["pending"]}
    assert (tmp_path / "again.json.mbox").read_bytes().count(b"\nFrom ") == \
        (tmp_path / "team.json.mbox").read_bytes().count(b"\nFrom ")
    assert other.run("import", "redsky", str(out), check=0).out.rstrip().endswith("nothing to change")
    # the held post can still be approved on the new host, with its token
    held = json.loads(other.run("held", "team@lists.example.org", "--json", check=0).out)
    assert len(held) == 1
    assert other.run("approve", str(held[0]["id"]), check=0).returncode == 0


DAMAGED = {
    "no list": {},
    "members not objects": {"members": [1, 2]},
    "a bad setting": {"settings": {"access": 5}},
    "settings not an object": {"settings": [1]},
    "a held post without its fields": {"held": [{"raw": "!!"}]},
    "a pending request without its fields": {"pending": [{"token": "a"}]},
    "not a list address": {"list": "bad"},
    "a score that is no number": {"members": [{"address": "a@b.org", "bounce_score": "y"}]},
    "an unknown member status": {"members": [{"address": "a@b.org", "status": "gone"}]},
    "a duration that is none": {"settings": {"digest_interval": "zz"}},
    "a score that is NaN": {"members": [{"address": "a@b.org", "bounce_score": float("nan")}]},
    "a held post received at Infinity": {"held": [{"number": 1, "received": float("inf"), "sender": "",
                                                   "recipient": "", "from_addr": "", "subject": "",
                                                   "message_id": "", "reason": "", "raw": ""}]},
}


@pytest.mark.parametrize("damage", sorted(DAMAGED))
def test_a_damaged_export_is_bad_data_never_a_crash(rs, tmp_path, damage):
    doc = {"format": "redsky-export", "list": "team@lists.example.org", **DAMAGED[damage]}
    if damage == "no list":
        del doc["list"]
    (tmp_path / "x.json").write_text(json.dumps(doc))
    r = rs.run("import", "redsky", str(tmp_path / "x.json"))
    assert r.returncode == 65 and "internal error" not in r.err and len(r.err.strip().splitlines()) == 1, r.err
    assert rs.run("lists", "--json", check=0).out.strip() in ("[]", "")          # nothing half-imported


def test_import_of_something_else_is_a_clear_65(rs, tmp_path):
    (tmp_path / "x.json").write_text('{"format": "other"}')
    r = rs.run("import", "redsky", str(tmp_path / "x.json"))
    assert r.returncode == 65 and "not a redsky export" in r.err
    r = rs.run("import", "redsky", str(tmp_path / "missing.json"))
    assert r.returncode == 65 and "Traceback" not in r.err


def everywhere(db_path, needle):
    """Every row of every table whose any column mentions ``needle``."""
    db = sqlite3.connect(db_path)
    hits = []
    for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
        columns = [r[1] for r in db.execute(f"PRAGMA table_info({table})")]
        for column in columns:
            n = db.execute(f"SELECT count(*) FROM {table} WHERE CAST({column} AS TEXT) LIKE ?",
                           (f"%{needle}%",)).fetchone()[0]
            if n:
                hits.append((table, column, n))
    db.close()
    return hits


def test_whois_and_forget_leave_nothing_behind(rs):
    populate(rs)
    rs.run("set", "team@lists.example.org", "owners", "owner@example.org,ann@example.org", check=0)
    rs.run("send", check=0)
    from test_message import dsn
    rs.queue(dsn(recipient="ann@example.org"), recipient=rs.verp("ann@example.org", "team@lists.example.org"),
             sender="", check=0)
    rs.queue(dsn(recipient="ann@example.org"), recipient="team-bounces@lists.example.org", sender="", check=0)
    assert everywhere(rs.home / "redsky.db", "ann@example.org")
    who = json.loads(rs.run("whois", "ann@example.org", "--json", check=0).out)
    assert who["members"][0]["list"] == "team@lists.example.org" and who["acl"] and who["bounces"]
    assert who["deliveries"] and who["events"] and who["owner of"] == ["team@lists.example.org"]
    assert [a["subject"] for a in who["archive"]] == ["Hello"] or who["archive"]
    text = rs.run("whois", "ann@example.org", check=0).out
    assert "members: 1" in text and "bounces: 2" in text
    out = rs.run("forget", "ann@example.org", "--archive", check=0).out
    assert out.startswith("forgot ann@example.org:")
    assert everywhere(rs.home / "redsky.db", "ann@example.org") == []
    assert json.loads(rs.run("archive", "team@lists.example.org", "--json", check=0).out) == []
    assert not [p for p in (rs.home / "spool").rglob("*") if p.is_file() and b"ann@example.org" in p.read_bytes()]
    assert "bob@example.net" in rs.members("team@lists.example.org")           # nobody else touched
    who = json.loads(rs.run("whois", "ann@example.org", "--json", check=0).out)
    assert all(not v for v in who.values())


def test_forget_touches_only_that_address(rs):
    """LIKE's wildcards in an address (a_b matches axb) and longer addresses
    that contain it (xa_b@) are somebody else."""
    rs.newlist("team@lists.example.org", members=("a_b@example.org", "axb@example.org", "xa_b@example.org"))
    for sender in ("a_b@example.org", "axb@example.org", "xa_b@example.org", "z@example.org"):
        rs.queue(post(sender=sender), recipient="team@lists.example.org", sender=sender, check=0)
    rs.run("forget", "a_b@example.org", check=0)
    assert set(rs.members("team@lists.example.org")) == {"axb@example.org", "xa_b@example.org"}
    senders = {r[0] for r in rs.db().execute("SELECT sender FROM events")}
    assert {"axb@example.org", "xa_b@example.org", "z@example.org"} <= senders
    assert "a_b@example.org" not in senders


MAILMAN3 = os.environ.get("REDSKY_MAILMAN3", "")


@pytest.mark.mta
@pytest.mark.skipif(not (MAILMAN3 and os.access(MAILMAN3, os.X_OK)),
                    reason="no Mailman 3 here (.ci/run installs it into a venv and sets REDSKY_MAILMAN3)")
def test_import_from_a_real_mailman3(rs, tmp_path):
    cfg = tmp_path / "mailman.cfg"
    cfg.write_text(f"[paths.local]\nvar_dir: {tmp_path / 'var'}\n\n[mailman]\nlayout: local\n"
                   "site_owner: owner@example.org\n\n[mta]\nincoming: mailman.mta.null.NullMTA\n")
    mailman = [MAILMAN3, "-C", str(cfg), "--run-as-root"]
    run = lambda *a, **kw: subprocess.run(mailman + list(a), capture_output=True, text=True, check=True,
                                          timeout=300, **kw).stdout
    run("create", "team@lists.example.org")
    (tmp_path / "add.txt").write_text("Ann Example <ann@example.org>\nbob@example.net\n\"Doe, Jane\" <jane@example.org>\n")
    run("addmembers", str(tmp_path / "add.txt"), "team@lists.example.org")
    (tmp_path / "members").write_text(run("members", "--regular", "team@lists.example.org"))
    (tmp_path / "lists").write_text(run("lists"))
    out = rs.run("import", "mailman3", "--info", str(tmp_path / "lists"), "--members", str(tmp_path / "members"),
                 check=0).out
    assert "create list team@lists.example.org" in out and "add 3 members" in out
    export = json.loads(rs.run("export", "team@lists.example.org", check=0).out)
    assert {m["address"]: m["name"] for m in export["members"]} == {
        "ann@example.org": "Ann Example", "bob@example.net": "", "jane@example.org": "Doe, Jane"}


def test_mailman2_owner_given_as_one_string(rs, tmp_path):
    args = mailman2_files(tmp_path)
    (tmp_path / "config").write_text(MAILMAN2_CONFIG.replace("owner = ['owner@example.org']",
                                                             "owner = 'owner@example.org'"))
    rs.run("import", "mailman2", *args, check=0)
    (listing,) = json.loads(rs.run("lists", "--json", check=0).out)
    assert listing["owners"] == "owner@example.org, mod@example.org"


def test_a_directory_where_a_post_should_be_is_skipped_and_said(rs, tmp_path):
    (tmp_path / "list" / "control").mkdir(parents=True)
    (tmp_path / "list" / "control" / "listaddress").write_text("team@lists.example.org\n")
    (tmp_path / "list" / "archive").mkdir()
    (tmp_path / "list" / "archive" / "1").mkdir()          # a directory where a post should be
    (tmp_path / "list" / "archive" / "2").write_text("From: a@example.org\nSubject: two\n\nbody\n")
    r = rs.run("import", "mlmmj", str(tmp_path / "list"))
    assert r.returncode == 0 and "skipped: archive/1 is a directory: not read" in r.out, r.out + r.err
    assert "add 1 archived posts" in r.out


def test_forget_says_when_nothing_was_stored(rs):
    rs.newlist("team@lists.example.org", members=("bob@example.net",))
    assert rs.run("forget", "nobody@example.org", check=0).out.strip() == "forgot nobody@example.org: nothing stored"
    assert rs.run("forget", "Bob@Example.NET", check=0).out.lower().startswith("forgot bob@example.net: members 1")


def mlmmj_archive(path, numbers, domain="lists.example.org"):
    """A list directory as mlmmj leaves one, its archive holding posts under ``numbers``."""
    (path / "control").mkdir(parents=True)
    (path / "control" / "listaddress").write_text(f"team@{domain}\n")
    (path / "archive").mkdir()
    for n in numbers:
        (path / "archive" / str(n)).write_bytes(
            f"From: ann@example.org\nTo: team@{domain}\nSubject: mlmmj {n}\nMessage-ID: <ml{n}@example.org>\n"
            f"Date: Wed, 25 Nov 2026 10:00:00 +0000\n\nbody {n}\n".encode())
    return path


def test_an_mlmmj_archive_keeps_its_numbers_and_its_gaps(rs, tmp_path):
    listdir = mlmmj_archive(tmp_path / "team", [1, 2, 5, 7])             # 3, 4 and 6 mlmmj no longer had
    rs.run("init", check=0)
    rs.run("import", "mlmmj", str(listdir), check=0)
    rs.run("set", "team@lists.example.org", "archive", "public", check=0)
    rs.run("subscribe", "team@lists.example.org", "bob@example.net", check=0)
    listing = {r["number"]: r["subject"] for r in json.loads(rs.run("archive", "team@lists.example.org", "--json",
                                                                    check=0).out)}
    assert listing == {1: "mlmmj 1", 2: "mlmmj 2", 5: "mlmmj 5", 7: "mlmmj 7"}
    pages = rs.home / "pages" / "team@lists.example.org"
    assert "<h1>mlmmj 5</h1>" in (pages / "5.html").read_text() and "did not have it" in (pages / "4.html").read_text()
    rs.run("set", "team@lists.example.org", "access", "open", check=0)
    rs.queue(post(to="team@lists.example.org", subject="new"), recipient="team@lists.example.org", check=0)
    assert max(r["number"] for r in json.loads(rs.run("archive", "team@lists.example.org", "--json",
                                                      check=0).out)) == 8
    assert "archived posts" not in rs.run("import", "mlmmj", str(listdir), "--into-existing", check=0).out  # once


@pytest.mark.parametrize("header", ["X-No-Archive: yes", "X-Archive: no (please)", "Archive: =?utf-8?q?No?="])
def test_an_imported_post_that_asked_not_to_be_archived_is_a_gap_never_published(rs, tmp_path, header):
    listdir = mlmmj_archive(tmp_path / "team", [1, 2, 3])
    secret = listdir / "archive" / "2"
    secret.write_bytes(secret.read_bytes().replace(b"Subject: mlmmj 2", header.encode() + b"\nSubject: zqrefused"))
    rs.run("init", check=0)
    rs.run("import", "mlmmj", str(listdir), check=0)
    rs.run("set", "team@lists.example.org", "archive", "public", check=0)
    listing = {r["number"]: r["subject"] for r in json.loads(rs.run("archive", "team@lists.example.org", "--json",
                                                                    check=0).out)}
    assert listing == {1: "mlmmj 1", 3: "mlmmj 3"}
    pages = rs.home / "pages" / "team@lists.example.org"
    assert "asked that it not be archived" in (pages / "2.html").read_text()
    assert not [p for p in pages.rglob("*") if p.is_file() and b"zqrefused" in p.read_bytes()]


def test_an_import_into_an_archive_that_has_the_numbers_numbers_anew_and_says_so(rs, tmp_path):
    rs.newlist("team@lists.example.org", "--access", "open", members=("bob@example.net",))
    for i in (1, 2):
        rs.queue(post(to="team@lists.example.org", subject=f"here {i}"), recipient="team@lists.example.org",
                 check=0)
    out = rs.run("import", "mlmmj", str(mlmmj_archive(tmp_path / "team", [2, 3])), "--into-existing", check=0).out
    assert "1 archived posts numbered anew" in out
    listing = {r["number"]: r["subject"] for r in json.loads(rs.run("archive", "team@lists.example.org", "--json",
                                                                    check=0).out)}
    assert listing == {1: "here 1", 2: "here 2", 3: "mlmmj 3", 4: "mlmmj 2"}


def test_an_export_carries_the_numbers_and_gaps_to_the_next_host(rs, tmp_path):
    from conftest import Redsky
    populate(rs)
    for i in range(2, 6):
        rs.queue(post(sender="ann@example.org", subject=f"more {i}", msgid=f"<p{i}@example.org>"),
                 recipient="team@lists.example.org", sender="ann@example.org", check=0)
    rs.run("archive", "delete", "team@lists.example.org", "2", "4", check=0)
    out = tmp_path / "team.json"
    rs.run("export", "team@lists.example.org", "--output", str(out), check=0)
    other = Redsky(tmp_path / "other")
    other.run("init", check=0)
    other.run("import", "redsky", str(out), check=0)
    numbers = lambda home: [r["number"] for r in json.loads(home.run("archive", "team@lists.example.org", "--json",
                                                                         check=0).out)]
    assert numbers(other) == numbers(rs) == [1, 3, 5]
    assert "removed" in (other.home / "pages" / "team@lists.example.org" / "4.html").read_text()
    other.queue(post(sender="ann@example.org", subject="after", msgid="<after@example.org>"),
                recipient="team@lists.example.org", sender="ann@example.org", check=0)
    assert numbers(other) == [1, 3, 5, 6]
# -- what an import is handed (issue 29.1): only regular files really inside it ---------------

SECRET_LINES = "HMAC-KEY 5f0c1e2d3a4b\nsecret-member@victim.example\nTop Secret <boss@victim.example>\n"


def secret_in(rs, out):
    """Where the secret file's content turned up: the output, the database, the archive."""
    found = [where for where, text in (("output", out),) if "victim.example" in text or "HMAC-KEY" in text]
    found += [f"database {hit}" for needle in ("victim.example", "HMAC-KEY") for hit in
              everywhere(rs.home / "redsky.db", needle)]
    archive = rs.home / "archive"
    found += [f"archive {p}" for p in archive.rglob("*") if p.is_file() and b"victim.example" in p.read_bytes()]
    return found


def small_mlmmj(tmp_path, name="list"):
    """An ordinary mlmmj list directory (the layout mlmmj-make-ml makes), one of each thing."""
    listdir = tmp_path / name
    for sub in ("control", "subscribers.d", "digesters.d", "nomailsubs.d", "archive"):
        (listdir / sub).mkdir(parents=True)
    (listdir / "control" / "listaddress").write_text("team@lists.example.org\n")
    (listdir / "control" / "owner").write_text("owner@example.org\n")
    (listdir / "control" / "prefix").write_text("[team]\n")
    (listdir / "subscribers.d" / "a").write_text("ann@example.org\n")
    (listdir / "digesters.d" / "d").write_text("dig@example.org\n")
    (listdir / "archive" / "1").write_text("From: ann@example.org\nSubject: one\nMessage-ID: <1@example.org>\n\nx\n")
    return listdir


def replace_with_link(path, target):
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    path.symlink_to(target)


def outside_dir(secret):
    """A directory outside the list, shaped like the one a link replaces."""
    there = secret.parent / "elsewhere"
    there.mkdir(exist_ok=True)
    for name in ("x", "1", "5"):
        (there / name).write_text(secret.read_text())
    return there


# name -> (how to plant it in LISTDIR, given the secret file; the path the output names; why)
PLANTED = {
    "footer, an absolute link": (lambda d, s: replace_with_link(d / "control" / "footer", s),
                                 "control/footer", "a symbolic link"),
    "prefix, a relative link out": (lambda d, s: replace_with_link(
        d / "control" / "prefix", os.path.relpath(s, d / "control")), "control/prefix", "a symbolic link"),
    "owner": (lambda d, s: replace_with_link(d / "control" / "owner", s), "control/owner", "a symbolic link"),
    "moderators": (lambda d, s: replace_with_link(d / "control" / "moderators", s), "control/moderators",
                   "a symbolic link"),
    "a post of the archive": (lambda d, s: replace_with_link(d / "archive" / "2", s), "archive/2",
                              "a symbolic link"),
    "a subscribers file": (lambda d, s: replace_with_link(d / "subscribers.d" / "x", s), "subscribers.d/x",
                           "a symbolic link"),
    "a link to a link": (lambda d, s: (replace_with_link(d / "hop", s),
                                       replace_with_link(d / "nomailsubs.d" / "n", "../hop")),
                         "nomailsubs.d/n", "a symbolic link"),
    "digesters.d itself": (lambda d, s: replace_with_link(d / "digesters.d", outside_dir(s)), "digesters.d/",
                           "a symbolic link"),
    "the archive directory": (lambda d, s: replace_with_link(d / "archive", outside_dir(s)), "archive/",
                              "a symbolic link"),
    "a hard link": (lambda d, s: os.link(s, d / "subscribers.d" / "h"), "subscribers.d/h", "a hard link (2 names)"),
    "a FIFO as the footer": (lambda d, s: (d / "control" / "footer").exists() or os.mkfifo(d / "control" / "footer"),
                             "control/footer", "a FIFO"),
    "a FIFO of members": (lambda d, s: os.mkfifo(d / "subscribers.d" / "f"), "subscribers.d/f", "a FIFO"),
}


@pytest.mark.parametrize("planted", sorted(PLANTED))
def test_an_import_reads_only_regular_files_inside_the_list(rs, tmp_path, planted):
    plant, path, why = PLANTED[planted]
    secret = tmp_path / "data" / "redsky.db"                # stands for the installation's database
    secret.parent.mkdir()
    secret.write_text(SECRET_LINES)
    listdir = small_mlmmj(tmp_path)
    plant(listdir, secret)
    for dry in (["--dry-run"], []):
        r = rs.run("import", "mlmmj", str(listdir), *dry, timeout=30)      # a FIFO must not block
        assert r.returncode == 0, r.err
        assert f"skipped: {path} is {why}: not read" in r.out, r.out
        assert not secret_in(rs, r.out), (secret_in(rs, r.out), r.out)
    (listing,) = json.loads(rs.run("lists", "--json", check=0).out)
    assert "victim" not in json.dumps(listing) and listing["owners"] in ("owner@example.org", "")
    assert "ann@example.org" in rs.members("team@lists.example.org") or planted == "a subscribers file"


def test_a_device_node_is_never_opened(rs, tmp_path):
    listdir = small_mlmmj(tmp_path)
    try:
        # /dev/null: /dev/zero would show it as well, but a reader that opens devices reads it until it is
        # killed for want of memory (as this test did with the code before)
        os.mknod(listdir / "control" / "footer", 0o600 | __import__("stat").S_IFCHR, os.makedev(1, 3))
    except (PermissionError, OSError) as e:
        pytest.skip(f"cannot make a device node here: {e}")
    r = rs.run("import", "mlmmj", str(listdir), timeout=30)
    assert r.returncode == 0 and "skipped: control/footer is a device: not read" in r.out, r.out + r.err


def test_a_linked_listaddress_is_named_when_the_import_cannot_go_on(rs, tmp_path):
    listdir = small_mlmmj(tmp_path)
    replace_with_link(listdir / "control" / "listaddress", tmp_path / "elsewhere")
    r = rs.run("import", "mlmmj", str(listdir))
    assert r.returncode == 65 and "control/listaddress is a symbolic link: not read; give --as" in r.err, r.err


def test_an_oversized_file_is_skipped(rs, tmp_path, monkeypatch):
    import redsky
    monkeypatch.setitem(redsky.IMPORT_LIMITS, "control", 64)
    listdir = small_mlmmj(tmp_path)
    (listdir / "control" / "footer").write_text("x" * 65)
    (listdir / "control" / "moderators").write_text("mod@example.org\n" * 4)          # exactly 64 bytes
    out = rs.run("import", "mlmmj", str(listdir), check=0).out
    assert "skipped: control/footer is larger than 64 bytes: not read" in out
    (listing,) = json.loads(rs.run("lists", "--json", check=0).out)
    assert listing["footer"] == "" and "mod@example.org" in listing["owners"]


def test_a_link_made_between_look_and_open_is_not_followed(tmp_path, monkeypatch):
    """The lstat saw a regular file; by the open it is a link, or a FIFO: the open and the opened
    descriptor's fstat decide, never the look before."""
    import redsky
    secret = tmp_path / "secret"
    secret.write_text(SECRET_LINES)
    # (a FIFO made in the freed inode has the same number: its fstat then says FIFO)
    for swap, whys in ((lambda p: replace_with_link(p, secret), {"a symbolic link"}),
                       (lambda p: (p.unlink(), os.mkfifo(p)), {"replaced while it was read", "a FIFO"})):
        listdir = small_mlmmj(tmp_path, f"list-{len(whys)}")
        footer = listdir / "control" / "footer"
        footer.write_text("harmless\n")
        real_stat = os.stat

        def stat_then_swap(path, *args, **kwargs):
            st = real_stat(path, *args, **kwargs)
            if path == "footer" and kwargs.get("dir_fd") is not None:
                swap(footer)
            return st
        monkeypatch.setattr(redsky.os, "stat", stat_then_swap)
        skipped = []
        with redsky.ImportSource(str(listdir), skipped) as source:
            assert source.read("control/footer", 1000) is None
        monkeypatch.setattr(redsky.os, "stat", real_stat)
        assert len(skipped) == 1 and skipped[0][0] == "control/footer" and skipped[0][1] in whys, skipped


def test_the_list_directory_itself_and_its_control_must_be_no_link(rs, tmp_path):
    listdir = small_mlmmj(tmp_path)
    (tmp_path / "alias").symlink_to(listdir)
    r = rs.run("import", "mlmmj", str(tmp_path / "alias"))
    assert r.returncode == 65 and "is a symbolic link" in r.err and str(listdir) in r.err
    other = small_mlmmj(tmp_path, "other")
    replace_with_link(other / "control", listdir / "control")
    r = rs.run("import", "mlmmj", str(other))
    assert r.returncode == 65 and "control/ is a symbolic link" in r.err
    assert rs.run("lists", "--json", check=0).out.strip() in ("[]", "")


NAMED = {   # what a file named on the command line may not be
    "a symbolic link": lambda p, secret: p.symlink_to(secret),
    "a hard link (2 names)": lambda p, secret: os.link(secret, p),
    "a FIFO": lambda p, secret: os.mkfifo(p),
    "a directory": lambda p, secret: p.mkdir(),
}


@pytest.mark.parametrize("option", ["--config", "--members", "--digest-members", "--mbox"])
@pytest.mark.parametrize("kind", sorted(NAMED))
def test_a_named_mailman_file_must_be_a_regular_file(rs, tmp_path, option, kind):
    args = mailman2_files(tmp_path)
    secret = tmp_path / "secret"
    secret.write_text(SECRET_LINES)
    path = tmp_path / "planted"
    NAMED[kind](path, secret)
    args[args.index(option) + 1] = str(path)
    r = rs.run("import", "mailman2", *args, timeout=30)
    assert r.returncode == 65 and f"{path} is {kind}: not read" in r.err, r.err
    assert not secret_in(rs, r.out + r.err)
    assert rs.run("lists", "--json", check=0).out.strip() in ("[]", "")


def test_mailman3_info_and_a_redsky_export_named_must_be_regular_files(rs, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text(SECRET_LINES)
    (tmp_path / "members").write_text("ann@example.org\n")
    (tmp_path / "info").symlink_to(secret)
    r = rs.run("import", "mailman3", "--info", str(tmp_path / "info"), "--members", str(tmp_path / "members"))
    assert r.returncode == 65 and "is a symbolic link: not read" in r.err
    populate(rs)
    rs.run("export", "team@lists.example.org", "--output", str(tmp_path / "team.json"), check=0)
    (tmp_path / "link.json").symlink_to(tmp_path / "team.json")
    r = rs.run("import", "redsky", str(tmp_path / "link.json"))
    assert r.returncode == 65 and "link.json is a symbolic link: not read" in r.err


@pytest.mark.parametrize("kind", ["a symbolic link", "a hard link (2 names)", "a FIFO"])
def test_an_exports_mbox_beside_it_is_read_only_as_a_regular_file(rs, tmp_path, kind):
    from conftest import Redsky
    populate(rs)
    export = tmp_path / "team.json"
    rs.run("export", "team@lists.example.org", "--output", str(export), check=0)
    secret = tmp_path / "secret"
    secret.write_text("From x\n" + "From: boss@victim.example\nSubject: secret\n\n" + SECRET_LINES)
    (tmp_path / "team.json.mbox").unlink()
    NAMED[kind](tmp_path / "team.json.mbox", secret)
    other = Redsky(tmp_path / "other")
    r = other.run("import", "redsky", str(export), timeout=30)
    assert r.returncode == 0 and f"skipped: {export}.mbox is {kind}: not read" in r.out, r.out + r.err
    assert not secret_in(other, r.out) and "ann@example.org" in other.members("team@lists.example.org")


# -- an import never takes over a list unasked, and never trusts a file's tokens (issue 29.2) --

TAKEN_TOKENS = {"subscribe": "a" * 32, "moderate": "b" * 32, "approve-subscribe": "c" * 32, "unsubscribe": "d" * 32,
                "reenable": "e" * 32}


def hostile_export(path, address="team@lists.example.org"):
    """An export as someone who wants the list would write it: their owner, no passphrase, open
    access, their footer, a victim to subscribe, and tokens of their choosing."""
    import base64
    now = time.time()
    held = (b"From: eve@evil.example\nTo: team@lists.example.org\nSubject: buy now\n"
            b"Message-ID: <spam@evil.example>\n\nspam\n")
    doc = {"format": "redsky-export", "version": 1, "list": address,
           "settings": {"owners": "eve@evil.example", "passphrase_hash": "", "access": "open",
                        "footer": "eve was here"},
           "members": [{"address": "eve@evil.example"}],
           "held": [{"number": 1, "received": now, "sender": "eve@evil.example", "recipient": address,
                     "from_addr": "eve@evil.example", "subject": "buy now", "message_id": "<spam@evil.example>",
                     "reason": "moderated", "raw": base64.b64encode(held).decode()}],
           "pending": [{"token": token, "address": "victim@example.net", "action": action,
                        "held": 1 if action == "moderate" else None, "created": now, "expires": now + 86400}
                       for action, token in TAKEN_TOKENS.items()]}
    path.write_text(json.dumps(doc))
    return path


def victim_list(rs):
    rs.newlist("team@lists.example.org", "--access", "moderated", "--owner", "owner@example.org",
               "--passphrase", "s3cret", "--footer", "the real footer", members=("ann@example.org",))
    return json.loads(rs.run("lists", "--json", check=0).out)


def the_state(rs):
    """Everything an import could change about the lists."""
    db = rs.db()
    tables = {t: sorted(tuple(r) for r in db.execute(f"SELECT * FROM {t}"))
              for t in ("lists", "members", "pending", "held", "acl", "bans")}
    return tables, sorted(p.name for p in (rs.home / "spool").rglob("*") if p.is_file())


def mlmmj_naming(tmp_path, address):
    listdir = small_mlmmj(tmp_path)
    (listdir / "control" / "listaddress").write_text(f"{address}\n")
    (listdir / "control" / "owner").write_text("eve@evil.example\n")
    return ["mlmmj", str(listdir)]


def mailman2_naming(tmp_path, address):
    args = mailman2_files(tmp_path)
    name, domain = address.split("@")
    (tmp_path / "config").write_text(MAILMAN2_CONFIG.replace("'Team'", repr(name.capitalize()))
                                     .replace("'lists.example.org'", repr(domain)))
    return ["mailman2", *args]


def mailman3_naming(tmp_path, address):
    (tmp_path / "info").write_text(f"1 matching mailing lists found:\n{address}\n")
    (tmp_path / "members").write_text("eve@evil.example\n")
    return ["mailman3", "--info", str(tmp_path / "info"), "--members", str(tmp_path / "members")]


NAMING = {"redsky": lambda tmp_path, address: ["redsky", str(hostile_export(tmp_path / "x.json", address))],
          "mlmmj": mlmmj_naming, "mailman2": mailman2_naming, "mailman3": mailman3_naming,
          "--as": lambda tmp_path, address: ["redsky", str(hostile_export(tmp_path / "x.json",
                                                                          "other@lists.example.org")),
                                             "--as", address.upper()]}


@pytest.mark.parametrize("kind", sorted(NAMING))
def test_an_import_naming_an_existing_list_changes_nothing_without_into_existing(rs, tmp_path, kind):
    victim_list(rs)
    before = the_state(rs)
    args = NAMING[kind](tmp_path, "team@lists.example.org")
    r = rs.run("import", *args)
    assert r.returncode == 65 and "exists here" in r.err and "--into-existing" in r.err, r.err
    assert the_state(rs) == before
    dry = rs.run("import", *args, "--dry-run", check=0).out
    assert "importing into it takes --into-existing" in dry
    assert ("would change owners: 'owner@example.org' ->" in dry) == (kind != "mailman3")   # it carries none
    assert "would add" in dry and "members" in dry
    assert the_state(rs) == before


def test_the_dry_run_shows_what_an_import_into_a_list_would_change(rs, tmp_path):
    victim_list(rs)
    before = the_state(rs)
    out = rs.run("import", "redsky", str(hostile_export(tmp_path / "x.json")), "--dry-run", check=0).out
    for line in ("would change owners: 'owner@example.org' -> 'eve@evil.example'",
                 "would change passphrase_hash: (set) -> (none)", "would change access: 'moderated' -> 'open'",
                 "would change footer: 'the real footer' -> 'eve was here'",
                 "would add 1 members (0 digest, 0 nomail): eve@evil.example",
                 "would add 1 held posts with new tokens",
                 "not imported: 3 pending confirmations (subscribe victim@example.net, unsubscribe victim@",
                 "not imported: 1 requests to join waiting for the owners (victim@example.net)"):
        assert line in out, (line, out)
    assert the_state(rs) == before


@pytest.mark.parametrize("existing", [True, False])
def test_tokens_from_a_file_are_never_trusted(rs, tmp_path, existing):
    if existing:
        victim_list(rs)
    else:
        rs.run("init", check=0)
    r = rs.run("import", "redsky", str(hostile_export(tmp_path / "x.json")), *(["--into-existing"] * existing),
               check=0)
    assert "held posts with new tokens" in r.out
    (listing,) = json.loads(rs.run("lists", "--json", check=0).out)
    assert listing["owners"] == "eve@evil.example"          # asked for: the file's settings are taken
    tokens = {row[0] for row in rs.db().execute("SELECT token FROM pending")}
    assert len(tokens) == 1 and not tokens & set(TAKEN_TOKENS.values())
    status = rs.status()
    assert (status["queued_posts"], status["pending"]) == (0, 0), "an import sends nobody anything"
    assert not rs.db().execute("SELECT count(*) FROM messages").fetchone()[0]
    # the file's tokens do nothing: the victim stays out, the held post stays held
    for action, token in TAKEN_TOKENS.items():
        rs.queue(b"From: eve@evil.example\nSubject: confirm\n\nconfirm " + token.encode() + b"\n",
                 recipient=f"team-confirm+{token}@lists.example.org", sender="eve@evil.example", check=0)
        rs.queue(f"From: eve@evil.example\nSubject: approve {token}\n\n".encode(),
                 recipient="team-request@lists.example.org", sender="eve@evil.example", check=0)
    assert "victim@example.net" not in rs.members("team@lists.example.org")
    assert len(json.loads(rs.run("held", "--json", check=0).out)) == 1
    # the imported held post has a token of our own, and the shell acts on it
    (held,) = json.loads(rs.run("held", "--json", check=0).out)
    assert rs.run("discard", str(held["id"]), check=0).returncode == 0


# -- mlmmj's seams (issue 30.4): its own addresses in the footer, a root-owned list directory ---

MLMMJ_FOOTER = ("-- \nTo unsubscribe send a mail to team+unsubscribe@lists.example.org\n"
                "Digest: <mailto:TEAM+subscribe-digest@Lists.Example.Org>, help: team+help@lists.example.org.\n"
                "Owners: team+owner@lists.example.org; confirm: team+confsub-1234@lists.example.org\n"
                "Not ours: xteam+unsubscribe@lists.example.org, team+unsubscribe@lists.example.org.uk,"
                " other+unsubscribe@lists.example.org, team-leave@lists.example.org\n")


def test_mlmmj_addresses_in_the_footer_are_named_with_redskys(rs, tmp_path):
    listdir = small_mlmmj(tmp_path)
    (listdir / "control" / "footer").write_text(MLMMJ_FOOTER)
    (listdir / "control" / "prefix").write_text("[team+help@lists.example.org]\n")
    out = rs.run("import", "mlmmj", str(listdir), "--dry-run", check=0).out
    warnings = [line.split("warning: ", 1)[1] for line in out.splitlines() if "warning: " in line]
    said = {w.split(" names ")[1].split(",")[0]: w for w in warnings}
    assert set(said) == {"team+unsubscribe@lists.example.org", "TEAM+subscribe-digest@Lists.Example.Org",
                         "team+help@lists.example.org", "team+owner@lists.example.org",
                         "team+confsub-1234@lists.example.org"}, warnings
    assert "redsky's is team-leave@lists.example.org;" in said["team+unsubscribe@lists.example.org"]
    assert "redsky's is team-join@lists.example.org (then `set digest on`" in \
        said["TEAM+subscribe-digest@Lists.Example.Org"]
    assert "redsky's is team-owner@lists.example.org" in said["team+owner@lists.example.org"]
    assert "redsky has none like it" in said["team+confsub-1234@lists.example.org"]
    assert sum("the prefix names team+help@" in w for w in warnings) == 1
    assert all("--rewrite-addresses" in w for w in warnings if "none like it" not in w)
    # carried over word for word unless asked
    rs.run("import", "mlmmj", str(listdir), check=0)
    (listing,) = json.loads(rs.run("lists", "--json", check=0).out)
    assert listing["footer"] == MLMMJ_FOOTER.strip("\n")


def test_rewrite_addresses_puts_redskys_in_the_footer_and_prefix(rs, tmp_path):
    listdir = small_mlmmj(tmp_path)
    (listdir / "control" / "footer").write_text(MLMMJ_FOOTER)
    (listdir / "control" / "prefix").write_text("[team+help@lists.example.org]\n")
    out = rs.run("import", "mlmmj", str(listdir), "--rewrite-addresses", check=0).out
    # what was rewritten is said as done, not as a refusal
    assert "now team-leave@lists.example.org" in out and "which redsky refuses: redsky's is" not in out
    (listing,) = json.loads(rs.run("lists", "--json", check=0).out)
    footer = listing["footer"]
    assert "send a mail to team-leave@lists.example.org\n" in footer
    assert "<mailto:team-join@lists.example.org>, help: team-request@lists.example.org." in footer
    assert "Owners: team-owner@lists.example.org; confirm: team+confsub-1234@lists.example.org" in footer
    assert footer.splitlines()[-1] == MLMMJ_FOOTER.splitlines()[-1]          # not mlmmj's: untouched
    assert listing["subject_tag"] == "[team-request@lists.example.org]"
    r = rs.run("import", "redsky", str(tmp_path / "x.json"), "--rewrite-addresses")
    assert r.returncode == 64


def test_mlmmj_addresses_of_the_old_name_and_its_delimiter_are_found_too(rs, tmp_path):
    listdir = small_mlmmj(tmp_path)
    (listdir / "control" / "delimiter").write_text("-\n")
    (listdir / "control" / "footer").write_text("Leave: team-unsubscribe@lists.example.org\n"
                                                "Old: team+unsubscribe@lists.example.org\n")
    out = rs.run("import", "mlmmj", str(listdir), "--as", "crew@new.example.org", "--rewrite-addresses",
                 check=0).out
    assert "named team-unsubscribe@lists.example.org, mlmmj's address" in out
    assert "now crew-leave@new.example.org" in out and "named team+unsubscribe" not in out
    (listing,) = json.loads(rs.run("lists", "--json", check=0).out)
    assert listing["footer"].splitlines() == ["Leave: crew-leave@new.example.org",
                                              "Old: team+unsubscribe@lists.example.org"]


def test_a_plain_footer_gets_no_warning(rs, tmp_path):
    listdir = small_mlmmj(tmp_path)
    (listdir / "control" / "footer").write_text("-- \nteam: mail team-leave@lists.example.org to leave\n")
    out = rs.run("import", "mlmmj", str(listdir), check=0).out
    assert "warning" not in out


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="reading as root, then working as the list user")


@pytest.fixture
def site(tmp_path):
    """An installation as root lays it out (/tmp, every directory reachable), data_dir owned by
    nobody, and a root-owned mlmmj list directory with its subscribers 0600, as mlmmj leaves it."""
    import pwd
    import tempfile
    from pathlib import Path
    top = Path(tempfile.mkdtemp(prefix="redsky-import-", dir="/tmp"))
    top.chmod(0o755)
    nobody = pwd.getpwnam("nobody")
    (top / "data").mkdir()
    os.chown(top / "data", nobody.pw_uid, nobody.pw_gid)
    (top / "redsky.ini").write_text("[redsky]\ndata_dir = data\nlog = stderr\n")
    listdir = small_mlmmj(top / "spool")
    (top / "spool").chmod(0o700)
    for path in [listdir, *listdir.rglob("*")]:
        path.chmod(0o700 if path.is_dir() else 0o600)
    yield top, listdir, nobody
    shutil.rmtree(top, ignore_errors=True)


@needs_root
def test_root_imports_a_root_owned_mlmmj_list_then_works_as_the_list_user(site):
    from conftest import cli
    top, listdir, nobody = site
    r = cli(["-c", str(top / "redsky.ini"), "import", "mlmmj", str(listdir)], subprocess=True)
    assert r.returncode == 0 and "add 2 members" in r.out, r.out + r.err
    assert os.stat(top / "data" / "redsky.db").st_uid == nobody.pw_uid       # written as the list user
    r = cli(["-c", str(top / "redsky.ini"), "members", "team@lists.example.org"], subprocess=True)
    assert "ann@example.org" in r.out and "dig@example.org" in r.out


@needs_root
def test_a_user_who_cannot_read_the_list_is_told_what_to_do(site):
    from conftest import cli
    top, listdir, nobody = site
    (top / "spool").chmod(0o755)
    listdir.chmod(0o755)
    (listdir / "control").chmod(0o755)
    def as_nobody():
        os.setgroups([])
        os.setgid(nobody.pw_gid)
        os.setuid(nobody.pw_uid)
    r = cli(["-c", str(top / "redsky.ini"), "import", "mlmmj", str(listdir)], subprocess=True,
            preexec_fn=as_nobody)
    assert r.returncode == 77 and "permission denied; run the import as root" in r.err, r.err
    assert len(r.err.strip().splitlines()) == 1 and not (top / "data" / "redsky.db").exists()


# -- export's mbox and the cost of a large import (issue 29, noticed in passing) ---------------

def test_an_export_without_archived_posts_writes_no_mbox(rs, tmp_path):
    rs.newlist("team@lists.example.org", members=("ann@example.org",))
    out = tmp_path / "team.json"
    (tmp_path / "team.json.mbox").write_text("From x\nFrom: stale@example.org\n\nan older export's\n")
    r = rs.run("export", "team@lists.example.org", "--output", str(out), check=0)
    assert out.exists() and not (tmp_path / "team.json.mbox").exists()
    assert "mbox" not in r.err.replace("no .mbox", "") and "no archived posts" in r.err
    rs.queue(post(sender="ann@example.org", to="team@lists.example.org"), recipient="team@lists.example.org",
             sender="ann@example.org", check=0)
    r = rs.run("export", "team@lists.example.org", "--output", str(out), check=0)
    assert f"and {out}.mbox" in r.err and (tmp_path / "team.json.mbox").read_bytes().startswith(b"From ")


def test_planning_a_member_costs_the_same_however_many_there_are():
    """plan_member must not look through the members planned so far (a 100,000-member import
    was quadratic: 10 minutes and more)."""
    import redsky

    class Untouchable(list):
        def __iter__(self):
            raise AssertionError("plan_member went through every planned member")
    plan = redsky.new_plan("team@lists.example.org")
    plan["members"] = Untouchable()
    for address in ("a@example.org", "B@example.org", "b@example.org", "bad"):
        redsky.plan_member(plan, address)
    assert [m["address"] for m in list.__iter__(plan["members"])] == ["a@example.org", "B@example.org"]
    assert len(plan["invalid"]) == 1


def test_mbox_posts_reads_as_mailbox_does(tmp_path):
    import redsky
    box = mailbox.mbox(str(tmp_path / "m"))
    for body in ("one\n", "two\n\nFrom the start of a line\n", "", "three\r\n\r\n"):
        box.add(f"From: a@example.org\nSubject: s\n\n{body}".encode())
    box.flush()
    data = (tmp_path / "m").read_bytes()
    assert redsky.mbox_posts(data) == [box.get_bytes(key) for key in box.iterkeys()]
    assert redsky.mbox_posts(b"") == [] and redsky.mbox_posts(b"no From line\n") == []


def test_an_import_takes_no_absurd_number_nor_a_flood_of_gaps(rs, tmp_path):
    """A list directory handed over by someone else: archive/N with N past 10^6 is numbered here,
    and a source lacking more than 100,000 numbers gets no gap page for each (a warning says so)."""
    import redsky
    listdir = mlmmj_archive(tmp_path / "team", [1, 3, redsky.IMPORT_MAX_NUMBER + 1])
    rs.run("init", check=0)
    rs.run("import", "mlmmj", str(listdir), check=0)
    numbers = lambda: [r["number"] for r in json.loads(rs.run("archive", "team@lists.example.org", "--json",  # noqa
                                                               check=0).out)]
    assert numbers() == [1, 3, 4]
    assert [tuple(r) for r in rs.db().execute("SELECT number, removed_by FROM archived_posts"
                                              " WHERE removed IS NOT NULL")] == [(2, "import")]
    sparse = mlmmj_archive(tmp_path / "sparse", [1, redsky.IMPORT_MAX_GAPS + 10], domain="other.example.org")
    out = rs.run("import", "mlmmj", str(sparse), check=0).out
    assert "they stay unused, without the page that says so" in out
    assert rs.db().execute("SELECT count(*) FROM archived_posts WHERE removed IS NOT NULL").fetchone()[0] == 1
    listing = json.loads(rs.run("archive", "team@other.example.org", "--json", check=0).out)
    assert [r["number"] for r in listing] == [1, redsky.IMPORT_MAX_GAPS + 10]
