"""The web admin and the member's pages: signing in by an emailed link, the
owner's pages and every action on them, the held notice's web link, a
member's own options on every list, the front page; each with its
forgeries (a replayed, expired or other list's link, another owner's
session, a missing or wrong CSRF token, a GET for a POST, a non-owner, a
cookie after sign-out).  Over HTTP against `redsky.py web`, the budgets
in-process (wsgi), and the whole way in headless Chromium with an
accessibility audit (axe-core) at the end of this file."""

import io
import json
import os
import re
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

import redsky
from conftest import PYTHON, ROOT, Web, dsn, inbox, mail, post, request, require, wsgi

LIST = "test@lists.example.org"
OTHER = "other@lists.example.org"
OWNER = "owner@example.org"
OWNER2 = "ann@example.com"              # owns OTHER only
MEMBERS = ("bob@example.net", "carol@example.com")
LIST_OPTIONS = ("--owner", OWNER)
ADMIN = f"/{LIST}/admin/"


def prepare_list(rs):
    rs.run("set", LIST, "dmarc", "never", check=0)
    rs.newlist(OTHER, "--owner", OWNER2, members=("bob@example.net",))


@pytest.fixture
def site(lst):
    server = Web(lst)
    yield server
    server.stop()


def text(msg):
    return (msg.get_body(("plain",)) or msg).get_content()


def link_in(rs, address, kind="admin"):
    """The sign-in link of the last mail to ``address`` (a form mails it once its answer has gone:
    `web --listen` may still be writing it)."""
    for _ in range(100):
        found = [link for msg in inbox(rs, address) for link in re.findall(r"http://\S+/signin\?\S+", text(msg))]
        if found:
            return found[-1]
        time.sleep(0.1)
    raise AssertionError([m["Subject"] for m in inbox(rs, address)])


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args):
        return None                     # a 303 is the answer itself


_OPENER = urllib.request.build_opener(_NoRedirect)


def http(web, path, data=None, headers=None):
    """(status, headers, body) of ``web``'s answer, redirects not followed."""
    url = (path if path.startswith("http") else web.base + path).replace(web.base + "/redsky", web.base)
    try:
        with _OPENER.open(urllib.request.Request(url, data=data, headers=headers or {}), timeout=30) as r:
            return r.status, r.headers, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode("utf-8", "replace")


def get(web, path, cookie=""):
    return http(web, path, headers={"Cookie": cookie} if cookie else {})


def post_to(web, path, fields, cookie=""):
    return http(web, path, data=urllib.parse.urlencode(fields, doseq=True).encode(),
                headers={"Content-Type": "application/x-www-form-urlencoded", **({"Cookie": cookie} if cookie else {})})


def hidden(page, name):
    m = re.search(rf'name="{name}" value="([^"]*)"', page)
    return m.group(1) if m else ""


def signin_page(web, link):
    """Open a sign-in link: (the fields its button POSTs, the page's own cookie "name=value");
    opening it starts no session."""
    status, headers, page = http(web, link)
    cookies = headers.get_all("Set-Cookie") or []
    assert status == 200 and "<button>Sign in</button>" in page and len(cookies) == 1, (status, cookies)
    assert cookies[0].startswith("redsky_signin=") and "HttpOnly; SameSite=Strict" in cookies[0]
    fields = {**dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(link).query)), "page": hidden(page, "page")}
    return fields, cookies[0].split(";")[0]


def page_pass(rs, kind="owner", scope=LIST):
    """What the sign-in page of ``kind`` gives a browser, made here: ({"page": field}, its cookie)."""
    nonce = "n" * 22
    return ({"page": redsky.sign_token(rs.verp_key(), "signin-page", f"{kind} {scope}", nonce)},
            f"redsky_signin={nonce}")


def sign_in(web, link):
    """Press the button of a sign-in link's page: the session cookie ("name=value")."""
    fields, cookie = signin_page(web, link)
    status, headers, _ = post_to(web, urllib.parse.urlsplit(link).path, fields, cookie)
    assert status == 303 and headers["Location"] == "./", status
    return headers["Set-Cookie"].split(";")[0]


def owner_session(web, rs, owner=OWNER, list_address=LIST):
    request(rs, "admin", owner, list_address)
    return sign_in(web, link_in(rs, owner))


def csrf_of(web, cookie, path=ADMIN):
    token = hidden(get(web, path, cookie)[2], "csrf")
    assert token
    return token


def members(rs, address=LIST):
    return set(rs.members(address))


def events_by(rs, who):
    return [dict(r) for r in rs.db().execute("SELECT * FROM events WHERE sender = ? ORDER BY id", (who,))]


# -- signing in ------------------------------------------------------------------------------------

@pytest.mark.server
def test_an_owner_signs_in_with_the_link_admin_mails_and_out_again(site):
    rs = site.rs
    request(rs, "admin", OWNER)
    link = link_in(rs, OWNER)
    assert link.startswith(f"{site.base}/redsky/{LIST}/admin/signin?who={OWNER}&token=")
    for _ in range(3):                  # a mail scanner, a previewer, the owner: nobody is signed in
        status, headers, page = site.request(link)
        assert status == 200 and "redsky_owner" not in str(headers) and 'method="post"' in page
    query, pass_cookie = signin_page(site, link)
    status, headers, _ = post_to(site, f"/{LIST}/admin/signin", query, pass_cookie)
    assert status == 303 and headers["Location"] == "./"
    cookie = headers["Set-Cookie"]
    assert re.fullmatch(rf"redsky_owner=[A-Za-z0-9_-]{{43}}; Path=/redsky/{LIST}/admin/; Max-Age=43200;"
                        r" HttpOnly; SameSite=Strict", cookie), cookie
    session = cookie.split(";")[0]
    # only a hash of the session id is kept
    stored = [r[0] for r in rs.db().execute("SELECT id_hash FROM web_sessions")]
    assert stored == [redsky.session_hash(session.split("=", 1)[1])]
    status, _, page = get(site, ADMIN, session)
    assert status == 200 and "At a glance" in page and f"signed in as {OWNER}" in page
    # the link works once
    again = post_to(site, f"/{LIST}/admin/signin", query, pass_cookie)
    assert again[0] == 400 and "Set-Cookie" not in again[1]
    # a GET of the sign-out signs nobody out (a link checker, a prefetch)
    assert "At a glance" in get(site, ADMIN + "signout", session)[2]
    assert "At a glance" in get(site, ADMIN, session)[2]
    # signing out ends the session: the cookie then opens nothing, and does nothing
    token = csrf_of(site, session)
    status, headers, _ = post_to(site, ADMIN + "signout", {"csrf": token}, session)
    assert status == 200 and "Max-Age=0" in headers["Set-Cookie"]
    assert rs.db().execute("SELECT count(*) FROM web_sessions").fetchone()[0] == 0
    status, _, page = get(site, ADMIN + "members", session)
    assert "Mail me a link" in page and "dave@example.org" not in page
    post_to(site, ADMIN + "members", {"csrf": token, "action": "add", "how": "add",
                                      "addresses": "dave@example.org"}, session)
    assert "dave@example.org" not in members(rs)


def test_a_session_cookie_is_secure_under_https(lst):
    lst.write_config(web={"base_url": "https://lists.example.org/redsky"})
    store = redsky.open_store(redsky.Config(str(lst.config)))
    link = redsky.signin_link(redsky.Config(str(lst.config)), store.verp_key, store.list_by_address(LIST), OWNER)
    store.close()
    status, headers, _ = wsgi(lst, f"/{LIST}/admin/signin", query=urllib.parse.urlsplit(link).query)
    assert headers["Set-Cookie"].endswith("; HttpOnly; SameSite=Strict; Secure")     # the page's own, too
    assert f"Path=/redsky/{LIST}/admin/signin;" in headers["Set-Cookie"]
    extra, cookie = page_pass(lst)
    query = {**dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(link).query)), **extra}
    status, headers, _ = wsgi(lst, f"/{LIST}/admin/signin", "POST", query, headers={"HTTP_COOKIE": cookie})
    assert status == 303 and headers["Set-Cookie"].endswith("; HttpOnly; SameSite=Strict; Secure")
    assert f"Path=/redsky/{LIST}/admin/;" in headers["Set-Cookie"]


def test_admin_by_email_without_a_web_address_says_so(lst):
    request(lst, "admin", OWNER)
    assert "not set up on this host" in text(inbox(lst, OWNER)[-1])
    request(lst, "admin", "bob@example.net")          # not an owner: the owners' answer, no link
    assert "is for the owners" in text(inbox(lst, "bob@example.net")[-1])


def signin_form_answer(rs, typed, remote="192.0.2.10", path=ADMIN):
    status, _, page = wsgi(rs, path, remote=remote)
    status, _, answer = wsgi(rs, path, "POST", {"form": hidden(page, "form"), "address": typed}, remote=remote)
    return status, answer.replace(typed, "TYPED")


