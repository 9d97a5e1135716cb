"""What an outsider who can send any mail to any list address cannot do.

Each test is one attack from the hostile-input review, through the real CLI."""

import base64
import re
import time

import pytest

from conftest import inbox, mail, parse, post

LIST = "test@lists.example.org"
OWNER = "owner@example.org"
LIST_OPTIONS = ("--owner", OWNER)
MEMBERS = ("bob@example.net", "alice@example.org")


# 1. header injection through a display name ------------------------------------------

INJECTIONS = {
    # the review's example: its name also shows an address, so it is held; a moderator approves it
    "review": b"Alice\r\nList-Unsubscribe: <mailto:evil@evil.example>\r\nX-Injected: yes",
    "https": b"Alice\r\nList-Unsubscribe: <https://evil.example/u>\r\nX-Injected: yes",
    "blank-line": b"Alice\r\n\r\nX-Injected: yes",
    "bare-cr": b"Alice\rX-Injected: yes\rList-Unsubscribe: <https://evil.example/u>",
    "nul": b"Alice\x00\nX-Injected: yes",
}


@pytest.mark.parametrize("action", ["munge_from", "wrap_message"])
@pytest.mark.parametrize("name", sorted(INJECTIONS))
def test_a_display_name_cannot_inject_header_fields(lst, action, name):
    lst.run("set", LIST, "dmarc", "always", check=0)
    lst.run("set", LIST, "dmarc_action", action, check=0)
    encoded = base64.b64encode(INJECTIONS[name]).decode()
    data = (f"From: =?us-ascii?b?{encoded}?= <alice@example.org>\nTo: {LIST}\nSubject: hi\n"
            "Message-ID: <inj@example.org>\n\nbody\n").encode()
    lst.queue(data, sender="alice@example.org", check=0)
    if lst.status()["held"]:
        lst.run("approve", "1", check=0)
    lst.run("send", check=0)
    (copy,) = [data for argv, data in lst.sent() if argv[-1] == "bob@example.net"]
    head = copy.split(b"\n\n", 1)[0]
    assert not re.search(rb"(?m)^X-Injected:", head) and b"\r" not in head and b"\0" not in head
    unsubscribe = re.findall(rb"(?m)^List-Unsubscribe: (.*)$", head)
    assert len(unsubscribe) == 1 and b"evil.example" not in unsubscribe[0]
    assert re.search(rb"(?m)^List-Id: <test\.lists\.example\.org>", head)


# 4. passphrase leaks ---------------------------------------------------------------------

def passphrase_post(kind, extra_part=""):
    return (f"From: Stranger <s@example.com>\nTo: {LIST}\nSubject: announce\nMessage-ID: <pw-{kind}@x.org>\n"
            f"MIME-Version: 1.0\nContent-Type: multipart/{kind}; boundary=BB\n\n"
            "--BB\nContent-Type: text/plain\n\nApproved: s3cretPW\n\nHello all.\n"
            "--BB\nContent-Type: text/html\n\n<html><body><p>Approved: s3cretPW</p><p>Hello all.</p></body></html>\n"
            + extra_part + "--BB--\n").encode()


@pytest.mark.parametrize("kind", ["mixed", "alternative"])
def test_the_passphrase_never_reaches_members_or_the_archive(lst, kind):
    lst.run("set", LIST, "passphrase", "s3cretPW", check=0)
    lst.queue(passphrase_post(kind), sender="s@example.com", check=0)
    held = lst.status()["held"]
    if held:                                       # held first: a moderator approves from the CLI
        lst.run("approve", "1", check=0)
    lst.run("send", check=0)
    copies = [data for argv, data in lst.sent() if argv[-1] in MEMBERS]
    assert len(copies) == 2 and all(b"Hello all." in c for c in copies)
    assert all(b"s3cretPW" not in c for c in copies)
    archived = lst.run("archive", "export", LIST).stdout
    assert b"Hello all." in archived and b"s3cretPW" not in archived


def test_a_passphrase_that_cannot_be_removed_refuses_the_approval(lst):
    lst.run("set", LIST, "passphrase", "s3cretPW", check=0)
    hidden = base64.b64encode(b"Approved: s3cretPW\nin an encoded part\n").decode()
    data = passphrase_post("mixed", f"--BB\nContent-Type: text/plain\nContent-Transfer-Encoding: base64\n\n{hidden}\n")
    lst.queue(data, sender="s@example.com", check=0)
    assert lst.status()["held"] == 1
    r = lst.run("approve", "1")
    assert r.returncode != 0 and "passphrase" in r.err
    lst.run("send", check=0)
    assert not [argv for argv, _ in lst.sent() if argv[-1] in MEMBERS]


