"""The archive (per list, maildir or mbox; `archive`, `archive export`,
List-Archive, index/get by email) and digests (MIME and RFC 1153)."""

import email
import json
import mailbox
from email import policy

import pytest

from conftest import parse, post, request

LIST = "test@lists.example.org"
LIST_OPTIONS = ("--access", "open")                 # the `team` fixture: this list, DMARC rewriting off
MEMBERS = ("bob@example.net", "dana@example.net", "erin@example.net")


def posts_with_attachment(n):
    """n posts; the third carries a binary attachment."""
    out = []
    for i in range(1, n + 1):
        if i == 3:
            out.append((f"From: Zoë <zoe@example.org>\nTo: {LIST}\nSubject: =?utf-8?q?Caf=C3=A9_{i}?=\n"
                        f"Message-ID: <p{i}@example.org>\nDate: Wed, 2{i} Nov 2026 10:00:00 +0000\nMIME-Version: 1.0\n"
                        "Content-Type: multipart/mixed; boundary=XYZ\n\n--XYZ\nContent-Type: text/plain; charset=utf-8\n"
                        "Content-Transfer-Encoding: 8bit\n\nthe plan, attached: café\n--XYZ\n"
                        "Content-Type: application/octet-stream; name=plan.bin\nContent-Transfer-Encoding: base64\n\n"
                        "AAECAwQFBgcICQoL/w==\n--XYZ--\n").encode())
        else:
            out.append(post(subject=f"Post {i}", body=f"Body of post {i}, word{i}.\n", msgid=f"<p{i}@example.org>",
                            sender="alice@example.org").replace(b"25 Nov", f"2{i} Nov".encode()))
    return out


# --- archive -----------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["maildir", "mbox"])
def test_archive_round_trip(team, fmt):
    team.write_config(archive={"format": fmt})
    for data in posts_with_attachment(5):
        team.queue(data, check=0)
    listing = team.run("archive", LIST, check=0).out.splitlines()
    assert [line.split()[0] for line in listing] == ["1", "2", "3", "4", "5"]
    assert "Café 3" in listing[2] and "Post 5" in listing[4]
    found = json.loads(team.run("archive", LIST, "--search", "WORD4", "--json", check=0).out)
    assert [p["number"] for p in found] == [4]
    assert [p["number"] for p in json.loads(team.run("archive", LIST, "--search", "café", "--json", check=0).out)] == [3]
    since = json.loads(team.run("archive", LIST, "--since", "2026-11-24", "--json", check=0).out)
    assert [p["number"] for p in since] == [4, 5]
    out = team.home / "export.mbox"
    team.run("archive", "export", LIST, "--output", str(out), check=0)
    box = mailbox.mbox(str(out))
    messages = list(box)
    assert [m["Message-ID"] for m in messages] == [f"<p{i}@example.org>" for i in range(1, 6)]
    attachment = [p for p in messages[2].walk() if p.get_filename() == "plan.bin"][0]
    assert attachment.get_payload(decode=True) == bytes(range(12)) + b"\xff"
    assert messages[0]["List-Id"] == "<test.lists.example.org>"        # the copy as distributed
    # export to stdout is the same mbox
    assert team.run("archive", "export", LIST, check=0).stdout == out.read_bytes()


def test_archive_is_the_distributed_copy_and_off_stores_nothing(team):
    team.run("set", LIST, "subject_tag", "[t]", check=0)
    team.queue(post(subject="one"), check=0)
    team.run("set", LIST, "archive", "off", check=0)
    team.queue(post(subject="two"), check=0)
    listing = team.run("archive", LIST, check=0).out
    assert "[t] one" in listing and "two" not in listing


def test_archive_usage_errors(team):
    assert team.run("archive", "export").returncode == 64
    assert team.run("archive", "nosuch@lists.example.org").returncode == 67
    assert team.run("archive", LIST, "--since", "yesterday").returncode == 64
    assert team.run("set", LIST, "archive", "everyone").returncode == 64
    assert team.run("set", LIST, "archive_url", "javascript:alert(1)").returncode == 65