def test_the_signin_form_answers_the_same_whatever_is_typed_and_mails_owners_only(lst):
    lst.write_config(web={"base_url": "http://lists.example.org/redsky"})
    answers = {typed: signin_form_answer(lst, typed, remote=f"192.0.2.{n}") for n, typed in enumerate(
        (OWNER, "bob@example.net", "stranger@example.org", OWNER2, "not an address", OWNER.upper()))}
    assert len(set(answers.values())) == 1 and list(answers.values())[0][0] == 200
    lst.run("send", check=0)
    assert sorted(lst.sent_to()) == [OWNER, OWNER]          # and nobody else
    # the members' form: the same answer for a member, an owner who is no member, anybody
    answers = {typed: signin_form_answer(lst, typed, f"198.51.100.{n}", "/manage/") for n, typed in enumerate(
        ("carol@example.com", OWNER, "stranger@example.org", "no such thing"))}
    assert len(set(answers.values())) == 1
    lst.run("send", check=0)
    assert sorted(lst.sent_to()) == ["carol@example.com", OWNER, OWNER]


def test_signin_links_have_budgets_per_client_network_and_per_address(lst):
    lst.write_config(web={"base_url": "http://lists.example.org/redsky", "signin_per_client": "3",
                          "signin_per_address": "2", "signin_per_address_all": "7"})
    for n in range(4):                  # one network: three requests an hour
        assert signin_form_answer(lst, f"stranger{n}@example.org", remote="192.0.2.7")[0] == 200
    assert signin_form_answer(lst, OWNER, remote="192.0.2.7")[0] == 200
    lst.run("send", check=0)
    assert lst.sent_to() == []
    # one address: two links an hour at the asking of one network; a stranger asking from three
    # networks spends theirs, not the owner's on another network; all networks together: seven
    for n in range(3):
        for typed in (OWNER, OWNER.upper(), f" {OWNER} "):
            signin_form_answer(lst, typed, remote=f"203.0.113.{n}")
    lst.run("send", check=0)
    assert lst.sent_to() == [OWNER] * 6
    signin_form_answer(lst, OWNER, remote="2001:db8:1:2::99")        # the owner, at home
    lst.run("send", check=0)
    assert lst.sent_to() == [OWNER] * 7
    for n in range(3):                  # more networks: the address gets no more this hour
        signin_form_answer(lst, OWNER, remote=f"198.51.100.{n}")
    signin_form_answer(lst, OWNER, remote="2001:db8:1:3::1", path="/manage/")
    lst.run("send", check=0)
    assert lst.sent_to() == [OWNER] * 7
    # the members' form: the same budgets (an address's, whichever form names it)
    for n in range(2):
        for _ in range(3):
            signin_form_answer(lst, "carol@example.com", remote=f"192.0.2.{50 + n}", path="/manage/")
    signin_form_answer(lst, "carol@example.com", remote="192.0.2.60", path="/manage/")
    lst.run("send", check=0)
    assert lst.sent_to() == [OWNER] * 7 + ["carol@example.com"] * 5
    status, _, page = wsgi(lst, ADMIN, remote="192.0.2.99")     # a form used twice counts once
    fields = {"form": hidden(page, "form"), "address": "x@example.org"}
    wsgi(lst, ADMIN, "POST", fields, remote="192.0.2.99")
    wsgi(lst, ADMIN, "POST", fields, remote="192.0.2.99")
    count = lst.db().execute("SELECT count FROM web_budgets WHERE key = 'signin client 192.0.2.99'").fetchone()
    assert count[0] == 1


def test_a_stranger_on_a_few_networks_does_not_lock_the_owner_out_with_the_defaults(lst):
    """The review's case: three requests naming the owner from three networks, then the owner's
    own from a fourth, with the default budgets: the owner gets the link."""
    lst.write_config(web={"base_url": "http://lists.example.org/redsky"})
    for n in range(3):
        for _ in range(3):
            signin_form_answer(lst, OWNER, remote=f"203.0.113.{n + 1}")
    lst.run("send", check=0)
    sent = len(lst.sent_to())
    signin_form_answer(lst, OWNER, remote="192.0.2.200")
    lst.run("send", check=0)
    assert lst.sent_to()[sent:] == [OWNER]


@pytest.mark.server
def test_forged_and_used_links_sign_nobody_in_and_get_one_answer(site):
    rs = site.rs
    key = rs.verp_key()
    base = f"{site.base}/redsky/{LIST}/admin/signin"

    def link(token, who=OWNER, path=base):
        return f"{path}?who={urllib.parse.quote(who, safe='@')}&token={token}"
    forged = {
        "expired": link(redsky.sign_token(key, "owner-signin", LIST, OWNER, issued=time.time() - 31 * 60)),
        "other list's": link(redsky.sign_token(key, "owner-signin", OTHER, OWNER)),
        "a member's": link(redsky.sign_token(key, "member-signin", "*", OWNER)),
        "not an owner's": link(redsky.sign_token(key, "owner-signin", LIST, "bob@example.net"),
                               "bob@example.net"),
        "another address": link(redsky.sign_token(key, "owner-signin", LIST, OWNER), OWNER2),
        "made up": link("1-" + "0" * 16 + "-" + "0" * 32),
        "another key": link(redsky.sign_token("0" * 32, "owner-signin", LIST, OWNER)),
    }
    answers = set()
    extra, cookie = page_pass(rs)               # pressed on this list's sign-in page
    for name, url in forged.items():
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
        status, headers, page = post_to(site, urllib.parse.urlsplit(url).path, {**query, **extra}, cookie)
        assert status == 400 and "Set-Cookie" not in headers, name
        answers.add(page)
    request(rs, "admin", OWNER)                     # a real link, used twice
    real = link_in(rs, OWNER)
    sign_in(site, real)
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(real).query))
    status, headers, page = post_to(site, urllib.parse.urlsplit(real).path, {**query, **extra}, cookie)
    answers.add(page)
    assert status == 400 and "Set-Cookie" not in headers and len(answers) == 1
    # the other list's own link works there, not here
    request(rs, "admin", OWNER2, OTHER)
    other = link_in(rs, OWNER2)
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(other).query))
    assert post_to(site, f"/{LIST}/admin/signin", {**query, **extra}, cookie)[0] == 400
    assert rs.db().execute("SELECT count(*) FROM web_sessions").fetchone()[0] == 1


@pytest.mark.server
def test_an_owner_removes_archived_posts_and_their_numbers_stay(site):
    """The web admin's archive page (issue 33's delete, by the email command's code): the checked
    posts or the numbers typed are removed, each number stays a gap whose page says so, the others
    keep theirs; a GET, a missing CSRF token or another list's owner removes nothing."""
    rs = site.rs
    rs.run("set", LIST, "archive", "public", check=0)
    for n in range(1, 5):
        rs.queue(post(subject=f"Topic {n}", msgid=f"<arch{n}@example.org>", sender="bob@example.net"),
                 sender="bob@example.net", check=0)
    numbers = lambda: {a["number"]: a["subject"] for a in json.loads(rs.run("archive", LIST, "--json", check=0).out)}
    assert set(numbers()) == {1, 2, 3, 4}
    cookie = owner_session(site, rs)
    status, _, page = get(site, ADMIN + "archive?action=delete&number=1", cookie)
    assert status == 200 and "Topic 4" in page and 'href="../../archive/test@lists.example.org/4.html"' in page
    post_to(site, ADMIN + "archive", {"action": "delete", "number": "1"}, cookie)              # no CSRF
    theirs = owner_session(site, rs, OWNER2, OTHER)
    post_to(site, ADMIN + "archive", {"csrf": csrf_of(site, theirs, f"/{OTHER}/admin/"), "action": "delete",
                                      "number": "1"}, theirs)
    assert set(numbers()) == {1, 2, 3, 4}
    csrf = csrf_of(site, cookie)
    status, _, page = post_to(site, ADMIN + "archive", {"csrf": csrf, "action": "delete", "number": ["2"],
                                                        "numbers": "4"}, cookie)
    assert status == 200 and "Topic 2" not in page and "Topic 3" in page
    assert {n: s.rsplit(" ", 1)[-1] for n, s in numbers().items()} == {1: "1", 3: "3"}
    gap = (rs.home / "pages" / LIST / "2.html").read_text().replace("&#x27;", "'")
    assert "by the list's owners" in gap and "Topic 2" not in gap
    assert "Topic 3" in (rs.home / "pages" / LIST / "3.html").read_text()
    # a number that is no post, or one already removed: said, nothing else done
    status, _, page = post_to(site, ADMIN + "archive", {"csrf": csrf, "action": "delete", "numbers": "2 99 x"},
                              cookie)
    assert status == 400 and set(numbers()) == {1, 3}
    assert any("on the web" in e["reason"] and "post 4 is removed" in e["reason"] for e in events_by(rs, OWNER))
    rs.queue(post(subject="Topic 5", msgid="<arch5@example.org>", sender="bob@example.net"),
             sender="bob@example.net", check=0)
    assert max(numbers()) == 5


@pytest.mark.server
def test_another_owners_session_or_none_gets_the_signin_page_and_does_nothing(site):
    rs = site.rs
    theirs = owner_session(site, rs, OWNER2, OTHER)
    assert "At a glance" in get(site, f"/{OTHER}/admin/", theirs)[2]
    csrf = csrf_of(site, theirs, f"/{OTHER}/admin/")
    nobody = get(site, ADMIN + "members")[2]
    for path in ("", "settings", "members", "held", "bounces", "members.csv", "archive"):
        status, _, page = get(site, ADMIN + path, theirs)
        assert status == 200 and "Mail me a link" in page and "bob@example.net" not in page, path
        assert re.sub(r'value="[^"]*"', "", page) == re.sub(r'value="[^"]*"', "", nobody)
    post_to(site, ADMIN + "members", {"csrf": csrf, "action": "add", "how": "add",
                                      "addresses": "eve@example.org"}, theirs)
    post_to(site, ADMIN + "settings", {"csrf": csrf, "subject_tag": "[pwned]"}, theirs)
    assert "eve@example.org" not in members(rs) and rs.run("lists", "--json", check=0).out.count("[pwned]") == 0
    # an owner taken off the owners is signed out at the next request
    mine = owner_session(site, rs)
    rs.run("set", LIST, "owners", "someone@example.org", check=0)
    assert "Mail me a link" in get(site, ADMIN, mine)[2]