# 5. two lists feeding each other ---------------------------------------------------------

def test_two_lists_that_subscribe_each_other_cannot_loop(rs):
    rs.write_config(send={"transport": "sendmail"})
    for name in ("alpha", "beta"):
        rs.newlist(f"{name}@lists.example.org", "--access", "open", "--subscribe-policy", "open",
                   "--owner", OWNER, members=("member@example.net",))
    # each list's join address gets a forged request naming the other list
    for a, b in (("alpha", "beta"), ("beta", "alpha")):
        mail(rs, f"{a}-join@lists.example.org", f"{b}@lists.example.org", subject="join")
    for name in ("alpha", "beta"):
        assert f"{'beta' if name == 'alpha' else 'alpha'}@lists.example.org" not in rs.members(f"{name}@lists.example.org")
    # the owners subscribe them by hand anyway: a post stops at the first list it comes back to
    rs.run("subscribe", "alpha@lists.example.org", "beta@lists.example.org", check=0)
    rs.run("subscribe", "beta@lists.example.org", "alpha@lists.example.org", check=0)
    mail(rs, "alpha@lists.example.org", "member@example.net", subject="ping")
    fed = 0
    for _ in range(10):                              # play the MTA: copies for a list go to that list
        rs.run("send", check=0)
        sent = rs.sent()
        for argv, data in sent[fed:]:
            if argv[-1] in ("alpha@lists.example.org", "beta@lists.example.org"):
                rs.queue(data, recipient=argv[-1], sender=argv[argv.index("-f") + 1], check=0)
        if len(sent) == fed:
            break
        fed = len(sent)
    assert [argv[-1] for argv, _ in rs.sent()].count("member@example.net") == 1
    held = rs.run("held", "--json", check=0).out
    assert "subscribed to this one" in held


# 6. rate limits by spelling ----------------------------------------------------------------

def test_rate_limits_count_one_address_however_it_is_spelt(lst):
    lst.write_config(commands={"max_confirmations": "3"})
    for spelling in ("victim@example.org", '"victim"@example.org', '"vic\\tim"@example.org',
                     "victim@EXAMPLE.org", '"victim"@Example.Org'):
        for _ in range(2):
            data = (f"From: {spelling}\nTo: test-join@lists.example.org\nSubject: join\n"
                    f"Message-ID: <{time.time_ns()}@x.org>\n\njoin\n").encode()
            lst.queue(data, recipient="test-join@lists.example.org", sender="mallory@evil.example", check=0)
    lst.run("send", check=0)
    confirmations = [argv[-1] for argv, _ in lst.sent() if argv[-1] != OWNER]    # owners: told once
    subjects = [parse(data)["Subject"] for argv, data in lst.sent() if argv[-1] != OWNER]
    assert confirmations == ["victim@example.org"] * 4      # to one spelling: 3, then "ignored until"
    assert len({s for s in subjects if s.startswith("confirm ")}) == 1 and "ignored until" in subjects[-1]


# 7. auto-replies never confirm ---------------------------------------------------------------

@pytest.mark.parametrize("extra, subject", [
    ("X-Autoreply: yes\n", "Re: confirm"), ("X-Autorespond: yes\n", "Re: confirm"),
    ("X-Vacation: yes\n", "Re: confirm"), ("", "Out of office: confirm"),
    ("", "Automatic reply: confirm"), ("Precedence: auto_reply\n", "Re: confirm"),
    ("List-Id: <other.lists.example.net>\n", "Re: confirm"),
])
def test_an_automatic_reply_never_confirms_a_subscription(lst, extra, subject):
    mail(lst, "test-join@lists.example.org", "new@example.com", subject="join")
    (confirmation,) = inbox(lst, "new@example.com")
    to = re.search(r"<?([^<>\s]+)>?", confirmation["Reply-To"]).group(1)
    mail(lst, to, "new@example.com", subject=subject, extra=extra)
    assert "new@example.com" not in lst.members(LIST)


# 8. the current directory's config ------------------------------------------------------------

def test_a_config_or_plugin_others_can_write_is_refused_and_doctor_says_so(rs):
    rs.config.chmod(0o666)
    for command in (["lists"], ["queue", "--recipient", LIST]):
        r = rs.run(*command, input=post())
        assert r.returncode == 78 and "chmod go-w" in r.err and len(r.err.splitlines()) == 1, command
    r = rs.run("doctor")
    assert r.returncode == 78 and r.out.startswith("FAIL") and "fix: chown root" in r.out
    rs.config.chmod(0o644)
    (rs.home / "evil.py").write_text("import redsky\nopen('pwned', 'w').close()\n")
    (rs.home / "evil.py").chmod(0o664)
    rs.write_config(redsky={"log": "stderr", "plugins": "evil.py"})
    r = rs.run("lists")
    assert r.returncode == 78 and "plugin" in r.err and not (rs.home / "pwned").exists()


