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
    assert "create list team@lists.example.org" in other.run("import", "redsky", str(out), check=0).out
    again = tmp_path / "again.json"
    other.run("export", "team@lists.example.org", "--output", str(again), check=0)
    assert strip_times(json.loads(again.read_text())) == strip_times(first)
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


def test_an_unreadable_import_file_is_a_clear_error(rs, tmp_path):
    (tmp_path / "list" / "control").mkdir(parents=True)
    (tmp_path / "list" / "control" / "listaddress").write_text("team@lists.example.org\n")
    (tmp_path / "list" / "archive").mkdir()
    (tmp_path / "list" / "archive" / "1").mkdir()          # a directory where a post should be
    r = rs.run("import", "mlmmj", str(tmp_path / "list"))
    assert r.returncode == 77 and "cannot read" in r.err and "internal error" not in r.err


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
    assert "archived posts" not in rs.run("import", "mlmmj", str(listdir), check=0).out     # none twice


def test_an_import_into_an_archive_that_has_the_numbers_numbers_anew_and_says_so(rs, tmp_path):
    rs.newlist("team@lists.example.org", "--access", "open", members=("bob@example.net",))
    for i in (1, 2):
        rs.queue(post(to="team@lists.example.org", subject=f"here {i}"), recipient="team@lists.example.org",
                 check=0)
    out = rs.run("import", "mlmmj", str(mlmmj_archive(tmp_path / "team", [2, 3])), check=0).out
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