@pytest.mark.server
def test_every_post_needs_this_sessions_csrf_token_and_a_get_changes_nothing(site):
    rs = site.rs
    cookie = owner_session(site, rs)
    theirs = owner_session(site, rs, OWNER2, OTHER)
    wrong = {"none": {}, "empty": {"csrf": ""}, "another session's": {"csrf": csrf_of(site, theirs,
                                                                                       f"/{OTHER}/admin/")},
             "made up": {"csrf": redsky.sign_token("0" * 32, "csrf", LIST, "x")}}
    for name, token in wrong.items():
        status, _, page = post_to(site, ADMIN + "members", {**token, "action": "add", "how": "add",
                                                            "addresses": "eve@example.org"}, cookie)
        assert status == 400 and "nothing was done" in page, name
        assert post_to(site, ADMIN + "signout", token, cookie)[0] == 400, name
    # a GET with the fields of a POST changes nothing
    get(site, ADMIN + "members?action=add&how=add&addresses=eve@example.org&csrf=" + csrf_of(site, cookie),
        cookie)
    get(site, ADMIN + "settings?subject_tag=%5Bx%5D&csrf=" + csrf_of(site, cookie), cookie)
    assert "eve@example.org" not in members(rs) and "At a glance" in get(site, ADMIN, cookie)[2]
    assert json.loads(rs.run("lists", "--json", check=0).out)[1]["subject_tag"] == ""


# -- the owner's pages ----------------------------------------------------------------------------

@pytest.mark.server
def test_every_setting_is_shown_with_its_help_and_checked_as_the_cli_checks_it(site):
    rs = site.rs
    cookie = owner_session(site, rs)
    status, _, page = get(site, ADMIN + "settings", cookie)
    assert status == 200
    for key in redsky.SETTABLE:
        assert f'name="{key}"' in page and redsky.esc(redsky.SETTING_HELP[key]) in page, key
    csrf = hidden(page, "csrf")
    # one wrong value: nothing changes, and the error is the CLI's
    status, _, page = post_to(site, ADMIN + "settings", {"csrf": csrf, "subject_tag": "[team]",
                                                         "digest_interval": "soon"}, cookie)
    cli = rs.run("set", LIST, "digest_interval", "soon")
    assert status == 400 and cli.err.split(": ", 1)[1].strip() in redsky.esc(page)
    row = json.loads(rs.run("lists", "--json", check=0).out)[1]
    assert row["subject_tag"] == "" and row["digest_interval"] == 86400
    # right ones change, the rest stays as it was
    status, _, page = post_to(site, ADMIN + "settings", {
        "csrf": csrf, "subject_tag": "[team]", "digest_interval": "12h", "advertised": "yes",
        "footer": "Bye: $unsubscribe_personal\r\nline two", "archive": "private"}, cookie)
    assert status == 200 and "set subject_tag [team]: done." in page and "archive" not in \
        re.findall(r"<li>(.*?)</li>", page)[-1]
    row = json.loads(rs.run("lists", "--json", check=0).out)[1]
    assert (row["subject_tag"], row["digest_interval"], row["advertised"], row["footer"]) == \
        ("[team]", 43200, 1, "Bye: $unsubscribe_personal\nline two")
    # a passphrase and the access mode that needs it, in one form
    post_to(site, ADMIN + "settings", {"csrf": csrf, "passphrase": "s3cret", "access": "passphrase"}, cookie)
    row = json.loads(rs.run("lists", "--json", check=0).out)[1]
    assert row["access"] == "passphrase"
    # kept in the trace: who did it, from the web
    assert any("set subject_tag [team]" in e["reason"] and "on the web" in e["reason"]
               for e in events_by(rs, OWNER))
    assert OWNER in rs.run("whois", OWNER, check=0).out


@pytest.mark.server
def test_a_text_box_is_taken_as_typed_and_control_characters_are_refused(site):
    """A footer typed in the web's text box keeps a written backslash-n (the shell's escape is the
    shell's); a control character in any setting is refused there as everywhere: a vertical tab
    in subject_tag went raw into every post's Subject:, a NUL into every footer."""
    rs = site.rs
    cookie = owner_session(site, rs)
    csrf = csrf_of(site, cookie)
    status, _, page = post_to(site, ADMIN + "settings", {"csrf": csrf, "footer": "Files: C:\\new\\reports\r\nbye"},
                              cookie)
    row = json.loads(rs.run("lists", "--json", check=0).out)[1]
    assert status == 200 and row["footer"] == "Files: C:\\new\\reports\nbye"
    for key, value in (("subject_tag", "[t]\x0bX-Injected: 1"), ("footer", "foot\x00er"), ("welcome", "a\x85b"),
                       ("archive_url", "https://x.example/\x7f"), ("description", "one\u2028two"),
                       ("dmarc_addresses", "*@exa\x01mple.com")):
        status, _, page = post_to(site, ADMIN + "settings", {"csrf": csrf, key: value}, cookie)
        assert status == 400 and "control character" in page, key
    after = json.loads(rs.run("lists", "--json", check=0).out)[1]
    assert after == row


@pytest.mark.server
def test_members_are_found_added_invited_removed_banned_and_exported(site):
    rs = site.rs
    rs.run("subscribe", LIST, "=HYPERLINK(1) <formula@example.org>", "\"x;=cmd|' /C calc'!A0\" <semi@example.org>",
           '" +1 tab\tsep" <space@example.org>', check=0)
    cookie = owner_session(site, rs)
    csrf = csrf_of(site, cookie)
    page = get(site, ADMIN + "members?q=carol", cookie)[2]
    assert "carol@example.com" in page and "bob@example.net" not in page
    status, _, page = post_to(site, ADMIN + "members", {"csrf": csrf, "action": "add", "how": "add",
                                                        "welcome": "on",
                                                        "addresses": "dave@example.org\nbob@example.net, bad"},
                              cookie)
    assert "dave@example.org is added, and welcomed." in page and "bob@example.net is a member already" in page
    assert "add bad: not a valid address" in page
    post_to(site, ADMIN + "members", {"csrf": csrf, "action": "add", "how": "invite",
                                      "addresses": "erin@example.org"}, cookie)
    assert "dave@example.org" in members(rs) and "erin@example.org" not in members(rs)
    assert "Welcome to" in inbox(rs, "dave@example.org")[-1]["Subject"]
    assert "Invitation to join" in inbox(rs, "erin@example.org")[-1]["Subject"]
    post_to(site, ADMIN + "members", {"csrf": csrf, "action": "remove",
                                      "who": ["carol@example.com", "dave@example.org"]}, cookie)
    assert members(rs) == {"bob@example.net", "formula@example.org", "semi@example.org", "space@example.org"}
    assert "removed" in inbox(rs, "carol@example.com")[-1]["Subject"]
    post_to(site, ADMIN + "members", {"csrf": csrf, "action": "ban", "patterns": "*@spam.example ^x\\d+@"},
            cookie)
    assert rs.run("ban", LIST, check=0).out.split() == ["*@spam.example", "^x\\d+@"]
    post_to(site, ADMIN + "members", {"csrf": csrf, "action": "unban", "pattern": "*@spam.example"}, cookie)
    assert rs.run("ban", LIST, check=0).out.split() == ["^x\\d+@"]
    status, headers, csv_text = get(site, ADMIN + "members.csv", cookie)
    assert status == 200 and headers["Content-Type"].startswith("text/csv") and "attachment" in \
        headers["Content-Disposition"]
    assert csv_text.splitlines()[0].startswith('"address","name","status"') and "'=HYPERLINK(1)" in csv_text
    # every cell quoted, so a spreadsheet that splits at ; or tabs keeps a name whole; a formula
    # after spaces is disarmed too
    import csv
    cells = {row[0]: row for row in csv.reader(io.StringIO(csv_text))}
    assert cells["semi@example.org"][1] == "x;=cmd|' /C calc'!A0" and '"x;=cmd' in csv_text
    assert cells["space@example.org"][1] == "'+1 tab sep"
    assert all(line.startswith('"') and line.endswith('"') for line in csv_text.splitlines())
    assert get(site, ADMIN + "members.txt", cookie)[2].split() == ["bob@example.net", "formula@example.org", "semi@example.org", "space@example.org"]
    done = " ".join(e["reason"] for e in events_by(rs, OWNER))
    for what in ("dave@example.org is added", "erin@example.org is invited", "carol@example.com is removed",
                 "*@spam.example is banned", "no longer banned"):
        assert what in done, what