# 9. display-name tricks -------------------------------------------------------------------------

@pytest.mark.parametrize("frm", ["alice@example.org <mallory@evil.example>",
                                 '"alice@example.org" <mallory@evil.example>',
                                 "=?utf-8?q?alice=40example=2Eorg?= <mallory@evil.example>"])
def test_a_display_name_that_is_another_address_is_held(lst, frm):
    data = f"From: {frm}\nTo: {LIST}\nSubject: hi\nMessage-ID: <{time.time_ns()}@x.org>\n\nbody\n".encode()
    lst.queue(data, sender="mallory@evil.example", check=0)
    assert lst.status()["held"] == 1
    assert "mallory@evil.example" in lst.run("held", check=0).out


def test_a_display_name_that_is_the_same_address_passes(lst):
    data = (f'From: "alice@example.org" <Alice@Example.org>\nTo: {LIST}\nSubject: hi\n'
            f"Message-ID: <same@x.org>\n\nbody\n").encode()
    lst.queue(data, sender="alice@example.org", check=0)
    assert lst.status()["held"] == 0 and lst.status()["queued_posts"] == 1


# 10. forged leave ------------------------------------------------------------------------------------

@pytest.mark.parametrize("policy", ["open", "confirm"])
def test_leaving_always_needs_the_members_confirmation(lst, policy):
    lst.run("set", LIST, "subscribe_policy", policy, check=0)
    mail(lst, "test-leave@lists.example.org", "bob@example.net", subject="bye")       # forged From
    mail(lst, "test-request@lists.example.org", "bob@example.net", subject="unsubscribe")
    assert "bob@example.net" in lst.members(LIST)
    confirmation, again = inbox(lst, "bob@example.net")     # again the same day: the notice with
    assert "unsubscribe" in confirmation.get_content() and "ignored until" in again["Subject"]
    assert re.search(r"test-leave\+[0-9a-f]{16}@", again.get_content())      # bob's own leave address
    to = re.search(r"<?([^<>\s]+)>?", confirmation["Reply-To"]).group(1)
    mail(lst, to, "bob@example.net", subject="Re: confirm")                         # bob really confirms
    assert "bob@example.net" not in lst.members(LIST)


# 29.5: the public archive shows no address whole, and its search confirms none -------------

PLANTED = ["zqvictim@example.com", "zqtwo@example.org", "zqreply@example.net", "zqcc@example.net",
           "zqquoted@example.net", "zqplain@example.com", "zqjosé@exämple.org", "zqurl@example.com",
           "zqhtml@example.com", "zqmailto@example.com", "zqhref@example.com", "zqfwd@example.com",
           "zqfwdbody@example.com", "zqattached@example.com", "zqattachtext@example.com", "zqfull@example.com",
           "zqcode@example.com"]


def planted_post():
    text = ("On Mon, Quoted Person <zqquoted@example.net> wrote:\n> hi\n"
            "write to zqplain@example.com or zqjosé@exämple.org or \"zq quoted\"@example.com\n"
            "url https://x.example/?u=zqurl%40example.com and ｚｑｆｕｌｌ＠example.com, zqcode&#64;example.com\n")
    html = ('<p>zqhtml&#64;example.com <a href="mailto:zqmailto@example.com">mail</a> '
            '<a href="https://x.example/?e=zqhref@example.com">link</a></p>')
    return (f'From: "zqvictim@example.com" <zqvictim@example.com>\nTo: {LIST}\nReply-To: zqreply@example.net\n'
            'Cc: "Carbon" <zqcc@example.net>\nSubject: =?utf-8?q?Call_zqtwo=40example=2Eorg_now?=\n'
            "Message-ID: <planted@example.org>\nDate: Wed, 25 Nov 2026 10:00:00 +0000\nMIME-Version: 1.0\n"
            "Content-Type: multipart/mixed; boundary=B\n\n--B\nContent-Type: text/plain; charset=utf-8\n"
            "Content-Transfer-Encoding: base64\n\n" + base64.encodebytes(text.encode()).decode() +
            f"--B\nContent-Type: text/html; charset=utf-8\n\n{html}\n--B\nContent-Type: message/rfc822\n\n"
            "From: Forwarded <zqfwd@example.com>\nSubject: fwd\n\nthe body says zqfwdbody@example.com\n"
            '--B\nContent-Type: text/plain; name="zqattached@example.com.txt"\n'
            'Content-Disposition: attachment; filename="zqattached@example.com.txt"\n\n'
            "a text attachment: zqattachtext@example.com\n--B--\n").encode()