def test_list_archive_header_only_with_a_url_and_an_archive(team):
    team.queue(post(subject="a"), check=0)
    team.run("set", LIST, "archive_url", "https://lists.example.org/archive/test/", check=0)
    team.queue(post(subject="b"), check=0)
    team.run("set", LIST, "archive", "off", check=0)
    team.queue(post(subject="c"), check=0)
    team.run("send", check=0)
    headers = {parse(d)["Subject"]: parse(d)["List-Archive"] for _, d in team.sent()}
    assert headers == {"a": None, "b": "<https://lists.example.org/archive/test/>", "c": None}


def test_a_broken_archive_never_stops_a_post(team):
    (team.home / "archive").write_text("not a directory")
    r = team.queue(post())
    assert r.returncode == 0 and "cannot archive" in r.err
    team.run("send", check=0)
    assert len(team.sent()) == 3


@pytest.mark.parametrize("policy_, member_ok, stranger_ok", [("public", True, True), ("private", True, False),
                                                            ("off", False, False)])
def test_index_and_get_by_email_follow_the_archive_policy(team, policy_, member_ok, stranger_ok):
    for data in posts_with_attachment(3):
        team.queue(data, check=0)
    team.run("send", check=0)
    before = len(team.sent())
    team.run("set", LIST, "archive", policy_, check=0)
    for sender, ok in (("bob@example.net", member_ok), ("stranger@example.com", stranger_ok)):
        request(team, "index", sender).check_returncode()
        request(team, "get 3", sender).check_returncode()
    team.run("send", check=0)
    replies = {}
    for argv, data in team.sent()[before:]:
        replies.setdefault(argv[-1], []).append(email.message_from_bytes(data, policy=policy.default))
    for sender, ok in (("bob@example.net", member_ok), ("stranger@example.com", stranger_ok)):
        index, got = replies[sender]
        if ok:
            assert "archive index" in index["Subject"] and "Café 3" in index.get_body().get_content()
            attached = [p for p in got.iter_attachments()][0].get_content()
            assert attached["Message-ID"] == "<p3@example.org>"
            assert [p for p in attached.walk() if p.get_filename() == "plan.bin"]
        else:
            assert "members only" in index.get_body().get_content() or "is off" in index.get_body().get_content()
            assert not list(got.iter_attachments())


def test_get_a_post_that_is_not_there(team):
    team.run("set", LIST, "archive", "public", check=0)
    request(team, "get 42", "bob@example.net").check_returncode()
    team.run("send", check=0)
    (reply,) = [parse(d) for argv, d in team.sent() if argv[-1] == "bob@example.net"]
    assert "no post number 42" in reply.get_body().get_content()


# --- digest ------------------------------------------------------------------------------

def digests(rs, address):
    return [email.message_from_bytes(d, policy=policy.default) for argv, d in rs.sent()
            if argv[-1] == address and "Digest" in parse(d)["Subject"]]


def test_five_posts_one_mime_digest_with_all_five_intact(team):
    team.run("set-member", LIST, "dana@example.net", "digest", "on", check=0)
    team.run("set-member", LIST, "erin@example.net", "digest", "on", check=0)
    originals = posts_with_attachment(5)
    for data in originals:
        team.queue(data, check=0)
    team.run("send", check=0)                       # not due yet: 30 KB / one day
    assert digests(team, "dana@example.net") == []
    assert sorted(team.sent_to()) == ["bob@example.net"] * 5    # regular member: every post, once
    with team.db() as db:                           # a day later
        db.execute("UPDATE digest_posts SET received = received - 86401")
    team.run("send", check=0)
    for member in ("dana@example.net", "erin@example.net"):
        (digest,) = digests(team, member)
        assert digest["Subject"] == "test Digest, Vol 1, Issue 1"
        assert digest.get_content_type() == "multipart/mixed"
        masthead, toc, bundle = list(digest.iter_parts())[:3]
        assert "Today's Topics (5 messages)" == toc["Content-Description"]
        assert "3. Café 3 (Zoë <zoe@example.org>)" in toc.get_content()
        assert bundle.get_content_type() == "multipart/digest"
        inner = [p.get_content() for p in bundle.iter_parts()]
        assert [m["Message-ID"] for m in inner] == [f"<p{i}@example.org>" for i in range(1, 6)]
        plan = [p for p in inner[2].walk() if p.get_filename() == "plan.bin"][0]
        assert plan.get_content() == bytes(range(12)) + b"\xff"
        assert "List-Unsubscribe" in digest and "leave+" in digest["List-Unsubscribe"]
    assert team.sent_to().count("bob@example.net") == 5          # no digest for a regular member
    team.run("send", check=0)
    assert len(digests(team, "dana@example.net")) == 1          # sent once