@pytest.mark.server
def test_a_members_options_are_set_as_set_member_sets_them(site):
    rs = site.rs
    cookie = owner_session(site, rs)
    page = get(site, ADMIN + "member?who=bob@example.net", cookie)[2]
    csrf = hidden(page, "csrf")
    status, _, page = post_to(site, ADMIN + "member", {"csrf": csrf, "who": "bob@example.net", "digest": "on",
                                                       "moderate": "on", "digest_format": "plain",
                                                       "nomail": "on", "until": "2099-01-02"}, cookie)
    assert status == 200
    bob = rs.members()["bob@example.net"]
    assert (bob["digest"], bob["moderate"], bob["nomail"], bob["notmetoo"]) == (True, True, True, False)
    assert bob["nomail_until"] == redsky.utc_day("2099-01-02")
    assert rs.db().execute("SELECT digest_format FROM members WHERE address = 'bob@example.net'"
                           " AND list_id = 1").fetchone()[0] == "plain"
    status, _, page = post_to(site, ADMIN + "member", {"csrf": csrf, "who": "bob@example.net", "nomail": "on",
                                                       "until": "yesterday"}, cookie)
    assert status == 400 and rs.members()["bob@example.net"]["digest"]      # nothing changed
    assert get(site, ADMIN + "member?who=nobody@example.org", cookie)[0] == 404


def hold(rs, n, sender="stranger@example.org"):
    """``n`` posts from a non-member, held; their Message-IDs."""
    ids = []
    for i in range(n):
        p = post(subject=f"held {i} {sender}", sender=sender, msgid=f"<held{i}.{time.time_ns()}@example.org>")
        rs.queue(p, sender=sender, check=0)
        ids.append(p.msgid)
    return ids


@pytest.mark.server
def test_held_posts_and_join_requests_are_decided_one_or_many(site):
    rs = site.rs
    msgids = hold(rs, 3)
    rs.run("set", LIST, "subscribe_policy", "approve", check=0)
    for who in ("joiner@example.org", "nope@example.org"):
        mail(rs, "test-join@lists.example.org", who)
    cookie = owner_session(site, rs)
    status, _, page = get(site, ADMIN + "held", cookie)
    assert status == 200 and page.count('name="held"') == 3 and page.count('name="join"') == 2
    csrf = hidden(page, "csrf")
    ids = re.findall(r'name="held" value="(\d+)"', page)
    tokens = re.findall(r'name="join" value="([0-9a-f]{32})"', page)
    status, _, page = post_to(site, ADMIN + "held", {"csrf": csrf, "action": "approve", "held": ids[:2]}, cookie)
    assert page.count("approved; it goes to 2 members") == 2
    post_to(site, ADMIN + "held", {"csrf": csrf, "action": "reject", "held": ids[2:], "reason": "off topic"},
            cookie)
    assert rs.status()["held"] == 0
    got = inbox(rs, "bob@example.net")
    assert sorted(m["Subject"] for m in got) == ["held 0 stranger@example.org", "held 1 stranger@example.org"]
    assert "off topic" in text(inbox(rs, "stranger@example.org")[-1])
    trace = rs.run("trace", msgids[0], check=0).out
    assert f"approved by {OWNER} on the web" in trace
    assert f"by {OWNER} on the web" in rs.run("trace", msgids[2], check=0).out
    # a second decision on a decided post does nothing
    page = post_to(site, ADMIN + "held", {"csrf": csrf, "action": "approve", "held": ids[:1]}, cookie)[2]
    assert "is gone" in page
    joiner = [t for t in tokens if rs.db().execute("SELECT address FROM pending WHERE token = ?",
                                                   (t,)).fetchone()[0] == "joiner@example.org"]
    others = [t for t in tokens if t not in joiner]
    post_to(site, ADMIN + "held", {"csrf": csrf, "action": "join-approve", "join": joiner}, cookie)
    post_to(site, ADMIN + "held", {"csrf": csrf, "action": "join-reject", "join": others, "reason": "who?"},
            cookie)
    assert "joiner@example.org" in members(rs) and "nope@example.org" not in members(rs)
    assert "who?" in text(inbox(rs, "nope@example.org")[-1])
    assert "join-approve" not in " ".join(e["reason"] for e in events_by(rs, OWNER))
    assert "joiner@example.org: subscribed" in " ".join(e["reason"] for e in events_by(rs, OWNER))
    # the owner got no mail about what the page already said
    assert [m["Subject"] for m in inbox(rs, OWNER) if "approve" in m["Subject"] or "reject" in m["Subject"]] == []


@pytest.mark.server
def test_a_held_notices_web_link_opens_that_post_only_until_it_is_decided(site):
    rs = site.rs
    (msgid,) = hold(rs, 1)
    notice = inbox(rs, OWNER)[-1]
    links = re.findall(rf"{re.escape(site.base)}/redsky/{LIST}/admin/held/[0-9a-f]{{32}}", text(notice))
    assert len(links) == 1 and links[0] in notice.get_body(("html",)).get_content()
    status, headers, page = site.request(links[0])                  # no sign-in needed
    assert status == 200 and "held 0 stranger@example.org" in page and "Set-Cookie" not in headers
    token = links[0].rsplit("/", 1)[1]
    gone = site.request(f"/{LIST}/admin/held/{'0' * 32}")
    assert gone[0] == 410
    assert site.request(f"/{OTHER}/admin/held/{token}")[2] == gone[2]      # not another list's
    form = hidden(page, "form")
    assert post_to(site, links[0], {"action": "approve"})[0] == 400          # no form token
    assert post_to(site, links[0], {"action": "approve", "form": redsky.sign_token(
        rs.verp_key(), "held-form", LIST, "f" * 32)})[0] == 400            # another post's
    status, _, page = post_to(site, links[0], {"action": "approve", "form": form})
    assert status == 200 and "approved" in page
    assert site.request(links[0])[2] == gone[2]                             # decided: the link says so
    assert post_to(site, links[0], {"action": "discard", "form": form})[0] == 410
    assert [m["Subject"] for m in inbox(rs, "bob@example.net")] == ["held 0 stranger@example.org"]
    assert "approved by the link of the held notice" in rs.run("trace", msgid, check=0).out


@pytest.mark.server
def test_the_bounces_page_shows_each_report_and_turns_delivery_back_on(site):
    rs = site.rs
    rs.queue(dsn(recipient="bob@example.net"), recipient=rs.verp("bob@example.net"), sender="", check=0)
    rs.db().execute("UPDATE members SET status = 'disabled', disabled_reason = 'bounce'"
                    " WHERE address = 'bob@example.net' AND list_id = 1").connection.commit()
    cookie = owner_session(site, rs)
    status, _, page = get(site, ADMIN + "bounces", cookie)
    assert status == 200 and "bob@example.net" in page and "userunknown" in page and "counted" in page
    assert "carol@example.com" not in page
    post_to(site, ADMIN + "bounces", {"csrf": hidden(page, "csrf"), "action": "enable",
                                      "who": "bob@example.net"}, cookie)
    assert rs.members()["bob@example.net"]["status"] == "enabled"
    glance = get(site, ADMIN, cookie)[2]
    assert "3 members" not in glance and "2 members" in glance


# -- the member's pages ---------------------------------------------------------------------------

@pytest.mark.server
def test_a_member_manages_every_list_of_the_address(site):
    rs = site.rs
    status, _, page = get(site, "/manage/")
    assert status == 200 and "Mail me a link" in page
    assert 'href="../manage/"' in get(site, f"/{LIST}/")[2]
    status, _, answer = post_to(site, "/manage/", {"form": hidden(page, "form"), "address": "bob@example.net"})
    assert status == 200 and "bob@example.net" in answer
    cookie = sign_in(site, link_in(rs, "bob@example.net"))
    assert cookie.startswith("redsky_member=")
    status, _, page = get(site, "/manage/", cookie)
    assert LIST in page and OTHER in page and page.count("<form") == 5       # two lists, sign out
    csrf = hidden(page, "csrf")
    status, _, page = post_to(site, "/manage/", {"csrf": csrf, "list": LIST, "action": "save", "digest": "on",
                                                 "digest_format": "plain", "ack": "on"}, cookie)
    assert "digest on" in page and "digest format plain" in page
    bob = rs.members()["bob@example.net"]
    assert bob["digest"] and bob["ack"] and not bob["nomail"]
    assert rs.db().execute("SELECT digest_format FROM members WHERE list_id = 1 AND address ="
                           " 'bob@example.net'").fetchone()[0] == "plain"
    post_to(site, "/manage/", {"csrf": csrf, "list": OTHER, "action": "save", "nomail": "on",
                               "until": "2099-12-24"}, cookie)
    assert rs.members(OTHER)["bob@example.net"]["nomail_until"] == redsky.utc_day("2099-12-24")
    # a bad day, a missing or another token, a list that is not theirs: nothing changes
    for fields in ({"csrf": csrf, "list": OTHER, "action": "save", "until": "soon", "nomail": "on"},
                   {"list": LIST, "action": "leave"}, {"csrf": "x", "list": LIST, "action": "leave"},
                   {"csrf": csrf, "list": "nope@lists.example.org", "action": "leave"}):
        post_to(site, "/manage/", fields, cookie)
    assert "bob@example.net" in members(rs) and rs.members(OTHER)["bob@example.net"]["nomail"]
    assert "carol" not in get(site, "/manage/", cookie)[2]
    post_to(site, "/manage/", {"csrf": csrf, "list": OTHER, "action": "leave"}, cookie)
    assert "bob@example.net" not in rs.members(OTHER)
    assert inbox(rs, "bob@example.net")[-1]["Subject"].startswith("Goodbye from")
    assert any("the member set digest on" in e["reason"] for e in events_by(rs, "bob@example.net"))
    # a GET signs nobody out; a POST does, and the cookie then opens nothing
    get(site, "/manage/signout", cookie)
    assert LIST in get(site, "/manage/", cookie)[2]
    post_to(site, "/manage/signout", {"csrf": csrf}, cookie)
    assert "Mail me a link" in get(site, "/manage/", cookie)[2]


