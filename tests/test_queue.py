"""The queue chain end to end: `redsky.py queue` through the CLI."""


import pytest

from conftest import ledger_view, parse, post
from redsky import RawMessage

MEMBERS = ("bob@example.net", "carol@example.com", "alice@example.org")




def spooled(rs):
    """The bytes of every queued post's spool file."""
    spool = rs.home / "spool"
    return [(spool / r["spool"]).read_bytes() for r in rs.db().execute("SELECT spool FROM messages ORDER BY id")]


def test_post_is_queued_for_every_enabled_member(lst):
    lst.queue(post(), check=0)
    assert ledger_view(lst.db()) == [(a, "pending") for a in sorted(MEMBERS)]
    assert lst.status()["pending"] == 3


def test_untouched_post_keeps_its_bytes_except_list_headers(lst):
    body = b"Line one\n\n.\n..dots\nTrailing spaces   \n\tTab\n\xc3\xa9 8-bit\n"
    original = post(body="") + body
    lst.queue(original, check=0)
    (stored,) = spooled(lst)
    head, sep, rest = stored.partition(b"\n\n")
    assert rest == body                                           # body byte for byte
    assert stored.startswith(original.split(b"\n\n")[0] + b"\n")  # original fields first, unchanged
    msg = parse(stored)
    assert msg["List-Id"] == "<test.lists.example.org>"
    assert msg["List-Post"] == "<mailto:test@lists.example.org>"
    assert msg["List-Unsubscribe"] == "<mailto:test-leave@lists.example.org>"
    assert msg["List-Subscribe"] == "<mailto:test-join@lists.example.org>"
    assert msg["List-Help"] == "<mailto:test-request@lists.example.org?subject=help>"
    assert msg["List-Owner"] == "<mailto:test-owner@lists.example.org>"
    assert msg["Precedence"] == "list" and msg["X-Loop"] == "test@lists.example.org"


def test_incoming_trace_headers_are_not_distributed(lst):
    extra = ("Return-Path: <alice@example.org>\nDelivered-To: test@lists.example.org\n"
             "X-Original-To: test@lists.example.org\nList-Id: <other.example.com>\n")
    lst.queue(post(extra=extra), check=0)
    msg = parse(spooled(lst)[0])
    assert msg["Return-Path"] is None and msg["Delivered-To"] is None and msg["X-Original-To"] is None
    assert msg.get_all("List-Id") == ["<test.lists.example.org>"]


def test_message_id_added_when_missing(lst):
    data = b"From: alice@example.org\nSubject: no id\n\nbody\n"
    lst.queue(data, check=0)
    assert parse(spooled(lst)[0])["Message-ID"].endswith("@lists.example.org>")


def test_tag_and_footer_applied(lst):
    lst.run("set", "test@lists.example.org", "subject_tag", "[test]", check=0)
    lst.run("set", "test@lists.example.org", "footer", "-- \\nTo leave: $unsubscribe", check=0)
    lst.queue(post(subject="=?utf-8?q?Gr=C3=BC=C3=9Fe?="), check=0)
    msg = parse(spooled(lst)[0])
    assert msg["Subject"] == "[test] Grüße"
    assert msg.get_content().endswith("Hello list.\n-- \nTo leave: mailto:test-leave@lists.example.org\n")


# -- envelope recipient and sender ------------------------------------------------

@pytest.mark.parametrize("how", ["ORIGINAL_RECIPIENT", "RECIPIENT", "X-Original-To", "Delivered-To"])
def test_envelope_recipient_sources(lst, how):
    env, extra = {}, ""
    if how in ("ORIGINAL_RECIPIENT", "RECIPIENT"):
        env[how] = "TEST@Lists.Example.ORG"
    else:
        extra = f"{how}: test@lists.example.org\n"
    lst.queue(post(extra=extra), recipient=None, env=env, check=0)
    assert lst.status()["pending"] == 3