def test_numbering_and_size_threshold(team):
    team.run("set-member", LIST, "dana@example.net", "digest", "on", check=0)
    team.run("set", LIST, "digest_size_threshold", "2", check=0)
    for n in range(1, 4):
        team.queue(post(subject=f"big {n}", body="x" * 2500 + "\n"), check=0)
        team.run("send", check=0)
    assert [d["Subject"] for d in digests(team, "dana@example.net")] == [
        "test Digest, Vol 1, Issue 1", "test Digest, Vol 1, Issue 2", "test Digest, Vol 1, Issue 3"]
    with team.db() as db:                           # the last digest went out last year
        db.execute("UPDATE lists SET digest_last = digest_last - 366 * 86400")
    team.queue(post(subject="new year", body="x" * 2500 + "\n"), check=0)
    team.run("send", check=0)
    assert digests(team, "dana@example.net")[-1]["Subject"] == "test Digest, Vol 2, Issue 1"


def test_plain_rfc1153_digest(team):
    team.run("set-member", LIST, "dana@example.net", "digest", "on", check=0)
    team.run("set", LIST, "digest_format", "plain", check=0)
    team.run("set", LIST, "digest_interval", "1s", check=0)
    for data in posts_with_attachment(3):
        team.queue(data, check=0)
    team.queue(post(subject="sneaky", body="above\n" + "-" * 30 + "\nbelow\n"), check=0)
    import time
    time.sleep(1.1)
    team.run("send", check=0)
    (digest,) = digests(team, "dana@example.net")
    assert digest.get_content_type() == "text/plain"
    text = digest.get_content()
    topics, rest = text.split("\n" + "-" * 70 + "\n\n", 1)
    assert "Today's Topics:" in topics and "3. Café 3 (Zoë <zoe@example.org>)" in topics
    messages = rest.split("\n" + "-" * 30 + "\n\n")
    assert messages[0].startswith("Date: Wed, 21 Nov 2026 10:00:00 +0000\nFrom: Alice <alice@example.org>\nSubject: Post 1\n")
    assert "the plan, attached: café" in messages[2] and "[attachment not included: plan.bin" in messages[2]
    assert " " + "-" * 30 + "\nbelow" in messages[3]              # a separator lookalike is escaped
    assert messages[-1].strip().splitlines() == ["End of test Digest, Vol 1, Issue 1",
                                                 "*" * len("End of test Digest, Vol 1, Issue 1")]


def test_digest_only_list_queues_no_single_copies(rs):
    rs.newlist(LIST, "--access", "open", members=("dana@example.net",))
    rs.run("set", LIST, "dmarc", "never", check=0)
    rs.run("set-member", LIST, "dana@example.net", "digest", "on", check=0)
    r = rs.queue(post())
    assert r.returncode == 0 and "discard" not in r.err.lower()
    rs.run("send", check=0)
    assert rs.sent() == []
    assert rs.db().execute("SELECT count(*) FROM digest_posts").fetchone()[0] == 1