def test_forged_member_links_sign_nobody_in(lst):
    lst.write_config(web={"base_url": "http://lists.example.org"})
    key = lst.verp_key()

    extra, cookie = page_pass(lst, "member", "*")

    def attempt(token, who="bob@example.net"):
        return wsgi(lst, "/manage/signin", "POST", {"who": who, "token": token, **extra},
                    headers={"HTTP_COOKIE": cookie})
    forged = [redsky.sign_token(key, "member-signin", "*", "bob@example.net", issued=time.time() - 3600),
              redsky.sign_token(key, "owner-signin", LIST, "bob@example.net"),
              redsky.sign_token(key, "member-signin", LIST, "bob@example.net"),
              redsky.sign_token("0" * 32, "member-signin", "*", "bob@example.net")]
    answers = {attempt(t)[2] for t in forged}
    answers.add(attempt(redsky.sign_token(key, "member-signin", "*", "nobody@example.org"),
                        "nobody@example.org")[2])       # signed, but no member
    real = redsky.sign_token(key, "member-signin", "*", "bob@example.net")
    assert attempt(real, "carol@example.com")[0] == 400     # another member's address
    status, headers, _ = attempt(real)
    assert status == 303 and headers["Set-Cookie"].startswith("redsky_member=")
    status, headers, page = attempt(real)                   # once only
    answers.add(page)
    assert status == 400 and "Set-Cookie" not in headers and len(answers) == 1


@pytest.mark.server
def test_the_leave_page_links_to_the_members_page(site):
    token = redsky.leave_token(site.rs.verp_key(), {"name": "test", "domain": "lists.example.org"},
                               "bob@example.net")
    page = site.request(f"/{LIST}/leave/{token}")[2]
    assert 'href="../../../manage/"' in page


def test_digests_come_in_the_format_each_member_chose(lst):
    lst.run("set", LIST, "access", "open", check=0)
    lst.run("set-member", LIST, "bob@example.net", "digest", "on", check=0)
    lst.run("set-member", LIST, "carol@example.com", "digest", "on", check=0)
    lst.run("set", LIST, "digest_size_threshold", "1", check=0)
    lst.db().execute("UPDATE members SET digest_format = 'plain' WHERE address = 'carol@example.com'")\
        .connection.commit()
    lst.queue(post(body="x" * 2000 + "\n"), check=0)
    bob, carol = inbox(lst, "bob@example.net")[-1], inbox(lst, "carol@example.com")[-1]
    assert bob.get_content_type() == "multipart/mixed" and carol.get_content_type() == "text/plain"
    assert bob["Subject"] == carol["Subject"] == "test Digest, Vol 1, Issue 1"
    lst.run("set", LIST, "digest_format", "plain", check=0)          # the list's: for who did not choose
    lst.db().execute("UPDATE members SET digest_format = 'mime' WHERE address = 'carol@example.com'")\
        .connection.commit()
    lst.queue(post(subject="again", body="y" * 2000 + "\n"), check=0)
    bob, carol = inbox(lst, "bob@example.net")[-1], inbox(lst, "carol@example.com")[-1]
    assert bob.get_content_type() == "text/plain" and carol.get_content_type() == "multipart/mixed"


# -- the front page --------------------------------------------------------------------------------

def test_the_front_page_names_the_advertised_lists_only(lst):
    lst.run("set", LIST, "archive", "public", check=0)             # public, but not advertised
    lst.run("set", OTHER, "advertised", "yes", check=0)
    lst.run("set", OTHER, "description", "Talk about <other> things", check=0)
    status, _, page = wsgi(lst, "/")
    assert status == 200 and OTHER in page and LIST not in page
    assert "Talk about &lt;other&gt; things" in page and "the archive is for members" in page
    lst.run("set", LIST, "advertised", "yes", check=0)
    page = wsgi(lst, "/")[2]
    assert f'<a href="archive/{LIST}/">archive</a> (public)' in page


def test_every_page_has_main_and_labelled_navigation(lst):
    for path in ("/", f"/{LIST}/", ADMIN, "/manage/"):
        page = wsgi(lst, path)[2]
        assert page.count("<main>") == 1, path
        assert all('aria-label="' in nav for nav in re.findall(r"<nav[^>]*>", page)), path


# -- the whole way in a real browser, with an accessibility audit ---------------------------------

AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]


def axe_source():
    """axe-core's axe.min.js ($REDSKY_AXE; .ci/run fetches it from the npm registry)."""
    path = os.environ.get("REDSKY_AXE", "")
    if not os.path.isfile(path):
        require("no axe-core (REDSKY_AXE=path/to/axe.min.js; `npm pack axe-core@4` has it)", "REDSKY_REQUIRE_AXE")
    return open(path).read()