def test_recipient_precedence(lst):
    # --recipient wins over the environment and headers
    r = lst.queue(post(extra="X-Original-To: nosuch@lists.example.org\n"),
                  env={"ORIGINAL_RECIPIENT": "nosuch2@lists.example.org"})
    assert r.returncode == 0
    r = lst.queue(post(extra="X-Original-To: test@lists.example.org\n"), recipient=None,
                  env={"ORIGINAL_RECIPIENT": "nosuch@lists.example.org"})
    assert r.returncode == 67


def test_no_recipient_at_all_is_bad_data(lst):
    r = lst.queue(post(), recipient=None)
    assert r.returncode == 65 and "envelope recipient" in r.err


def test_mbox_from_line_is_stripped_and_gives_the_sender(lst):
    lst.run("set", "test@lists.example.org", "access", "subscribers", check=0)
    data = b"From bob@example.net Wed Nov 25 10:00:00 2026\n" + post(sender="someone@else.org")
    lst.queue(data, sender=None, check=0)
    stored = spooled(lst)[0]
    assert stored.startswith(b"From: Alice <someone@else.org>")
    assert lst.status()["held"] == 0          # envelope sender bob is a member


# -- getinfo -------------------------------------------------------------------

def test_unknown_list_exits_67(lst):
    r = lst.queue(post(), recipient="nosuch@lists.example.org")
    assert r.returncode == 67 and "no list" in r.err
    assert lst.queue(post(), recipient="test@other.example.org").returncode == 67
    assert lst.queue(post(), recipient="not-an-address").returncode == 67


def test_list_address_is_case_insensitive(lst):
    lst.queue(post(), recipient="Test@LISTS.Example.Org", check=0)
    assert lst.status()["pending"] == 3


# -- loopdetect ------------------------------------------------------------------

@pytest.mark.parametrize("extra", [
    "List-Id: Test list <test.lists.example.org>\n",
    "X-Loop: test@lists.example.org\n",
    "Received: from x by y\n" * 31,
    "Auto-Submitted: auto-replied\n",
    "Auto-Submitted: auto-generated; type=vacation\n",
    "Content-Type: multipart/report; report-type=delivery-status; boundary=x\n",
])
def test_loops_and_robots_are_discarded(lst, extra):
    r = lst.queue(post(extra=extra))
    assert r.returncode == 0
    assert lst.status()["pending"] == 0 and lst.status()["held"] == 0
    assert "discard" in r.err


def test_null_sender_post_is_discarded_but_30_received_pass(lst):
    assert lst.queue(post(), sender="<>").returncode == 0
    assert lst.status()["pending"] == 0
    lst.queue(post(extra="Received: from x by y\n" * 30 + "Auto-Submitted: no\n"), check=0)
    assert lst.status()["pending"] == 3


def test_max_received_is_configurable(lst):
    lst.write_config(queue={"max_received": "2"})
    lst.queue(post(extra="Received: a\nReceived: b\nReceived: c\n"), check=0)
    assert lst.status()["pending"] == 0


# -- access ----------------------------------------------------------------------

def test_subscribers_mode_holds_non_members(lst):
    r = lst.queue(post(sender="stranger@evil.example"), sender="stranger@evil.example")
    assert r.returncode == 0
    st = lst.status()
    assert st["pending"] == 0 and st["held"] == 1
    held = lst.run("held", "--json", check=0).out
    assert "stranger@evil.example is not a member" in held


def test_subscribers_mode_accepts_member_in_from_sender_or_envelope(lst):
    lst.queue(post(sender="bob@EXAMPLE.NET", msgid="<m1@x.org>"), sender="x@y.org", check=0)           # From
    lst.queue(post(sender="x@y.org", extra="Sender: carol@example.com\n", msgid="<m2@x.org>"), sender="x@y.org",
              check=0)
    lst.queue(post(sender="x@y.org", msgid="<m3@x.org>"), sender="alice@example.org", check=0)         # envelope
    assert lst.status()["held"] == 0 and lst.status()["queued_posts"] == 3