def test_set_digest_by_email(team):
    request(team, "set digest on", "bob@example.net").check_returncode()
    assert team.members(LIST)["bob@example.net"]["digest"] is False     # it delays bob's mail: he confirms
    team.run("send", check=0)
    (confirmation,) = [parse(d) for argv, d in team.sent() if argv[-1] == "bob@example.net"]
    request(team, confirmation["Subject"], "bob@example.net").check_returncode()
    assert team.members(LIST)["bob@example.net"]["digest"] is True
    request(team, "set digest off", "bob@example.net").check_returncode()
    assert team.members(LIST)["bob@example.net"]["digest"] is False
    request(team, "set digest on", "stranger@example.com").check_returncode()
    request(team, "set digest sometimes", "dana@example.net").check_returncode()
    assert team.members(LIST)["dana@example.net"]["digest"] is False
    team.run("send", check=0)
    by = {}
    for argv, d in team.sent():
        by.setdefault(argv[-1], []).append(parse(d)["Subject"])
    assert by["bob@example.net"][1:] == [f"{LIST}: digest on", f"{LIST}: digest off"]
    on = [parse(d) for argv, d in team.sent() if parse(d)["Subject"] == f"{LIST}: digest on"][0]
    assert "sent when 30 KB of posts are waiting, or 1 day after the last one" in on.get_body().get_content()
    assert by["stranger@example.com"] == [f"{LIST}: not subscribed"]
    assert by["dana@example.net"] == [f"{LIST}: help"]


def test_set_member_cli_errors(team):
    assert team.run("set-member", LIST, "nobody@example.net", "digest", "on").returncode == 65
    assert team.run("set-member", LIST, "bob@example.net", "digest", "maybe").returncode == 64
    assert team.run("set", LIST, "digest_interval", "soon").returncode == 64
    assert team.run("set", LIST, "digest_size_threshold", "0").returncode == 64


def test_leaving_digest_mode_delivers_the_waiting_posts_singly(team):
    team.run("set-member", LIST, "dana@example.net", "digest", "on", check=0)
    team.run("set-member", LIST, "erin@example.net", "digest", "on", check=0)
    for n in (1, 2):
        team.queue(post(subject=f"waiting {n}"), check=0)
    assert team.status()["digest_posts"] == 2
    team.run("set-member", LIST, "dana@example.net", "digest", "off", check=0)      # by the CLI
    request(team, "set digest off", "erin@example.net").check_returncode()          # by email
    team.run("send", check=0)
    for member in ("dana@example.net", "erin@example.net"):
        got = sorted(parse(d)["Subject"] for argv, d in team.sent() if argv[-1] == member)
        assert [g for g in got if g.startswith("waiting")] == ["waiting 1", "waiting 2"], member
    with team.db() as db:                           # the digest would be due now: nobody is left for it
        db.execute("UPDATE digest_posts SET received = received - 86401")
    team.run("send", check=0)
    assert digests(team, "dana@example.net") == [] and team.status()["digest_posts"] == 0


ODD_POSTS = [
    b"From: a@example.org\nTo: test@lists.example.org\n\nno subject, no date\n",
    b"From: a@example.org\nSubject: broken\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=q\n\n--q\n"
    b"Content-Type: text/plain; charset=x-unknown-charset\n\n\xff\xfe text\n",
    b"From: J\xfcrgen <a@example.org>\nSubject: Gr\xfc\xdfe\nContent-Type: text/plain; charset=latin-1\n\n\xe9t\xe9\n",
    b"From: a@example.org\r\nSubject: crlf\r\n\r\nline one\r\n--===============redsky-lookalike==\r\n",
    b"From: a@example.org\nSubject: b64\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64\n\n"
    b"!!!not base64!!!\n",
]


@pytest.mark.parametrize("fmt", ["mime", "plain"])
def test_odd_posts_make_a_digest_without_stopping_send(team, fmt):
    team.run("set-member", LIST, "dana@example.net", "digest", "on", check=0)
    team.run("set", LIST, "digest_format", fmt, check=0)
    for data in ODD_POSTS:
        team.queue(data, check=0)
    with team.db() as db:
        db.execute("UPDATE digest_posts SET received = received - 86401")
    r = team.run("send", check=0)
    assert "Traceback" not in r.err
    (digest,) = digests(team, "dana@example.net")
    if fmt == "mime":
        bundle = list(digest.iter_parts())[2]
        assert len(list(bundle.iter_parts())) == len(ODD_POSTS)
    else:
        text = digest.get_content()
        assert text.count("\n" + "-" * 30 + "\n") == len(ODD_POSTS)
        assert "(no subject)" in text.split("-" * 70)[0]
    assert team.sent_to().count("bob@example.net") == len(ODD_POSTS)


