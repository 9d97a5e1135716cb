"""The send chain: transports, VERP, the ledger, retries and expiry."""

import fcntl
import os

import pytest

from conftest import ledger, parse, post
from smtpsink import SMTPSink, free_port

MEMBERS = ("bob@example.net", "carol@example.com", "dave@example.org")


LIST_OPTIONS = ("--access", "open")


def test_sendmail_transport_verp_and_argv(lst):
    original = post(body="Body.\n")
    lst.queue(original, check=0)
    lst.run("send", check=0)
    sent = lst.sent()
    assert sorted(argv[-1] for argv, _ in sent) == sorted(MEMBERS)
    for argv, data in sent:
        rcpt = argv[-1]
        local, domain = rcpt.split("@")
        assert argv == ["-oi", "-f", lst.verp(rcpt), "--", rcpt]
        assert argv[2].endswith(f"+{local}={domain}@lists.example.org")
        assert data.endswith(b"\n\nBody.\n")
        assert parse(data)["List-Id"] == "<test.lists.example.org>"
    st = lst.status()
    assert st["sent"] == 3 and st["pending"] == 0 and st["queued_posts"] == 0
    assert not list((lst.home / "spool").glob("*.eml"))       # removed once all final
    assert lst.run("send", check=0).returncode == 0
    assert len(lst.sent()) == 3                               # nothing is sent twice


def test_hostile_recipient_never_becomes_an_option(lst):
    with lst.db() as db:   # even if a bad address got into the table, '--' protects sendmail
        db.execute("INSERT INTO members (list_id, address, subscribed) VALUES (1, '-oQ/tmp/x@evil.example', 0)")
    lst.queue(post(), check=0)
    lst.run("send", check=0)
    argv = [a for a, _ in lst.sent() if a[-1].startswith("-oQ")][0]
    assert argv[-2] == "--"


def test_sendmail_tempfail_once_is_retried_on_a_later_run(lst):
    lst.write_config(send={"retry_delay": "0"})
    (lst.sendmail_dir / "fail_once").touch()
    lst.queue(post(), check=0)
    lst.run("send", check=0)
    st = lst.status()
    assert st["sent"] == 2 and st["deferred"] == 1
    deferred = [r for r in ledger(lst).values() if r["state"] == "pending"][0]
    assert deferred["attempts"] == 1 and "exit 75" in deferred["last_error"]
    lst.run("send", check=0)
    assert sorted(lst.sent_to()) == sorted(MEMBERS)
    assert lst.status()["sent"] == 3


def test_backoff_delays_the_retry(lst):
    lst.write_config(send={"retry_delay": "10m"})
    (lst.sendmail_dir / "fail_once").touch()
    lst.queue(post(), check=0)
    lst.run("send", check=0)
    lst.run("send", check=0)
    assert lst.status()["deferred"] == 1 and len(lst.sent()) == 2
    row = [r for r in ledger(lst).values() if r["state"] == "pending"][0]
    assert 590 <= row["next_attempt"] - row["updated"] <= 610


def test_backoff_doubles_up_to_the_cap():
    import redsky
    config = redsky.Config(None)
    config.ini.read_dict({"send": {"retry_delay": "600", "retry_max_delay": "1h", "max_age": "1d"}})
    ledger = redsky.Ledger(None, config, batch=10 ** 9)
    post_row = {"id": 1, "list_id": 1, "created": __import__("time").time(), "message_id": "<x@y>"}
    for attempts in range(6):
        ledger.record(post_row, "a@b.c", attempts, redsky.Outcome(redsky.TEMPORARY, "451 later"))
    assert [round(row[1] - row[3]) for row in ledger.rows] == [600, 1200, 2400, 3600, 3600, 3600]
    assert {row[0] for row in ledger.rows} == {"pending"}