def readable(data):
    """The text of a published file as a reader gets it: mail decoded (headers, every part)."""
    import email
    from email import policy
    text = data.decode("utf-8", "replace")
    if re.match(rb"(From |[A-Za-z-]+: )", data):
        for chunk in re.split(rb"\nFrom archive@redsky [^\n]*\n", b"\n" + data):
            msg = email.message_from_bytes(chunk.lstrip(b"\n"), policy=policy.default)
            for part in msg.walk():
                text += "".join(f"\n{k}: {v}" for k, v in part.items())
                payload = part.get_payload(decode=True)
                text += payload.decode("utf-8", "replace") if payload else ""
    return text.lower()


def test_no_published_surface_holds_a_whole_address_and_search_confirms_none(rs):
    from urllib.parse import urlencode
    from conftest import request, wsgi
    rs.newlist(LIST, "--access", "open", members=("bob@example.net",))
    rs.write_config(web={"base_url": "https://lists.example.org/redsky", "search_per_client": "0"})
    rs.run("set", LIST, "archive", "public", check=0)
    rs.run("set", LIST, "dmarc", "never", check=0)

    def searched(**fields):                     # a results page: never a refusal that would hide a leak
        status, _, page = wsgi(rs, f"/archive/{LIST}/search", query=urlencode(fields))
        assert status == 200, page
        return page
    assert rs.queue(planted_post(), sender="zqvictim@example.com").returncode == 0
    surfaces = {str(p): readable(p.read_bytes()) for p in (rs.home / "pages").rglob("*") if p.is_file()}
    assert any(name.endswith(".mbox") for name in surfaces) and any("/att/" in name for name in surfaces)
    queries = ["zq", "call", "zqvictim", "zqvi", "zqv", "zqvictim@example.com", '"zqvictim example com"',
               "from:zqvictim", "subject:zqtwo", "zqjose", "zqfull", "ｚｑｆｕｌｌ"]
    import html
    from urllib.parse import quote_plus
    for q in queries:
        for extra in ({}, {"format": "atom"}):
            page = html.unescape(searched(q=q, **extra))
            for echo in (q, quote_plus(q), html.escape(q)):         # the query itself, as the page repeats it
                page = page.replace(echo, "")
            surfaces[f"search {q} {extra}"] = page.lower()
    request(rs, "get 1\nindex", "stranger@example.com").check_returncode()
    rs.run("send", check=0)
    for argv, data in rs.sent():
        if argv[-1] == "stranger@example.com":
            surfaces[f"mail to a stranger {len(surfaces)}"] = readable(data)
    for address in PLANTED:
        local = address.split("@")[0]
        leaks = [name for name, text in surfaces.items() if local in text]
        assert not leaks, f"{address} whole in {leaks}"
    assert "zq\u2026@example.com" in surfaces[str(rs.home / "pages" / LIST / "1.html")]
    assert "subject: call zq\u2026@example.org now" in surfaces[str(rs.home / "pages" / LIST / "1.eml")]   # decoded
    # the search finds what is published (zq…), and nothing of what is hidden: no oracle
    hits = lambda q: re.findall(r'<li><a href="\d+\.html">', searched(q=q))      # noqa: E731
    assert len(hits("zq")) == 1 and len(hits("example.com")) == 1
    for guess in [f"zq{c}" for c in "abcdefghijklmnopqrstuvwxyz"] + ["zqvictim", "victim", "zqvictim@example.com",
                                                                   "from:zqvictim", "zqjosé", "zqtwo example"]:
        assert hits(guess) == [], guess
    # a member asking gets the post as it was sent to the members
    request(rs, "get 1", "bob@example.net").check_returncode()
    rs.run("send", check=0)
    member = [readable(d) for argv, d in rs.sent() if argv[-1] == "bob@example.net" and b"Post number 1" in d]
    assert member and "zqplain@example.com" in member[0]


SPLITTERS = ["<b></b>", "<!-- x -->", "<wbr>", "<span>s</span>", "&shy;", "&#8203;", "\u200b", "<?x>",
             "</ x>", "<!-->", "<!-- a --!>", '<span style="display:none">zz</span>', "<i\n>", "&#x00AD;"]
ATS = ["@", "&#64", "&#x40;", "&#64;", "\ufe6b", "\uff20", "\u200b@\u200b", "&commat;"]