def test_open_mode(lst):
    lst.run("set", "test@lists.example.org", "access", "open", check=0)
    lst.queue(post(sender="stranger@evil.example"), sender="stranger@evil.example", check=0)
    assert lst.status()["queued_posts"] == 1


def test_acl_mode(lst):
    lst.run("set", "test@lists.example.org", "access", "acl", check=0)
    lst.run("acl", "test@lists.example.org", "add", "*@partner.example", "boss@corp.example", check=0)
    assert lst.run("acl", "test@lists.example.org", check=0).out.split() == ["*@partner.example", "boss@corp.example"]
    for sender, held in (("anyone@partner.example", 0), ("boss@corp.example", 0),
                         ("bob@example.net", 1), ("x@sub.partner.example", 2)):
        lst.queue(post(sender=sender, subject=sender), sender=sender, check=0)
        assert lst.status()["held"] == held, sender


def test_passphrase_mode_header_and_body_line(lst):
    lst.run("set", "test@lists.example.org", "passphrase", "open sesame", check=0)
    lst.run("set", "test@lists.example.org", "access", "passphrase", check=0)
    lst.queue(post(subject="no pass"), check=0)
    lst.queue(post(subject="wrong", extra="Approved: guess\n"), check=0)
    assert lst.status()["held"] == 2
    lst.queue(post(subject="header", extra="Approved: open sesame\n"), check=0)
    lst.queue(post(subject="body", body="Approved: open sesame\n\nThe real text.\n"), check=0)
    assert lst.status()["queued_posts"] == 2
    for data in spooled(lst):
        assert b"open sesame" not in data and b"Approved" not in data
    assert spooled(lst)[1].endswith(b"\n\nThe real text.\n")
    # the passphrase is not stored in clear anywhere in the database
    assert b"open sesame" not in (lst.home / "redsky.db").read_bytes()


def test_wrong_approved_header_is_stripped_before_holding_and_release(lst):
    lst.run("set", "test@lists.example.org", "passphrase", "pw", check=0)
    lst.run("set", "test@lists.example.org", "access", "moderated", check=0)
    lst.queue(post(extra="Approved: not-it\n"), check=0)
    assert lst.status()["held"] == 1
    lst.run("approve", "1", check=0)
    (data,) = spooled(lst)
    assert b"not-it" not in data


def test_moderated_mode_holds_everything_but_passphrase(lst):
    lst.run("set", "test@lists.example.org", "access", "moderated", check=0)
    lst.queue(post(sender="bob@example.net"), sender="bob@example.net", check=0)
    assert lst.status()["held"] == 1 and lst.status()["queued_posts"] == 0


def test_held_post_approve_and_reject(lst):
    lst.queue(post(sender="x@y.org", subject="one"), sender="x@y.org", check=0)
    lst.queue(post(sender="x@y.org", subject="two"), sender="x@y.org", check=0)
    listing = lst.run("held", check=0).out
    assert "'one'" in listing and "'two'" in listing and "not a member" in listing
    r = lst.run("approve", "1", check=0)
    assert "3 recipients" in r.out
    lst.run("reject", "2", "--reason", "off topic", check=0)
    st = lst.status()
    assert st["held"] == 0 and st["queued_posts"] == 2 and st["pending"] == 4
    assert lst.run("approve", "2").returncode == 65
    post_copy, notice = spooled(lst)
    assert parse(post_copy)["Subject"] == "one"
    notice = parse(notice)          # the sender is told why, by a robot-marked notice
    assert notice["To"] == "x@y.org" and notice["Auto-Submitted"] == "auto-replied"
    assert "off topic" in notice.get_content()