class Audited:
    """A browser at 390 px whose every page is audited: axe-core's WCAG 2.1 A and AA rules, no
    horizontal scrolling, no console message (a CSP violation would be one), no script."""

    def __init__(self, browser, axe):
        self.browser, self.axe, self.pages = browser, axe, []

    def check(self):
        b = self.browser
        where = b.js("location.pathname")
        b.js(self.axe)                  # Runtime.evaluate: outside the page's CSP, which allows no script
        violations = json.loads(b.js(
            f"axe.run(document, {{runOnly: {{type: 'tag', values: {json.dumps(AXE_TAGS)}}}}})"
            ".then(r => JSON.stringify(r.violations.map(v => ({id: v.id, help: v.help,"
            " nodes: v.nodes.slice(0, 3).map(n => n.target.join(' '))}))))", await_promise=True))
        assert violations == [], (where, violations)
        width = b.js("[document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1] == 390, (where, width)
        # no script element (axe runs by Runtime.evaluate, not as one); one <main>; every nav labelled
        assert b.js("document.scripts.length") == 0 and b.js("document.querySelectorAll('main').length") == 1, where
        assert b.js("[...document.querySelectorAll('nav')].every(n => n.getAttribute('aria-label'))"), where
        assert b.problems() == [], where
        self.pages.append(where)

    def open(self, url):
        self.browser.open(url)
        self.check()

    def submit(self, script):
        """Fill a form and press its button (as the page's own script never could)."""
        self.browser.load(lambda: self.browser.js(script))
        self.check()


@pytest.fixture
def browser():
    from test_web import chromium
    from cdp import Browser
    exe = chromium()
    b = Browser(exe)
    yield b
    b.quit()


@pytest.fixture
def root_site(lst):
    server = Web(lst, prefix="")
    yield server
    server.stop()


@pytest.mark.server
@pytest.mark.browser
def test_an_owner_and_a_member_do_it_all_in_a_browser_and_every_page_passes_the_audit(root_site, browser):
    rs, base = root_site.rs, root_site.base
    page = Audited(browser, axe_source())
    hold(rs, 2)
    rs.run("set", LIST, "advertised", "yes", check=0)
    rs.run("set", LIST, "description", "A list to try things on", check=0)
    rs.queue(dsn(recipient="carol@example.com"), recipient=rs.verp("carol@example.com"), sender="", check=0)
    page.open(base + "/")
    page.open(f"{base}/{LIST}/")
    # the owner asks for a link with the keyboard alone: Tab to the field, type, Enter
    page.open(f"{base}/{LIST}/admin/")
    for _ in range(20):
        if browser.js("document.activeElement.id") == "address":
            break
        browser.key("Tab")
    assert browser.js("document.activeElement.id") == "address"
    browser.type(OWNER)
    browser.load(lambda: browser.key("Enter", text="\r"))
    page.check()
    assert "a message with a link to sign in is on its way" in browser.js("document.body.innerText")
    page.open(link_in(rs, OWNER))
    page.submit("document.querySelector('button').click()")         # "Sign in": on to the admin
    assert browser.js("document.querySelector('h1').innerText") == "At a glance"
    for path in ("settings", "members", "member?who=bob@example.net", "bounces", "archive", "held"):
        page.open(f"{base}/{LIST}/admin/{path}")
    # approve a held post
    page.submit("document.querySelector('input[name=held]').checked = true;"
                " document.querySelector('button[value=approve]').click()")
    assert "approved" in browser.js("document.body.innerText")
    # a held post's own page, as its notice's link opens it
    token = re.search(r'href="held/([0-9a-f]{32})"', browser.js("document.body.innerHTML")).group(1)
    page.open(f"{base}/{LIST}/admin/held/{token}")
    # add a member
    page.open(f"{base}/{LIST}/admin/members")
    page.submit("document.querySelector('#addresses').value = 'dave@example.org';"
                " document.querySelector('#how-add').checked = true;"
                " document.querySelector('button[value=add]').click()")
    assert "dave@example.org is added." in browser.js("document.body.innerText")
    # change a setting
    page.open(f"{base}/{LIST}/admin/settings")
    page.submit("document.querySelector('#s-subject_tag').value = '[try]';"
                " document.querySelector('main form button').click()")
    assert "set subject_tag [try]: done." in browser.js("document.body.innerText")
    # and a wrong one, shown with its field
    page.submit("document.querySelector('#s-max_size').value = 'big';"
                " document.querySelector('main form button').click()")
    assert "Nothing was changed" in browser.js("document.body.innerText")
    page.submit("document.querySelector('nav button').click()")     # sign out
    assert "signed out" in browser.js("document.body.innerText")
    page.open(f"{base}/{LIST}/admin/members")
    assert "Mail me a link" in browser.js("document.body.innerText")
    # a member changes their digest format
    page.open(f"{base}/manage/")
    page.submit(f"document.querySelector('#address').value = 'carol@example.com';"
                " document.querySelector('form button').click()")
    page.open(link_in(rs, "carol@example.com"))
    page.submit("document.querySelector('button').click()")
    assert LIST in browser.js("document.body.innerText")
    page.submit("document.querySelector('#digest0').checked = true;"
                " document.querySelector('#format0').value = 'plain';"
                " document.querySelector('button[value=save]').click()")
    assert "digest format plain" in browser.js("document.body.innerText")
    leave = redsky.leave_token(rs.verp_key(), {"name": "test", "domain": "lists.example.org"}, "bob@example.net")
    page.open(f"{base}/{LIST}/leave/{leave}")
    # what it did
    assert "dave@example.org" in members(rs) and rs.status()["held"] == 1
    assert json.loads(rs.run("lists", "--json", check=0).out)[1]["subject_tag"] == "[try]"
    carol = rs.members()["carol@example.com"]
    assert carol["digest"] and rs.db().execute(
        "SELECT digest_format FROM members WHERE list_id = 1 AND address = 'carol@example.com'").fetchone()[0] == "plain"
    assert len(page.pages) >= 20, page.pages


@pytest.mark.browser
def test_the_audit_can_fail(browser):
    page = Audited(browser, axe_source())
    browser.open("data:text/html,<!DOCTYPE html><html lang=en><title>t</title><main><form><input name=x>"
                 "</form></main>")
    with pytest.raises(AssertionError, match="label"):
        page.check()
    browser.open("data:text/html,<!DOCTYPE html><html lang=en><meta name=viewport content='width=device-width'>"
                 "<title>t</title><main><p>" + "w" * 300 + "</p></main>")
    with pytest.raises(AssertionError, match=r"\d+ <= \d+"):
        page.check()


def test_a_held_post_is_decided_once_even_by_two_at_a_time(lst):
    hold(lst, 1)
    config = redsky.Config(str(lst.config))
    store = redsky.open_store(config)
    held = store.held(store.db.execute("SELECT id FROM held").fetchone()[0])
    first, second = redsky.Outbox(), redsky.Outbox()
    for outbox in (first, second):          # both read the post before either decided
        notices = redsky.Notices(store, config, store.list_by_id(held["list_id"]), outbox)
        redsky.drop_held(held, notices, outbox.changes, True, "not today")
    first.commit(store, config.spool)
    with pytest.raises(redsky.StoreError, match="decided meanwhile"):
        second.commit(store, config.spool)
    store.close()
    assert [m["Subject"] for m in inbox(lst, "stranger@example.org")].count(
        "test@lists.example.org: your post was not distributed") == 1


def test_without_a_base_url_no_link_is_mailed_nor_made_of_the_host(lst):
    """A link made of the request's Host would let a forged Host have the owner mailed a link to
    another site: without [web] base_url, nothing is mailed, and the page says why."""
    status, _, page = wsgi(lst, ADMIN, headers={"HTTP_HOST": "evil.example"})
    assert "no [web] base_url" in page
    status, _, answer = wsgi(lst, ADMIN, "POST", {"form": hidden(page, "form"), "address": OWNER},
                             headers={"HTTP_HOST": "evil.example"})
    assert status == 200
    lst.run("send", check=0)
    assert lst.sent_to() == []


# -- what the web admin may make the host mail --------------------------------------------------

def wsgi_owner(rs, owner=OWNER, list_address=LIST):
    """An owner's session through the WSGI application (in this process): (cookie, CSRF token)."""
    config = redsky.Config(str(rs.config))
    store = redsky.open_store(config)
    link = urllib.parse.urlsplit(redsky.signin_link(config, store.verp_key, store.list_by_address(list_address),
                                                    owner))
    store.close()
    path = f"/{list_address}/admin/signin"
    status, headers, page = wsgi(rs, path, query=link.query)
    fields = {**dict(urllib.parse.parse_qsl(link.query)), "page": hidden(page, "page")}
    status, headers, _ = wsgi(rs, path, "POST", fields, headers={"HTTP_COOKIE": headers["Set-Cookie"].split(";")[0]})
    assert status == 303
    cookie = headers["Set-Cookie"].split(";")[0]
    return cookie, hidden(wsgi(rs, f"/{list_address}/admin/", headers={"HTTP_COOKIE": cookie})[2], "csrf")


def as_owner(rs, session, page, fields, list_address=LIST):
    cookie, csrf = session
    return wsgi(rs, f"/{list_address}/admin/{page}", "POST", {"csrf": csrf, **fields},
                headers={"HTTP_COOKIE": cookie})


def mails_to(rs, addresses):
    rs.run("send", check=0)
    return sum(rs.sent_to().count(a) for a in addresses)


def budget_used(rs, list_id=1):
    row = rs.db().execute("SELECT count FROM web_budgets WHERE key = ?", (f"admin mail {list_id}",)).fetchone()
    return row[0] if row else 0


def test_the_web_admin_mails_at_most_its_daily_budget_per_list_whatever_the_action(lst):
    """A session (an owner's, or a stolen one) cannot make the host mail without limit: welcomes,
    invitations, removal notices and the owners' notices count, mail by mail, against the list's
    day; what would mail past it is not done, and the page names it."""
    lst.write_config(web={"base_url": "http://lists.example.org/redsky", "admin_mail_per_day": "10"})
    lst.run("set", LIST, "welcome", "Cheap watches for $address!", check=0)
    session = wsgi_owner(lst)
    new = [f"new{n}@example.org" for n in range(20)]
    status, _, page = as_owner(lst, session, "members", {"action": "add", "how": "add", "welcome": "on",
                                                         "addresses": "\n".join(new[:6])})
    assert status == 200 and page.count("and welcomed") == 6 and "Not done" not in page
    status, _, page = as_owner(lst, session, "members", {"action": "add", "how": "invite",
                                                         "addresses": " ".join(new[6:12])})
    assert page.count("is invited") == 4 and "Not done: invite new10@example.org, new11@example.org" in page
    assert "[web] admin_mail_per_day" in page and 'role="alert"' in page
    assert budget_used(lst) == 10
    # spent: nothing that mails is done, in part or whole
    page = as_owner(lst, session, "members", {"action": "add", "how": "add", "welcome": "on",
                                              "addresses": f"{new[12]}, {new[13]}"})[2]
    assert f"Not done: add {new[12]}, {new[13]}" in page
    page = as_owner(lst, session, "members", {"action": "remove", "who": ["bob@example.net", new[0]]})[2]
    assert f"Not done: remove bob@example.net, {new[0]}" in page
    # what mails nobody still works
    page = as_owner(lst, session, "members", {"action": "add", "how": "add", "addresses": new[14]})[2]
    assert f"{new[14]} is added." in page
    assert as_owner(lst, session, "members", {"action": "ban", "patterns": "*@spam.example"})[0] == 200
    assert members(lst) == {"bob@example.net", "carol@example.com", *new[:6], new[14]}
    assert mails_to(lst, new + list(MEMBERS)) == 10 and budget_used(lst) == 10
    # another list's day is its own
    other = wsgi_owner(lst, OWNER2, OTHER)
    page = as_owner(lst, other, "members", {"action": "add", "how": "invite", "addresses": new[15]}, OTHER)[2]
    assert f"{new[15]} is invited" in page and budget_used(lst, 2) == 1
    # a new day, a new budget
    lst.db().execute("UPDATE web_budgets SET since = since - 86401 WHERE key = 'admin mail 1'").connection.commit()
    page = as_owner(lst, session, "members", {"action": "remove", "who": ["bob@example.net"]})[2]
    assert "bob@example.net is removed, and told." in page and budget_used(lst) == 1


def test_the_owners_notices_count_too(lst):
    """notify_owners and a long list of owners: one add without a welcome mails every owner; the
    day counts each of those mails, and stops the adds that would mail past it."""
    lst.write_config(web={"base_url": "http://lists.example.org/redsky", "admin_mail_per_day": "7"})
    others = [f"victim{n}@example.net" for n in range(4)]
    lst.run("set", LIST, "owners", ", ".join([OWNER] + others), check=0)
    lst.run("set", LIST, "notify_owners", "yes", check=0)
    session = wsgi_owner(lst)
    page = as_owner(lst, session, "members", {"action": "add", "how": "add", "addresses": "a@example.org"})[2]
    assert "a@example.org is added." in page and budget_used(lst) == 5         # five owners told
    page = as_owner(lst, session, "members", {"action": "add", "how": "add", "welcome": "on",
                                              "addresses": "b@example.org c@example.org"})[2]
    assert "Not done: add b@example.org, c@example.org" in page                # 2 + 5 > 2 left
    page = as_owner(lst, session, "members", {"action": "add", "how": "add", "addresses": "d@example.org"})[2]
    assert "Not done: add d@example.org" in page and "d@example.org" not in members(lst)
    assert mails_to(lst, [OWNER] + others) == 5 and budget_used(lst) == 5


def test_decisions_and_options_that_mail_wait_for_the_budget_too(lst):
    """Rejecting held posts and join requests (the sender is told) and turning a member's digests
    off (the posts waiting for the digest go out) mail people too: within the same day's budget.
    Discarding, approving and what sends nothing are done whatever is left."""
    lst.write_config(web={"base_url": "http://lists.example.org/redsky", "admin_mail_per_day": "2"})
    hold(lst, 3)
    lst.run("set-member", LIST, "bob@example.net", "digest", "on", check=0)
    lst.queue(post(subject="for the digest", sender="carol@example.com"), sender="carol@example.com", check=0)
    lst.run("set", LIST, "subscribe_policy", "approve", check=0)
    for who in ("joiner@example.org", "nope@example.org"):
        mail(lst, "test-join@lists.example.org", who)
    notice_links = re.findall(r"http://lists\.example\.org/redsky/\S+/admin/held/([0-9a-f]{32})",
                              " ".join(text(m) for m in inbox(lst, OWNER)))
    people = ["stranger@example.org", "joiner@example.org", "nope@example.org", "bob@example.net"]
    before = mails_to(lst, people)
    session = wsgi_owner(lst)
    page = wsgi(lst, ADMIN + "held", headers={"HTTP_COOKIE": session[0]})[2]
    ids = re.findall(r'name="held" value="(\d+)"', page)
    joins = re.findall(r'name="join" value="([0-9a-f]{32})"', page)
    page = as_owner(lst, session, "held", {"action": "reject", "held": ids, "reason": "spam"})[2]
    assert page.count("rejected; the sender is told why") == 2 and page.count("Not done: Held post") == 1
    assert lst.status()["held"] == 1 and budget_used(lst) == 2
    page = as_owner(lst, session, "held", {"action": "join-reject", "join": joins, "reason": "no"})[2]
    assert "Not done: reject the requests of" in page and "declined" not in page
    page = as_owner(lst, session, "held", {"action": "join-discard", "join": joins[:1]})[2]
    assert "request dropped" in page
    # the held notice's own link: a rejection waits too, and the link still works for the rest
    assert len(set(notice_links)) == 3
    (token,) = [t for t in set(notice_links) if lst.db().execute(
        "SELECT count(*) FROM pending WHERE token = ? AND used IS NULL", (t,)).fetchone()[0]]
    status, _, page = wsgi(lst, f"{ADMIN}held/{token}")
    form = hidden(page, "form")
    status, _, page = wsgi(lst, f"{ADMIN}held/{token}", "POST", {"form": form, "action": "reject"})
    assert status == 429 and "admin_mail_per_day" in page and lst.status()["held"] == 1
    status, _, page = wsgi(lst, f"{ADMIN}held/{token}", "POST", {"form": form, "action": "discard"})
    assert status == 200 and lst.status()["held"] == 0
    # a member's digests off would send the post that waits for the digest: not done
    status, _, page = as_owner(lst, session, "member", {"who": "bob@example.net"})
    assert status == 400 and "Not done: bob@example.net digest off" in page
    assert lst.members()["bob@example.net"]["digest"]
    assert mails_to(lst, people) - before == 2


# -- the sign-in forms take the same time whoever is typed ------------------------------------------

def _shape(sql):
    """A statement without its values (the addresses and keys differ, not the work)."""
    return re.sub(r"'(?:[^']|'')*'|\b\d+(?:\.\d+)?(?:e[+-]?\d+)?\b", "?", sql)


def test_a_signin_form_does_the_same_work_before_its_answer_whoever_is_typed(lst, monkeypatch):
    """Mailing a link (an owner's, a member's) takes a few milliseconds; done before the answer,
    they told an owner or a member from a stranger.  Before the answer, the database sees the same
    statements whoever is typed, and nothing is queued; the link is built and queued in the
    answer's close(), once a WSGI server has sent it."""
    lst.write_config(web={"base_url": "http://lists.example.org/redsky"})
    statements, real_open = [], redsky.open_store

    def traced(config, *args, **kwargs):
        store = real_open(config, *args, **kwargs)
        store.db.set_trace_callback(lambda sql: statements.append(_shape(sql)))
        return store
    monkeypatch.setattr(redsky, "open_store", traced)
    config = redsky.Config(str(lst.config))

    def queued():
        return lst.db().execute("SELECT count(*) FROM messages").fetchone()[0]
    n = 0
    for path, cases in ((ADMIN, {OWNER: 1, OWNER.upper(): 1, "stranger@example.org": 0, "bob@example.net": 0}),
                        ("/manage/", {"carol@example.com": 1, " Carol@Example.com": 1, OWNER: 0,
                                      "nobody@example.org": 0})):
        before = {}
        for typed, mailed in cases.items():
            n += 1
            remote = f"192.0.2.{n}"
            form = hidden(wsgi(lst, path, remote=remote)[2], "form")
            body = urllib.parse.urlencode({"form": form, "address": typed}).encode()
            environ = {"REQUEST_METHOD": "POST", "PATH_INFO": path, "SCRIPT_NAME": "", "QUERY_STRING": "",
                       "REMOTE_ADDR": remote, "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body),
                       "CONTENT_TYPE": "application/x-www-form-urlencoded"}
            count, spool = queued(), sorted(os.listdir(config.spool))
            del statements[:]
            answer = redsky.WebApp(config)(environ, lambda status, headers: None)
            page = b"".join(answer).decode()
            before[typed] = list(statements)
            assert "Check your mail" in page and queued() == count and sorted(os.listdir(config.spool)) == spool
            answer.close()              # the answer has gone: now the link, if any
            assert queued() == count + mailed, typed
        shapes = {tuple(work) for work in before.values()}
        assert len(shapes) == 1 and any("web_budgets" in s for s in next(iter(shapes))), before
    lst.run("send", check=0)
    assert sorted(lst.sent_to()) == ["carol@example.com"] * 2 + [OWNER] * 2


def test_web_listen_answers_before_the_work_that_waits_for_the_answer(lst):
    """`web --listen` sends the whole answer, then closes the application's result (where the
    link is mailed): the close() here waits until the client has read the answer."""
    lst.write_config(web={"base_url": "http://lists.example.org/redsky"})
    config = redsky.Config(str(lst.config))
    app, answered, seen = redsky.WebApp(config), threading.Event(), []

    def application(environ, start_response):
        result = app(environ, start_response)
        if environ["REQUEST_METHOD"] != "POST":
            return result

        class Waiting(list):
            def close(self):
                seen.append(answered.wait(20))          # False: closed before the client had it all
                result.close()
        return Waiting(result)
    server = redsky.WebServer(application, config, redsky.listen_socket("127.0.0.1", 0))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = "http://127.0.0.1:%d" % server.server_address[1]
        form = hidden(urllib.request.urlopen(base + ADMIN, timeout=30).read().decode(), "form")
        data = urllib.parse.urlencode({"form": form, "address": OWNER}).encode()
        with urllib.request.urlopen(urllib.request.Request(base + ADMIN, data=data), timeout=60) as r:
            assert "Check your mail" in r.read().decode()
        answered.set()
        for _ in range(300):
            if seen:
                break
            time.sleep(0.1)
        assert seen == [True]
        assert [m["Subject"] for m in inbox(lst, OWNER)] == [f"{LIST}: your sign-in link"]
    finally:
        server.stop()
        thread.join(30)


CGI_WAITING = """
import os, sys, time
sys.path.insert(0, sys.argv[1])
import redsky
flag, seen, mail_link = sys.argv[2], sys.argv[3], redsky.mail_signin_link

def waiting(*args, **kwargs):          # the link is mailed only once the web server has the answer
    for _ in range(400):
        if os.path.exists(flag):
            break
        time.sleep(0.05)
    with open(seen, "w") as fh:
        fh.write("after" if os.path.exists(flag) else "before")
    return mail_link(*args, **kwargs)
redsky.mail_signin_link = waiting
redsky.run_cgi()
"""


@pytest.mark.server
def test_as_a_cgi_script_the_answer_is_complete_before_the_link_is_mailed(lst, tmp_path):
    """The CGI gives the web server its end of file (stdout and stderr: fcgiwrap waits for both)
    before the work that waits for the answer."""
    lst.write_config(web={"base_url": "http://lists.example.org/redsky"})
    form = hidden(wsgi(lst, ADMIN, remote="192.0.2.77")[2], "form")
    body = urllib.parse.urlencode({"form": form, "address": OWNER}).encode()
    env = {k: v for k, v in os.environ.items() if k != "REDSKY_CONFIG"}
    env.update(GATEWAY_INTERFACE="CGI/1.1", REQUEST_METHOD="POST", PATH_INFO=ADMIN, SCRIPT_NAME="/redsky",
               QUERY_STRING="", SERVER_NAME="lists.example.org", SERVER_PORT="80", SERVER_PROTOCOL="HTTP/1.1",
               REMOTE_ADDR="192.0.2.77", REDSKY_CONFIG=str(lst.config), CONTENT_LENGTH=str(len(body)),
               CONTENT_TYPE="application/x-www-form-urlencoded")
    flag, seen = tmp_path / "answered", tmp_path / "seen"
    proc = subprocess.Popen([PYTHON, "-c", CGI_WAITING, str(ROOT), str(flag), str(seen)], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        proc.stdin.write(body)
        proc.stdin.close()
        out, err = proc.stdout.read(), proc.stderr.read()         # to their ends of file
        flag.touch()
        assert proc.wait(60) == 0
    finally:
        proc.kill()
        proc.wait()
    assert out.startswith(b"Status: 200 OK") and b"Check your mail" in out, err
    assert seen.read_text() == "after"
    assert [m["Subject"] for m in inbox(lst, OWNER)] == [f"{LIST}: your sign-in link"]


# -- what the log keeps --------------------------------------------------------------------------

@pytest.mark.parametrize("target, kept", [
    ("/test@lists.example.org/admin/held/0123456789abcdef0123456789abcdef", "/test@lists.example.org/admin/held/…"),
    ("/x@y/leave/DEADBEEFCAFE0123", "/x@y/leave/…"),
    ("/x@y/leave/%64%65adbeefcafe0123?a=1", "/x@y/leave/…?a=1"),
    ("/manage/signin?who=bob@example.net&token=66a1b2c3-0011223344556677-00112233445566778899aabbccddeeff",
     "/manage/signin?who=bob@example.net&token=…"),
    ("/x@y/admin/members?q=bob&csrf=short;form=abc&page=p&TOKEN=t", "/x@y/admin/members?q=bob&csrf=…;form=…&page=…&TOKEN=…"),
    ("/x@y/admin/?tok=0123456789abcdef0", "/x@y/admin/?tok=…"),
    ("/archive/x@y/2026-11.html", "/archive/x@y/2026-11.html"),
])
def test_the_log_keeps_no_capability(target, kept):
    assert redsky.log_target(target) == kept


@pytest.mark.server
def test_web_listen_logs_requests_without_their_tokens(lst):
    lst.write_config(redsky={"log": "redsky.log"})
    site = Web(lst)
    try:
        (msgid,) = hold(lst, 1)
        held = re.findall(r"/admin/held/([0-9a-f]{32})", text(inbox(lst, OWNER)[-1]))[0]
        leave = redsky.leave_token(lst.verp_key(), {"name": "test", "domain": "lists.example.org"},
                                   "bob@example.net")
        request(lst, "admin", OWNER)
        link = link_in(lst, OWNER)
        signin = urllib.parse.parse_qs(urllib.parse.urlsplit(link).query)["token"][0]
        fields, cookie = signin_page(site, link)
        session = sign_in(site, link)
        csrf = csrf_of(site, session)
        get(site, f"/{LIST}/admin/held/{held}")
        get(site, f"/{LIST}/admin/held/" + "".join(f"%{ord(c):02x}" for c in held))
        post_to(site, f"/{LIST}/leave/{leave}", {"List-Unsubscribe": "One-Click"})
        get(site, f"{ADMIN}members?csrf={csrf}", session)
        get(site, f"{ADMIN}members?q=" + fields["page"], session)
    finally:
        site.stop()
    logged = (lst.home / "redsky.log").read_text()
    assert logged.count('"GET /test@lists.example.org/admin/held/… HTTP/1.1" 200') == 2, logged
    assert f'"POST /{LIST}/leave/… HTTP/1.1" 200' in logged
    assert f"signin?who={OWNER}&token=… HTTP/1.1" in logged
    for secret in (held, leave, signin, csrf, fields["page"], *signin.split("-")[1:], *csrf.split("-")[1:]):
        assert secret not in logged, secret


# -- login CSRF: another site's page cannot sign its visitor in ---------------------------------

def test_another_sites_page_cannot_sign_its_visitor_in_as_someone_else(lst):
    """An attacker who got a sign-in link (their own) cannot have a victim's browser press its
    button: a POST counts only from the link's own page in the same browser (its cookie and the
    field signed for it), and never when the browser says it comes from another site."""
    lst.write_config(web={"base_url": "https://lists.example.org/redsky"})
    config = redsky.Config(str(lst.config))
    store = redsky.open_store(config)
    links = {"owner": urllib.parse.urlsplit(redsky.signin_link(config, store.verp_key, store.list_by_address(LIST),
                                                                OWNER)),
             "member": urllib.parse.urlsplit(redsky.signin_link(config, store.verp_key, None, "bob@example.net"))}
    store.close()
    sessions = 0
    for kind, link in links.items():
        path = link.path.replace("/redsky", "", 1)
        status, headers, page = wsgi(lst, path, query=link.query)
        cookie = headers["Set-Cookie"].split(";")[0]
        assert status == 200 and cookie.startswith("redsky_signin=") and "Secure" in headers["Set-Cookie"]
        assert headers["Referrer-Policy"] == "same-origin"      # so that its POST's Origin names this site
        fields = {**dict(urllib.parse.parse_qsl(link.query)), "page": hidden(page, "page")}
        other_scope = page_pass(lst, kind, OTHER if kind == "owner" else LIST)
        refused = {
            "no cookie (another site's form, an old browser)": (fields, {}),
            "no page field": ({**fields, "page": ""}, {"HTTP_COOKIE": cookie}),
            "another browser's cookie": (fields, {"HTTP_COOKIE": "redsky_signin=" + "x" * 22}),
            "another page's field": ({**fields, **other_scope[0]}, {"HTTP_COOKIE": other_scope[1]}),
            "Sec-Fetch-Site: cross-site": (fields, {"HTTP_COOKIE": cookie, "HTTP_SEC_FETCH_SITE": "cross-site"}),
            "Sec-Fetch-Site: same-site (a sibling host)": (fields, {"HTTP_COOKIE": cookie,
                                                                   "HTTP_SEC_FETCH_SITE": "same-site"}),
            "Origin: another site": (fields, {"HTTP_COOKIE": cookie, "HTTP_ORIGIN": "https://evil.example"}),
            "Origin: http, not https": (fields, {"HTTP_COOKIE": cookie, "HTTP_ORIGIN": "http://lists.example.org"}),
            "Origin: null (a no-referrer page elsewhere), no Sec-Fetch-Site": (
                fields, {"HTTP_COOKIE": cookie, "HTTP_ORIGIN": "null"}),
        }
        answers = set()
        for name, (sent, headers) in refused.items():
            status, got, page = wsgi(lst, path, "POST", sent, headers=headers)
            assert status == 400 and "redsky_owner" not in str(got) and "redsky_member" not in str(got), name
            answers.add(page)
        assert len(answers) == 1 and "Please open the link again" in answers.pop()
        assert lst.db().execute("SELECT count(*) FROM web_sessions").fetchone()[0] == sessions
        # the page's own button: with the cookie, from this site (as a browser says it, or does not)
        status, got, _ = wsgi(lst, path, "POST", fields, headers={
            "HTTP_COOKIE": f"other=1; {cookie}", "HTTP_SEC_FETCH_SITE": "same-origin",
            "HTTP_ORIGIN": "null"})
        sessions += 1
        assert status == 303 and got["Set-Cookie"].startswith(f"redsky_{kind}=")
    # an old browser that says nothing of where a POST comes from, and the origin spelled with its port
    status, headers, page = wsgi(lst, "/manage/signin", query=links["member"].query,
                                 headers={"HTTP_COOKIE": cookie})
    assert headers["Set-Cookie"].split(";")[0] == cookie            # the same cookie, kept
    store = redsky.open_store(config)
    again = urllib.parse.urlsplit(redsky.signin_link(config, store.verp_key, None, "carol@example.com"))
    store.close()
    page = wsgi(lst, "/manage/signin", query=again.query, headers={"HTTP_COOKIE": cookie})[2]
    status, got, _ = wsgi(lst, "/manage/signin", "POST", {**dict(urllib.parse.parse_qsl(again.query)),
                                                          "page": hidden(page, "page")},
                          headers={"HTTP_COOKIE": cookie, "HTTP_ORIGIN": "https://Lists.Example.org:443"})
    assert status == 303


def test_the_forms_that_mail_links_refuse_another_sites_post(lst):
    lst.write_config(web={"base_url": "http://lists.example.org/redsky"})
    for path, address in ((ADMIN, OWNER), ("/manage/", "bob@example.net")):
        for n, headers in enumerate(({"HTTP_SEC_FETCH_SITE": "cross-site"}, {"HTTP_ORIGIN": "http://evil.example"},
                                     {"HTTP_SEC_FETCH_SITE": "same-site", "HTTP_ORIGIN": "null"})):
            remote = f"192.0.2.{n + 1}"
            form = hidden(wsgi(lst, path, remote=remote)[2], "form")
            status, _, page = wsgi(lst, path, "POST", {"form": form, "address": address}, remote=remote,
                                   headers=headers)
            assert status == 400 and "Please try again" in page
        form = hidden(wsgi(lst, path, remote="192.0.2.9")[2], "form")
        status, _, page = wsgi(lst, path, "POST", {"form": form, "address": address}, remote="192.0.2.9",
                               headers={"HTTP_SEC_FETCH_SITE": "same-origin", "HTTP_ORIGIN": "null"})
        assert status == 200 and "Check your mail" in page
    lst.run("send", check=0)
    assert sorted(lst.sent_to()) == ["bob@example.net", OWNER]