def test_permanent_failure_counts_as_bounce(lst):
    (lst.sendmail_dir / "permanent").write_text("carol@example.com\n")
    lst.queue(post(), check=0)
    lst.run("send", check=0)
    rows = ledger(lst)
    assert rows["carol@example.com"]["state"] == "failed"
    assert "exit 67" in rows["carol@example.com"]["last_error"]
    assert lst.members()["carol@example.com"]["bounce_score"] == 1
    assert lst.members()["bob@example.net"]["bounce_score"] == 0
    assert lst.status()["queued_posts"] == 0


def test_max_age_expires_and_counts(lst):
    lst.write_config(send={"max_age": "0"})
    (lst.sendmail_dir / "fail_once").touch()
    lst.queue(post(), check=0)
    lst.run("send", check=0)
    assert lst.status()["expired"] == 1
    expired = [a for a, r in ledger(lst).items() if r["state"] == "expired"]
    assert lst.members()[expired[0]]["bounce_score"] == 0.5        # given up after retrying: soft


def test_missing_sendmail_defers_everything(lst):
    lst.write_config(send={"sendmail": str(lst.home / "nope")})
    lst.queue(post(), check=0)
    assert lst.run("send").returncode == 0
    st = lst.status()
    assert st["deferred"] == 3 and st["sent"] == 0
    assert "cannot run" in next(iter(ledger(lst).values()))["last_error"]


def test_smtp_transport_with_mixed_replies(lst):
    replies = {"carol@example.com": "550 5.1.1 no such user", "dave@example.org": "451 4.3.0 try later"}
    with SMTPSink(replies) as sink:
        lst.write_config(send={"transport": "smtp", "smtp_host": "127.0.0.1", "smtp_port": sink.port,
                               "retry_delay": "0"})
        original = post(body="Line\n.leading dot\n")
        lst.queue(original, check=0)
        lst.run("send", check=0)
        assert [(m[0], m[1]) for m in sink.messages] == [(lst.verp("bob@example.net"), ["bob@example.net"])]
        assert sink.messages[0][2].replace(b"\r\n", b"\n").endswith(b"\n\nLine\n.leading dot\n")
        rows = ledger(lst)
        assert rows["carol@example.com"]["state"] == "failed" and "550" in rows["carol@example.com"]["last_error"]
        assert rows["dave@example.org"]["state"] == "pending" and "451" in rows["dave@example.org"]["last_error"]
        sink.replies.clear()
        lst.run("send", check=0)
        assert [m[1] for m in sink.messages] == [["bob@example.net"], ["dave@example.org"]]
    assert lst.status()["sent"] == 2 and lst.status()["failed"] == 1


def test_smtp_one_connection_for_the_run(lst):
    connections = []
    with SMTPSink() as sink:
        real = sink._session

        def counting(rfile, wfile, sock=None):
            connections.append(1)
            real(rfile, wfile, sock)
        sink._session = counting
        lst.write_config(send={"transport": "smtp", "smtp_host": "127.0.0.1", "smtp_port": sink.port})
        lst.queue(post(subject="a"), check=0)
        lst.queue(post(subject="b"), check=0)
        lst.run("send", check=0)
        assert len(sink.messages) == 6
    assert len(connections) == 1


def test_smtp_connection_refused_keeps_the_members_waiting(lst):
    """A server that cannot be reached costs one connection attempt, not a
    deferral row per member: the members wait, and the next run reaches them."""
    port = free_port()
    lst.write_config(send={"transport": "smtp", "smtp_host": "127.0.0.1", "smtp_port": port})
    lst.queue(post(), check=0)
    r = lst.run("send")
    assert r.returncode == 0 and "Connection refused" in r.err and "wait for the next run" in r.err
    st = lst.status()
    assert st["pending"] == 3 and st["deferred"] == 0 and st["sent"] == 0 and ledger(lst) == {}
    with SMTPSink() as sink:
        lst.write_config(send={"transport": "smtp", "smtp_host": "127.0.0.1", "smtp_port": sink.port})
        lst.run("send", check=0)
        assert sorted(r for _, rcpts, _ in sink.messages for r in rcpts) == sorted(MEMBERS)
    assert lst.status()["sent"] == 3 and lst.status()["pending"] == 0