def test_discard_drops_silently(lst):
    lst.queue(post(sender="x@y.org"), sender="x@y.org", check=0)
    lst.run("send", check=0)
    notified = lst.sent_to()                        # the moderators' notice, if the list has owners
    lst.run("discard", "1", check=0)
    status = lst.status()
    assert status["held"] == 0 and status["queued_posts"] == 0 and status["pending"] == 0
    lst.run("send", check=0)
    assert lst.sent_to() == notified and "x@y.org" not in lst.sent_to()
    assert lst.run("approve", "1").returncode == 65         # gone for good


# -- queuer ----------------------------------------------------------------------

def test_no_members_is_discarded_and_nothing_spooled(rs):
    rs.newlist("empty@lists.example.org")
    rs.queue(post(), recipient="empty@lists.example.org", check=0)
    assert rs.status()["queued_posts"] == 0
    assert not list((rs.home / "spool").glob("*.eml"))


def test_disabled_members_get_nothing(lst):
    with lst.db() as db:
        db.execute("UPDATE members SET status = 'disabled' WHERE address = 'bob@example.net'")
    lst.queue(post(), check=0)
    rows = [address for address, _ in ledger_view(lst.db())]
    assert "bob@example.net" not in rows and len(rows) == 2


def test_spool_file_is_private_and_complete(lst):
    lst.queue(post(), check=0)
    (f,) = (lst.home / "spool").glob("*.eml")
    assert f.stat().st_mode & 0o007 == 0          # umask 007: no access for others
    assert not list((lst.home / "spool" / "tmp").iterdir())


def test_receipt_requests_do_not_leak_to_members(lst):
    extra = "Disposition-Notification-To: alice@example.org\nReturn-Receipt-To: alice@example.org\n"
    lst.queue(post(sender="bob@example.net", extra=extra), sender="bob@example.net", check=0)
    msg = parse(spooled(lst)[0])
    assert msg["Disposition-Notification-To"] is None and msg["Return-Receipt-To"] is None


def test_dkim_signed_fields_and_body_untouched_without_tag_and_footer(lst):
    signature = ("DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.org; s=s1;\n"
                 "\th=from:to:subject:date:message-id:mime-version:content-type; bh=AAAA; b=BBBB\n")
    head = ("From: Bob <bob@example.net>\nTo: test@lists.example.org\nSubject: Signed\nDate: Wed, 25 Nov 2026 10:00:00 +0000\n"
            "Message-ID: <signed@example.net>\nMIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n")
    body = "Signed body.\n\n-- \nBob\n"
    lst.queue((signature + head + "\n" + body).encode(), sender="bob@example.net", check=0)
    stored = spooled(lst)[0]
    original = RawMessage((signature + head + "\n" + body).encode())
    copy = RawMessage(stored)
    for name in ("DKIM-Signature", "From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type"):
        assert [f for f in copy.fields if copy.name_of(f) == name.lower()] == \
            [f for f in original.fields if original.name_of(f) == name.lower()], name
    assert copy.body == body.encode()


# -- layers: the envelope comes from the command layer, storage errors from the store ------

def test_read_takes_the_envelope_from_the_context_never_from_the_process(monkeypatch):
    import redsky
    monkeypatch.setenv("ORIGINAL_RECIPIENT", "env@lists.example.org")
    monkeypatch.setenv("SENDER", "env-sender@example.org")
    ctx = redsky.Context(redsky.Config(None))
    ctx.raw = b"X-Original-To: header@lists.example.org\nReturn-Path: <hdr@example.org>\n\nbody\n"
    redsky.read(ctx)
    assert (ctx.recipient, ctx.sender) == ("header@lists.example.org", "hdr@example.org")
    # the command layer reads the pipe's environment, the command line first
    env = {"ORIGINAL_RECIPIENT": "orig@lists.example.org", "RECIPIENT": "rcpt@lists.example.org", "SENDER": "",
           "CLIENT_ADDRESS": "192.0.2.7"}
    ctx = redsky.envelope_of(redsky.Context(redsky.Config(None)), None, None, None, env=env)
    assert (ctx.recipient, ctx.sender, ctx.client_address) == ("orig@lists.example.org", "", "192.0.2.7")
    ctx = redsky.envelope_of(redsky.Context(redsky.Config(None)), "cli@lists.example.org", "a@b.example", None,
                             env=env)
    assert (ctx.recipient, ctx.sender) == ("cli@lists.example.org", "a@b.example")