def test_plain_digest_shows_html_posts_as_text_and_prefers_the_plain_alternative(team):
    team.run("set-member", LIST, "dana@example.net", "digest", "on", check=0)
    team.run("set", LIST, "digest_format", "plain", check=0)
    html_only = (b"From: h@example.org\nSubject: html only\nContent-Type: text/html; charset=utf-8\n\n"
                 b"<html><head><style>p {color: red}</style></head><body><p>Hello &amp; welcome,</p>"
                 b"<p>caf&eacute; at <b>noon</b><br>bring snacks</p><script>alert(1)</script></body></html>\n")
    both = (b"From: h@example.org\nSubject: both\nMIME-Version: 1.0\nContent-Type: multipart/alternative; boundary=a\n\n"
            b"--a\nContent-Type: text/plain\n\nthe plain words\n--a\nContent-Type: text/html\n\n<p>the html words</p>\n"
            b"--a--\n")
    team.queue(html_only, check=0)
    team.queue(both, check=0)
    with team.db() as db:
        db.execute("UPDATE digest_posts SET received = received - 86401")
    team.run("send", check=0)
    (digest,) = digests(team, "dana@example.net")
    text = digest.get_content()
    assert "Hello & welcome,\ncafé at noon\nbring snacks" in text
    assert "<p>" not in text and "color: red" not in text and "alert(1)" not in text
    assert "the plain words" in text and "the html words" not in text
    found = json.loads(team.run("archive", LIST, "--search", "café at noon", "--json", check=0).out)
    assert len(found) == 1


@pytest.mark.parametrize("fmt", ["maildir", "mbox"])
def test_parallel_queue_runs_archive_every_post_once_and_whole(team, fmt):
    from concurrent.futures import ThreadPoolExecutor
    team.write_config(archive={"format": fmt})
    bodies = [f"From: alice@example.org\nSubject: parallel {i}\nMessage-ID: <par{i}@example.org>\n\n"
              + ("From the start, line %d\n" % i) * 50 for i in range(12)]
    with ThreadPoolExecutor(12) as pool:          # twelve processes at once, as the MTA runs them
        results = list(pool.map(lambda b: team.queue(b.encode(), subprocess=True), bodies))
    assert all(r.returncode == 0 for r in results)
    out = team.home / "all.mbox"
    team.run("archive", "export", LIST, "--output", str(out), check=0)
    messages = list(mailbox.mbox(str(out)))
    assert sorted(m["Message-ID"] for m in messages) == sorted(f"<par{i}@example.org>" for i in range(12))
    for m in messages:                   # whole: every line, and "From " at line start survives quoting
        assert m.get_payload().count("From the start, line") == 50


def test_a_hostile_envelope_sender_cannot_break_the_mbox(team):
    team.write_config(archive={"format": "mbox"})
    team.queue(post(subject="first"), sender="evil\nFrom x Mon Jan  1 00:00:00 2024\n@example.org", check=0)
    team.queue(post(subject="second"), sender="a b@example.org", check=0)
    box = mailbox.mbox(str(team.home / "archive" / "test@lists.example.org.mbox"))
    assert [m["Subject"] for m in box] == ["first", "second"]
    assert all(m.get_from().startswith("MAILER-DAEMON ") for m in box)


def test_plain_digest_has_the_footer_once_at_the_end(team):
    """Each post carries the footer as distributed; the RFC 1153 digest shows it once, at the end."""
    team.run("set", LIST, "footer", "Unsubscribe: $unsubscribe", check=0)
    team.run("set-member", LIST, "dana@example.net", "digest", "on", check=0)
    team.run("set", LIST, "digest_format", "plain", check=0)
    team.run("set", LIST, "digest_interval", "1s", check=0)
    for n in range(3):
        team.queue(post(subject=f"footer {n}", body=f"Post number {n}.\n"), check=0)
    import time
    time.sleep(1.1)
    team.run("send", check=0)
    (digest,) = digests(team, "dana@example.net")
    text = digest.get_content()
    assert text.count("Unsubscribe: ") == 1 and all(f"Post number {n}." in text for n in range(3))
    assert text.index("Unsubscribe: ") > text.index("Post number 2.")