def test_maildir_transport(lst):
    lst.write_config(send={"transport": "maildir"})
    lst.queue(post(), check=0)
    lst.run("send", check=0)
    for member in MEMBERS:
        (f,) = (lst.home / "maildir" / member / "new").iterdir()
        msg = parse(f.read_bytes())
        assert msg["Return-Path"] == f"<{lst.verp(member)}>"
        assert msg["Delivered-To"] == member


def test_second_send_exits_at_once_while_one_runs(lst):
    lst.queue(post(), check=0)
    lst.run("init", check=0)
    with open(lst.home / "send.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        r = lst.run("send")
    assert r.returncode == 0 and "another redsky send is running" in r.err
    assert lst.sent() == []


def test_send_lets_go_of_its_lock_and_database_when_it_returns(lst):
    """send run twice in one process (an embedding, or these tests): the
    first releases send.lock and closes the database when it returns, not
    when the process ends, so the second is not turned away."""
    import redsky

    def ours():                      # this process's open files inside the installation (Linux)
        if not os.path.isdir("/proc/self/fd"):
            return []
        return sorted(path for path in (os.path.realpath(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd"))
                      if path.startswith(str(lst.home)))
    lst.queue(post(subject="first"), check=0)
    before = ours()
    assert redsky.cmd_send(None, redsky.Config(str(lst.config))) == 0
    assert ours() == before
    with open(lst.home / "send.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)             # BlockingIOError if still held
    lst.queue(post(subject="second"), check=0)
    assert redsky.cmd_send(None, redsky.Config(str(lst.config))) == 0
    assert ours() == before
    assert sorted(parse(data)["Subject"] for _, data in lst.sent()) == ["first"] * 3 + ["second"] * 3


@pytest.mark.parametrize("key, value", [("transport", "carrier-pigeon"), ("verp", "per-recipent")])
def test_unknown_transport_or_verp_is_a_config_error_for_every_command(lst, key, value):
    lst.queue(post(), check=0)
    lst.write_config(send={key: value})
    for command in (["send"], ["doctor"], ["status"]):
        r = lst.run(*command)
        assert r.returncode == 78 and value in r.err and len(r.err.splitlines()) == 1, command
    r = lst.queue(post(subject="after the typo"))
    assert r.returncode == 78 and value in r.err


def test_orphan_spool_files_are_cleaned(lst):
    lst.queue(post(), check=0)
    orphan = lst.home / "spool" / "1.2.orphan.eml"
    orphan.write_bytes(b"left by a crash")
    young = lst.home / "spool" / "3.4.young.eml"
    young.write_bytes(b"a queue about to commit")
    os.utime(orphan, (0, 0))
    lst.run("send", check=0)
    assert not orphan.exists() and young.exists()


# -- the pipelined SMTP client, checked against the ledger -----------------------------

def smtp_config(rs, sink, **extra):
    rs.write_config(send={"transport": "smtp", "smtp_host": "127.0.0.1", "smtp_port": sink.port,
                          "retry_delay": "0", **extra})


def test_pipelining_groups_mail_rcpt_data(lst):
    with SMTPSink() as sink:
        smtp_config(lst, sink)
        lst.queue(post(), check=0)
        lst.run("send", check=0)
    assert len(sink.messages) == 3 and sink.grouped == 3          # one write per MAIL/RCPT/DATA group
    assert {m[0] for m in sink.messages} == {lst.verp(a) for a in MEMBERS}


def test_without_pipelining_plain_smtp_still_delivers(lst):
    replies = {"carol@example.com": "550 5.1.1 no such user"}
    with SMTPSink(replies, pipelining=False) as sink:
        smtp_config(lst, sink)
        lst.queue(post(), check=0)
        lst.run("send", check=0)
    assert sink.grouped == 0 and sorted(m[1][0] for m in sink.messages) == ["bob@example.net", "dave@example.org"]
    rows = ledger(lst)
    assert rows["carol@example.com"]["state"] == "failed" and "RCPT 550" in rows["carol@example.com"]["last_error"]


def test_connection_dropped_mid_run_is_replaced_once(lst):
    with SMTPSink(drop_after=2) as sink:               # the 2nd DATA never gets its final reply
        smtp_config(lst, sink)
        lst.queue(post(), check=0)
        lst.run("send", check=0)
    assert lst.status()["sent"] == 3 and sink.connections == 2
    assert sorted(m[1][0] for m in sink.messages) == sorted(MEMBERS)     # each accepted once


@pytest.mark.parametrize("pipelining", [True, False])
def test_connection_dropped_for_good_defers_exactly_the_unfinished(lst, pipelining):
    with SMTPSink(drop_after=2, then_refuse=True, pipelining=pipelining) as sink:
        smtp_config(lst, sink)
        lst.queue(post(), check=0)
        lst.run("send", check=0)
        (sent,) = [m[1][0] for m in sink.messages]
        st = lst.status()
        assert st["sent"] == 1 and st["pending"] + st["deferred"] == 2
        # the one in flight when the connection broke is deferred; the members not reached yet wait
        rows = ledger(lst)
        assert sent not in rows and all(r["state"] == "pending" and r["attempts"] == 1 for r in rows.values())
        sink.greeting = "220 back again"
        lst.run("send", check=0)
    assert lst.status()["sent"] == 3 and sorted(m[1][0] for m in sink.messages) == sorted(MEMBERS)


def test_xverp_batches_recipients(lst):
    with SMTPSink({"carol@example.com": "450 4.2.0 busy"}, xverp=True) as sink:
        smtp_config(lst, sink, verp="xverp", smtp_max_recipients="2")
        lst.queue(post(), check=0)
        lst.run("send", check=0)
    assert [m[0] for m in sink.messages] == ["test-bounces@lists.example.org"] * 2
    assert set(sink.mail_params) == {"XVERP"}
    assert sorted(r for m in sink.messages for r in m[1]) == ["bob@example.net", "dave@example.org"]
    assert ledger(lst)["carol@example.com"]["state"] == "pending"


def test_xverp_without_server_support_falls_back_to_per_recipient(lst):
    with SMTPSink() as sink:
        smtp_config(lst, sink, verp="xverp")
        lst.queue(post(), check=0)
        r = lst.run("send", check=0)
        doctor = lst.run("doctor").out
    assert sorted(m[0] for m in sink.messages) == sorted(lst.verp(a) for a in MEMBERS)
    assert set(sink.mail_params) == {""}
    assert r.err.count("does not offer XVERP: sending per recipient") == 1          # warned once a run
    assert any(line.startswith("WARN") and "does not offer XVERP" in line for line in doctor.splitlines())
    with SMTPSink(xverp=True, chunking=True) as sink:
        smtp_config(lst, sink, verp="xverp")
        doctor = lst.run("doctor").out
    assert "does not offer XVERP" not in doctor and "it offers CHUNKING PIPELINING XVERP" in doctor


def test_verp_off_batches_with_plain_bounce_address(lst):
    with SMTPSink() as sink:
        smtp_config(lst, sink, verp="off")
        lst.queue(post(), check=0)
        lst.run("send", check=0)
    assert [(m[0], sorted(m[1])) for m in sink.messages] == [("test-bounces@lists.example.org", sorted(MEMBERS))]


def test_sendmail_xverp_batches(lst):
    lst.write_config(send={"verp": "xverp", "smtp_max_recipients": "2"})
    lst.queue(post(), check=0)
    lst.run("send", check=0)
    argvs = [argv for argv, _ in lst.sent()]
    assert sorted(len(a) for a in argvs) == [6, 7]
    for argv in argvs:
        assert argv[:5] == ["-XV", "-oi", "-f", "test-bounces@lists.example.org", "--"]
    assert lst.status()["sent"] == 3


def test_large_post_uses_several_connections_and_one_ledger(rs):
    members = [f"m{i}@example.net" for i in range(700)]
    rs.newlist("test@lists.example.org", "--access", "open")
    rs.run("subscribe", "test@lists.example.org", "-", input="\n".join(members), check=0)
    with SMTPSink({"m5@example.net": "550 no"}) as sink:
        smtp_config(rs, sink, smtp_connections="3", ledger_batch="50")
        rs.queue(post(), check=0)
        rs.run("send", check=0)
    assert sink.connections == 3
    assert sorted(m[1][0] for m in sink.messages) == sorted(m for m in members if m != "m5@example.net")
    st = rs.status()
    assert st["sent"] == 699 and st["failed"] == 1 and st["queued_posts"] == 0


def test_smtp_copies_carry_personal_unsubscribe_addresses(lst):
    import re as _re
    with SMTPSink() as sink:
        smtp_config(lst, sink)
        lst.queue(post(), check=0)
        lst.run("send", check=0)
    found = {m[1][0]: _re.search(rb"List-Unsubscribe: <mailto:([^>]+)>", m[2]).group(1).decode() for m in sink.messages}
    assert len(set(found.values())) == 3
    assert all(_re.fullmatch(r"test-leave\+[0-9a-f]{16}@lists\.example\.org", v) for v in found.values())


# Posts to the members, CHUNKING, the one-thread client (issue 19) ---------------

def test_chunking_sends_each_copy_by_bdat_exactly_as_data_would(lst):
    """With CHUNKING every transaction goes in one pipelined group with its
    message (BDAT LAST, no dot-stuffing, no wait for 354), and each member
    gets the same bytes as over DATA: own VERP sender, own List-Unsubscribe."""
    body = "A line.\n.starts with a dot\n..and two\n.\n"
    copies = {}
    for chunking in (False, True):
        with SMTPSink(chunking=chunking) as sink:
            smtp_config(lst, sink)
            lst.queue(post(body=body, subject=f"chunking {chunking}", msgid=f"<chunking-{chunking}@x>"), check=0)
            lst.run("send", check=0)
        copies[chunking] = {m[1][0]: (m[0], m[2]) for m in sink.messages}
    assert sorted(copies[True]) == sorted(MEMBERS)
    for member in MEMBERS:
        (sender, data), (plain_sender, plain_data) = copies[True][member], copies[False][member]
        assert sender == plain_sender == lst.verp(member)
        assert data.replace(b"chunking-True", b"chunking-False").replace(b"chunking True", b"chunking False") \
            == plain_data
        assert b"\r\n.starts with a dot\r\n..and two\r\n.\r\n" in data
        token = parse(data)["List-Unsubscribe"]
        assert "test-leave+" in token and token != parse(copies[True][MEMBERS[0]][1])["List-Unsubscribe"] \
            or member == MEMBERS[0]


def test_chunking_a_transaction_left_open_never_takes_the_next_ones_recipient(lst):
    """A server may keep a transaction open after BDAT found no valid
    recipient (as the sink does): the next pipelined MAIL would get 503 and
    its RCPT would join the open transaction, with the wrong VERP sender.
    Each transaction starts with RSET, so every member gets one copy from
    their own address, and only the refused one fails."""
    with SMTPSink({"carol@example.com": "550 5.1.1 no such user"}, chunking=True) as sink:
        smtp_config(lst, sink)
        lst.queue(post(), check=0)
        lst.run("send", check=0)
    assert sorted((m[1], m[0]) for m in sink.messages) == [
        (["bob@example.net"], lst.verp("bob@example.net")), (["dave@example.org"], lst.verp("dave@example.org"))]
    assert {a: r["state"] for a, r in ledger(lst).items()} == {"carol@example.com": "failed"}
    st = lst.status()
    assert st["sent"] == 2 and st["failed"] == 1 and st["pending"] == st["deferred"] == 0


def test_a_post_goes_to_the_members_enabled_when_send_reaches_them(lst):
    """No row per member at queue time: who leaves or is disabled before
    `send` gets nothing, who joins after the post was queued does not get it
    either, and `status` counts the members still to be reached as pending."""
    lst.queue(post(), check=0)
    assert lst.status()["pending"] == 3
    lst.run("unsubscribe", "test@lists.example.org", "carol@example.com", check=0)
    lst.run("subscribe", "test@lists.example.org", "erin@example.net", check=0)
    db = lst.db()
    with db:
        db.execute("UPDATE members SET status = 'disabled' WHERE address = 'dave@example.org'")
    assert lst.status()["pending"] == 1
    with SMTPSink() as sink:
        smtp_config(lst, sink)
        lst.run("send", check=0)
    assert [m[1][0] for m in sink.messages] == ["bob@example.net"]
    assert lst.status()["sent"] == 1 and lst.status()["pending"] == 0 and ledger(lst) == {}
    assert [tuple(r) for r in lst.db().execute("SELECT state, member_cursor, sent_count FROM messages")] \
        == [("done", None, 1)]


def test_the_member_cursor_never_passes_a_member_whose_outcome_is_not_in():
    import redsky
    progress = redsky.MemberProgress("")
    progress.taken.extend(["a@x", "b@x", "c@x"])
    row = lambda address, state: ((state, 0, "", 0, 1, address), None)
    progress.done["b@x"] = row("b@x", "sent")
    progress.done["c@x"] = row("c@x", "pending")
    assert progress.advance() == ([], [], 0, "")                     # a@x still in flight
    progress.done["a@x"] = row("a@x", "sent")
    rows, _, sent, cursor = progress.advance()
    assert sent == 2 and [r[0] for r in rows] == ["pending"] and cursor == "c@x"
    progress.exhausted = True
    assert progress.advance()[3] is None                               # every member done


def test_smtp_send_keeps_memory_flat_and_one_row_per_failure_only(lst):
    """A thousand members over CHUNKING: every one delivered once, the
    ledger holds the one failure and the deferral only."""
    db = lst.db()
    with db:
        db.executemany("INSERT INTO members (list_id, address, subscribed) VALUES (1, ?, 0)",
                       [(f"m{i:04}@example.net",) for i in range(1000)])
    replies = {"m0500@example.net": "550 5.1.1 gone", "m0700@example.net": "451 4.3.0 try later"}
    with SMTPSink(replies, chunking=True) as sink:
        smtp_config(lst, sink, smtp_connections="3")
        lst.queue(post(), check=0)
        lst.run("send", check=0)
    got = [m[1][0] for m in sink.messages]
    assert len(got) == len(set(got)) == 1003 - 2 and sink.connections == 3
    assert {a: r["state"] for a, r in ledger(lst).items()} == {"m0500@example.net": "failed",
                                                                 "m0700@example.net": "pending"}


@pytest.mark.parametrize("key", ["k", "x" * 64, "y" * 65, "é" * 40])
def test_the_precomputed_hmac_is_rfc_2104_hmac_sha256(key):
    import hashlib
    import hmac
    import redsky
    for message in ("", "bob@example.net", "ünï@example.net"):
        expected = hmac.new(key.encode(), ("list@x|" + message).encode(), hashlib.sha256).hexdigest()
        assert redsky.hmac_after(key, "list@x|")(message) == expected


def test_an_idle_send_writes_no_log_line(lst):
    """Cron runs send every minute: 1,440 lines a day saying 'sent 0' drown what matters."""
    lst.write_config(redsky={"log": "redsky.log"})
    log = lst.home / "redsky.log"
    lst.run("send", check=0)
    lst.run("send", check=0)
    assert "send:" not in log.read_text()
    lst.queue(post(), check=0)
    lst.run("send", check=0)
    assert log.read_text().count("send: sent 3,") == 1
    lst.run("send", "--verbose", check=0)          # --verbose still shows it
    assert "send: sent 0" in log.read_text()