def test_the_outbox_raises_a_store_error_and_leaves_nothing_behind(tmp_path):
    import redsky
    store = redsky.Store(str(tmp_path / "db" / "redsky.db"), create=True)
    not_a_dir = tmp_path / "spool"
    not_a_dir.write_text("a file where the spool should be")
    outbox = redsky.Outbox()
    outbox.add(1, "notice", "<n@x>", b"Subject: x\n\nx\n", ["a@example.org"])
    with pytest.raises(redsky.StoreError) as caught:
        outbox.commit(store, str(not_a_dir))
    assert not isinstance(caught.value, redsky.Verdict) and caught.value.code == 75
    assert store.q("status_counts").fetchone()[0] == 0
    store.close()


def test_a_store_error_in_a_filter_is_try_later(lst):
    (lst.home / "spool").rename(lst.home / "spool.away")
    (lst.home / "spool").write_text("not a directory")
    r = lst.queue(post())
    assert r.returncode == 75 and "try-later" in r.err and "cannot write spool file" in r.err


def test_a_post_without_date_gets_one(lst):
    """RFC 5322 3.6 requires Date: a post without one gets the time it was queued."""
    from email.utils import parsedate_to_datetime
    import time
    data = post(subject="no date").replace(b"Date: Wed, 25 Nov 2026 10:00:00 +0000\n", b"")
    assert b"Date:" not in data
    before = time.time()
    lst.queue(data, check=0)
    (queued,) = spooled(lst)
    dates = [line for line in queued.split(b"\n\n")[0].split(b"\n") if line.startswith(b"Date:")]
    assert len(dates) == 1
    assert abs(parsedate_to_datetime(dates[0][5:].decode().strip()).timestamp() - before) < 60
    lst.queue(post(subject="dated"), check=0)
    assert spooled(lst)[1].count(b"Date: Wed, 25 Nov 2026 10:00:00 +0000") == 1     # a Date is kept as it is


@pytest.mark.parametrize("field", [b"Subject     : ", b"Subject\t: ", b"SUBJECT :", b"subject:", b"Subject : \n "])
@pytest.mark.parametrize("tag", ["[t]", "[t %d]"])
def test_obsolete_header_syntax_gets_the_tag_once(lst, field, tag):
    """RFC 5322 4.5 obsolete syntax (white space before the colon, folding right after it) is
    still a Subject: the copy is tagged once, the tag is not added again to a reply, and the
    copy is written in today's syntax, which every mail client reads (Python's email package
    saw no Subject at all in `Subject     : ...`)."""
    for key, value in (("subject_tag", tag), ("footer", "-- \nthe list"), ("filter_content", "yes"),
                       ("convert_html_to_plaintext", "yes")):
        lst.run("set", "test@lists.example.org", key, value, check=0)
    for n, subject in enumerate((b"hello there", b"Re: " + tag.replace("%d", "1").encode() + b" hello")):
        data = (b"From: alice@example.org\nTo: test@lists.example.org\n" + field + subject +
                b"\nMessage-ID: <obs%d@example.org>\n\nbody\n" % n)
        lst.queue(data, check=0)
    lst.run("send", check=0)
    subjects = sorted({" ".join(str(parse(data)["Subject"]).split()) for argv, data in lst.sent()})
    if "%d" in tag:                 # a numbered tag goes first, with the post's own number
        assert subjects == ["[t 1] hello there", "[t 2] Re: hello"], subjects
    else:
        assert subjects == ["Re: [t] hello", "[t] hello there"], subjects