@pytest.mark.parametrize("n", range(len(SPLITTERS)))
def test_an_address_split_by_markup_entities_or_invisibles_is_hidden_everywhere(rs, n):
    """Hiding an address in an HTML part's source does not hide what a reader sees when markup,
    an entity or an invisible character splits it: every published surface, read as shown."""
    import html
    from urllib.parse import urlencode
    import redsky
    from conftest import request, wsgi
    rs.newlist(LIST, "--access", "open", members=("bob@example.net",))
    rs.write_config(web={"base_url": "https://lists.example.org/redsky", "search_per_client": "0"})
    rs.run("set", LIST, "archive", "public", check=0)
    split, at = SPLITTERS[n], ATS[n % len(ATS)]
    body = (f"<html><body><p>Hello, write to zqhiddenxx.localyy{split}{at}example.com or "
            f"zqotherxx.nameyy{at}{split}example.org, and &lt;zqthirdxx{split}partyy@example.net&gt;</p></body></html>")
    data = (f"From: m@example.org\nTo: {LIST}\nSubject: zqsplit\nMessage-ID: <split{n}@example.org>\n"
            "MIME-Version: 1.0\nContent-Type: multipart/alternative; boundary=B\n\n--B\n"
            "Content-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
            f"{body}\n--B--\n").encode()
    assert rs.queue(data, sender="m@example.org").returncode == 0
    shown = lambda text: redsky.html_shown(text.replace("\u2026", " ")).lower()      # noqa: E731
    surfaces = {str(p): shown(readable(p.read_bytes())) for p in (rs.home / "pages").rglob("*") if p.is_file()}
    for extra in ({}, {"format": "atom"}):
        status, _, page = wsgi(rs, f"/archive/{LIST}/search", query=urlencode({"q": "zqsplit hello", **extra}))
        assert status == 200 and "zqsplit" in page
        surfaces[f"search {extra}"] = shown(html.unescape(page))
    request(rs, "get 1", "stranger@example.com").check_returncode()
    rs.run("send", check=0)
    surfaces.update({f"mail {i}": shown(readable(d)) for i, (argv, d) in enumerate(rs.sent())
                     if argv[-1] == "stranger@example.com"})
    assert "hello, write to" in surfaces[str(rs.home / "pages" / LIST / "1.html")]
    for secret in ("hiddenxx", "localyy", "otherxx", "nameyy", "thirdxx", "partyy"):
        leaks = [name for name, text in surfaces.items() if secret in text]
        assert not leaks, (secret, leaks)


def test_bidirectional_controls_cannot_reorder_what_stands_beside_them(rs):
    rs.newlist(LIST, "--access", "open", members=("bob@example.net",))
    rs.run("set", LIST, "archive", "public", check=0)
    controls = "\u202e\u202d\u202a\u202b\u202c\u2066\u2067\u2068\u2069\u200e\u200f\u061c"
    for n, control in enumerate(controls):
        data = (f"From: =?utf-8?b?{base64.b64encode(f'Mal{control}lory'.encode()).decode()}?= <m@example.org>\n"
                f"To: {LIST}\nSubject: =?utf-8?b?{base64.b64encode(f'{control}txet 2026-11-25'.encode()).decode()}?=\n"
                f"Message-ID: <bidi{n}@example.org>\n\nbody\n").encode()
        assert rs.queue(data, sender="m@example.org").returncode == 0
    for page in (rs.home / "pages" / LIST).rglob("*.html"):
        text = page.read_text()
        assert not set(text) & set(controls), page.name
    month = next((rs.home / "pages" / LIST).glob("20*.html")).read_text()
    assert month.count("<bdi>Mallory</bdi>") == len(controls) and "<bdi>txet 2026-11-25</bdi>" in month


def test_threads_by_subject_confirm_no_hidden_address(rs):
    """A reply without References joins the thread of its subject: a guessed address in a subject
    must join it whether the guess is right or wrong, or the thread links would be an oracle."""
    import json
    rs.newlist(LIST, "--access", "open", members=("bob@example.net",))
    rs.run("set", LIST, "archive", "public", check=0)
    for n, subject in enumerate(["Write to zqsecret@example.org now", "Re: Write to zqwrong@example.org now",
                                 "Re: Write to zqsecret@example.org now", "Re: write to ZQSECRET@example.org now",
                                 "Re: Write to zxsecret@example.org now"]):
        data = f"From: m@example.org\nTo: {LIST}\nSubject: {subject}\nMessage-ID: <g{n}@example.org>\n\nbody\n"
        assert rs.queue(data.encode(), sender="m@example.org").returncode == 0
    threads = [r[0] for r in rs.db().execute("SELECT thread FROM archived_posts ORDER BY number")]
    assert threads == [1, 1, 1, 1, 5], threads          # zx… is another subject as published, zq… one
    pages = json.dumps([p.read_text() for p in (rs.home / "pages" / LIST).glob("*.html")])
    assert "zqsecret" not in pages.lower() and "zqwrong" not in pages.lower()
@pytest.mark.parametrize("char", ["\x0b", "\x0c", "\x1c", "\x1e", "\x85", "\u2028", "\u2029", "\x7f"])
def test_a_quoted_address_with_a_line_breaking_character_is_no_address(rs, char):
    """Such an address went into a notice's To: and the email package refused it: 75 on every
    retry, then the quarantine (and a moderator could never reject the post by email)."""
    import redsky
    sender = f'"a{char}approve"@evil.example'
    assert not redsky.valid_address(sender)
    rs.newlist("test@lists.example.org", "--owner", "owner@example.org", members=("bob@example.net",))
    rs.run("set", "test@lists.example.org", "nonmember_action", "reject", check=0)
    raw = (f"From: {sender}\nTo: test-request@lists.example.org\nSubject: help\nMessage-ID: <q1@x>\n\nhelp\n"
           .encode("utf-8"))
    for to in ("test-request@lists.example.org", "test@lists.example.org", "test-join@lists.example.org"):
        r = rs.queue(raw.replace(b"To: test-request@", b"To: " + to.split("@")[0].encode() + b"@"),
                     recipient=to, sender=sender)
        assert r.returncode in (0, 65), (to, r.err)
        assert "internal error" not in r.err and "Traceback" not in r.err
    rs.run("send", check=0)
    assert all(char not in argv[-1] for argv, _ in rs.sent())


# 11. a forger spends someone's daily allowance (F12) ---------------------------------------------

def subjects_to(rs, address):
    return [m["Subject"] for m in inbox(rs, address)]


def spend(rs, how, victim, count):
    """``count`` requests in ``victim``'s name, each asking for a confirmation, the way ``how`` says."""
    for n in range(count):
        if how == "join":                                   # -join of lists of this host
            name = f"l{n}"
            if not rs.db().execute("SELECT 1 FROM lists WHERE name = ?", (name,)).fetchone():
                rs.newlist(f"{name}@lists.example.org", "--owner", OWNER)
            mail(rs, f"{name}-join@lists.example.org", victim, envelope="mallory@evil.example")
        elif how == "request":                              # the subscribe command, the same list
            mail(rs, "test-request@lists.example.org", victim, subject="subscribe")
        elif how == "set":                                  # a member's option changes
            option = ["set nomail on", "set digest on", "set notmetoo on"][n % 3]
            mail(rs, "test-request@lists.example.org", victim, subject=option, envelope="m@evil.example")


@pytest.mark.parametrize("how", ["join", "request", "set"])
def test_a_spent_allowance_is_told_once_with_until_when_and_the_owners_once_a_day(lst, how):
    """F12: confirmations forged in someone's name used up the daily cap, and then the person's own
    requests got nothing, silently.  Now the address gets one notice saying until when requests in
    its name are ignored, and the owners one notice a day; after the day, requests work again."""
    victim = "bob@example.net" if how == "set" else "vic@example.com"
    spend(lst, how, victim, 7)
    got = subjects_to(lst, victim)
    assert len(got) == 3 + 1 and all(s.startswith("confirm ") for s in got[:3]), got
    until = re.search(r"ignored until (\d{4}-\d\d-\d\d \d\d:\d\d UTC)", got[3]).group(1)
    assert abs(time.mktime(time.strptime(until, "%Y-%m-%d %H:%M UTC")) - time.timezone
               - (time.time() + 86400)) < 120
    text = inbox(lst, victim)[3].get_content()
    assert "If you did not, someone else" in text and until in text
    spend(lst, how, victim, 3)                              # more: nothing, not even another notice
    assert len(subjects_to(lst, victim)) == 4
    refused = [s for s in subjects_to(lst, OWNER) if "requests refused" in s]
    if how != "join":                                       # "join" spends it at lists of their own
        assert refused == [f"{LIST}: requests refused today"]
    assert victim in inbox(lst, OWNER)[-1].get_content()
    lst.db().execute("UPDATE allowances SET since = since - 86400").connection.commit()   # a day later
    spend(lst, how, victim, 1)
    assert subjects_to(lst, victim)[-1].startswith("confirm ")


@pytest.mark.parametrize("asked", ["subscribe", "set nomail on"])
def test_a_request_while_its_confirmation_waits_gets_that_token_again(lst, asked):
    """The forger asked first; the person's own request, which was ignored as a repeat, now brings
    the pending confirmation again (good for confirm_expiry from now), and it works."""
    who = "bob@example.net" if asked.startswith("set") else "new@example.com"
    mail(lst, "test-request@lists.example.org", who, subject=asked, envelope="mallory@evil.example")
    (forged,) = inbox(lst, who)
    lst.db().execute("UPDATE pending SET expires = ?", (time.time() + 60,)).connection.commit()
    mail(lst, "test-request@lists.example.org", who, subject=asked)
    forged, own = inbox(lst, who)
    assert own["Reply-To"] == forged["Reply-To"] and own["Subject"].startswith("confirm ")
    assert lst.db().execute("SELECT expires FROM pending").fetchone()[0] > time.time() + 2 * 86400
    mail(lst, re.search(r"<?([^<>\s]+)>?", own["Reply-To"]).group(1), who, subject="Re: x")
    if who == "bob@example.net":
        assert lst.members(LIST)[who]["status"] == "disabled"
    else:
        assert who in lst.members(LIST)


@pytest.mark.parametrize("spent", ["others", "replies", "one-leave", "leave"])
def test_a_member_can_always_leave_by_mail_whatever_was_sent_in_their_name(lst, spent):
    """The generic LIST-leave@ (List-Unsubscribe of batched copies) asked for a confirmation from the
    same daily cap a forger had spent: the member could not leave.  A member's leave has one
    confirmation a day of its own; past it, the notice that the rest are ignored carries the member's
    own LIST-leave+TOKEN address, which leaves at once: so whatever a forger sent, the member either
    gets something that leaves, or got it today already."""
    lst.run("set", LIST, "subscribe_policy", "open", check=0)
    member = "bob@example.net"
    spend(lst, "join", member, 5)                           # every confirmation of the day, elsewhere
    if spent == "replies":
        for n in range(12):
            mail(lst, "test-request@lists.example.org", member, subject=f"help {n}", envelope="m@evil.example")
    for n in range({"one-leave": 1, "leave": 6}.get(spent, 0)):
        mail(lst, "test-leave@lists.example.org", member, envelope="m@evil.example")
    before = len(inbox(lst, member))
    mail(lst, "test-leave@lists.example.org", member)      # the member, really
    got = inbox(lst, member)
    leave_confirmations = [m for m in got if "unsubscribe" in m.get_content() and "confirm " in m["Subject"]]
    assert len(leave_confirmations) == 1                    # one a day: a forger cannot flood with them
    if spent in ("others", "replies"):
        assert got[-1]["Subject"].startswith("confirm ") and len(got) == before + 1
        to = re.search(r"<?([^<>\s]+)>?", got[-1]["Reply-To"]).group(1)
    else:
        (notice,) = [m for m in got if "ignored until" in m["Subject"] and "test-leave+" in m.get_content()]
        to = re.search(r"test-leave\+[0-9a-f]{16}@lists\.example\.org", notice.get_content()).group(0)
        assert len(got) == before + (spent == "one-leave")  # now, or earlier today
    mail(lst, to, member, subject="Re: leave")
    assert member not in lst.members(LIST)


def test_an_answer_to_a_token_is_sent_whatever_was_spent(lst):
    """What a member's confirmation carries out is answered: the replies a forger spent with help
    requests in their name suppressed the "nomail is on" the member was waiting for."""
    lst.write_config(commands={"max_replies": "2"})
    mail(lst, "test-request@lists.example.org", "bob@example.net", subject="set nomail on")
    (confirmation,) = inbox(lst, "bob@example.net")
    for n in range(5):
        mail(lst, "test-request@lists.example.org", "bob@example.net", subject=f"help {n}")
    mail(lst, re.search(r"<?([^<>\s]+)>?", confirmation["Reply-To"]).group(1), "bob@example.net",
         subject="Re: confirm")
    assert inbox(lst, "bob@example.net")[-1]["Subject"] == f"{LIST}: nomail on"


AUTHENTIC = ["mx.lists.example.org; dmarc=pass (p=reject dis=none) header.from=example.com",
             "MX.lists.example.org 1; spf=fail smtp.mailfrom=x.example; dkim=pass header.d=example.com"
             " header.s=s1",
             'mx.lists.example.org; dkim=pass header.i="@example.com" header.b=abc']
FORGED = ["evil.example; dmarc=pass header.from=example.com",                    # another authserv-id
          "(mx.lists.example.org) evil.example; dmarc=pass header.from=example.com",
          "mx.lists.example.org; dkim=pass header.d=evil.example",              # another signer
          "mx.lists.example.org; dkim=pass (header.d=example.com) header.d=evil.example",
          "mx.lists.example.org; dmarc=fail header.from=example.com",
          "mx.lists.example.org; dmarc=pass header.from=example.com.evil.example",
          "mx.lists.example.org; dkim=pass header.d=sub.example.com",
          "mx.lists.example.org; spf=pass smtp.mailfrom=example.com"]


@pytest.mark.parametrize("results", AUTHENTIC + FORGED)
def test_the_mail_the_mta_authenticated_has_an_allowance_no_forger_can_spend(lst, results):
    """With [commands] authserv_id, a request whose From: the MTA vouches for (DMARC, or DKIM of
    that very domain, in its own Authentication-Results) draws on the address's own allowance: what
    requests anyone could have made in its name spent does not stop it.  A field of another
    authserv-id, another domain, or a result other than pass vouches for nothing."""
    lst.write_config(commands={"authserv_id": "mx.lists.example.org"})
    victim = "vic@example.com"
    spend(lst, "join", victim, 5)
    before = len(inbox(lst, victim))
    mail(lst, "test-join@lists.example.org", victim, extra=f"Authentication-Results: {results}\n")
    got = inbox(lst, victim)[before:]
    if results in AUTHENTIC:
        assert [m["Subject"][:8] for m in got] == ["confirm "]
    else:
        assert got == []
    lst.write_config(commands={"authserv_id": ""})          # without it, nothing vouches
    mail(lst, "test-request@lists.example.org", victim, subject="subscribe",
         extra=f"Authentication-Results: {AUTHENTIC[0]}\n")
    assert len(inbox(lst, victim)) == before + len(got)


def test_allowances_are_personal_data_and_go_when_their_day_is_over(lst):
    spend(lst, "request", "vic+x@example.com", 1)
    assert '"allowances": [' in lst.run("whois", "vic@example.com", "--json", check=0).out
    assert "confirm anyone" in lst.run("whois", "Vic@example.com", check=0).out
    assert "allowances 1" in lst.run("forget", "vic@example.com", check=0).out
    spend(lst, "request", "ann@example.com", 1)
    spend(lst, "request", "vic@example.com", 1)
    db = lst.db()
    db.execute("UPDATE allowances SET since = since - 86401 WHERE mailbox = 'ann@example.com'")
    db.commit()
    lst.run("send", check=0)                                # housekeeping
    assert {r[0] for r in db.execute("SELECT mailbox FROM allowances")} == {"vic@example.com"}


# 12. +tags and a list's own addresses count as one mailbox (F13) ---------------------------------

SPELLINGS = ["bob+{n}@example.com", "Bob+{n}@Example.COM", '"bob+{n}"@example.com', "bob+{n}+x@example.com",
             '"bob+ {n}"@example.com', "BOB+tag{n}@example.com"]


@pytest.mark.parametrize("how", ["join", "help", "open"])
@pytest.mark.parametrize("spelling", SPELLINGS)
def test_subaddresses_share_their_mailbox_allowance(lst, spelling, how):
    """bob+1@, bob+2@ … each had a cap of their own, so a forger could mail bob's one mailbox
    without limit; limits now count the mailbox (members stay their full address)."""
    lst.write_config(commands={"max_replies": "3"})
    if how == "open":
        lst.run("set", LIST, "subscribe_policy", "open", check=0)
    used = [spelling.format(n=n) for n in range(8)]
    for address in used:
        mail(lst, f"test-{'request' if how == 'help' else 'join'}@lists.example.org", address,
             subject="help" if how == "help" else "join", envelope="mallory@evil.example")
    lst.run("send", check=0)
    import redsky
    got = [parse(data)["Subject"] for argv, data in lst.sent() if redsky.normalize_address(argv[-1])
           in {redsky.normalize_address(a) for a in used}]
    assert len(got) == 3 + 1 and "ignored until" in got[-1], got
    if how == "open":                                      # members keep the address they joined with
        joined = [a for a in lst.members(LIST) if a != "bob@example.net" and a != "alice@example.org"]
        assert sorted(joined) == sorted(redsky.normalize_address(a) for a in used[:3])


def test_a_lists_own_addresses_count_as_that_list(lst):
    """LIST-request+1@, LIST-owner@ … of a list here are one mailbox, the list's: joining another
    list in their names asked that list's owners again for every spelling."""
    lst.newlist("other@lists.example.org", "--owner", "boss@example.org")
    for n, role in enumerate(["request+1", "request+2", "owner", "join+x", "subscribe", "leave+9", "request"]):
        mail(lst, "other-join@lists.example.org", f"test-{role}@lists.example.org", envelope="m@evil.example")
    asked = [s for s in subjects_to(lst, "boss@example.org") if "asks to join" in s]
    assert len(asked) == 3
