"""The web: `redsky.py web` over HTTP on 127.0.0.1 (urllib), RFC 8058
one-click unsubscribe on the copies, the archive pages, the subscribe page,
CGI and WSGI, and a real browser (headless Chromium) rendering the pages."""

import grp
import html.parser
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET

import pytest

import redsky  # noqa: E402  (conftest put it on the path)
from conftest import REDSKY, REDSKY_MAIN, ROOT, Web, as_nobody, parse, post, require, wsgi
from smtpsink import free_port

LIST_OPTIONS = ("--access", "open")
MEMBERS = ("bob@example.net", "carol@example.com")
LIST = "test@lists.example.org"


@pytest.fixture
def web(lst):
    lst.run("set", LIST, "archive", "public", check=0)
    # forms sent back at once, many from one client (127.0.0.1): what the protections allow is
    # tested with their defaults in-process (test_subscribe_form_* below)
    lst.write_config(web={"form_min_age": "0s", "subscribe_per_client": "0"})
    server = Web(lst)
    yield server
    server.stop()


def one_click(data):
    """(https URL, mailto) of a copy's List-Unsubscribe, and its List-Unsubscribe-Post."""
    msg = parse(data)
    urls = re.findall(r"<([^>]+)>", str(msg["List-Unsubscribe"]))
    return urls, msg["List-Unsubscribe-Post"]


def sent_copies(rs):
    return {argv[-1]: data for argv, data in rs.sent()}


# --- RFC 8058 on the copies -------------------------------------------------

@pytest.mark.server
def test_every_per_recipient_copy_offers_one_click_unsubscribe(web):
    import redsky
    web.rs.run("set", LIST, "footer", "Leave with one click: $unsubscribe_personal", check=0)
    web.rs.queue(post(), check=0)
    web.rs.run("send", check=0)
    copies = sent_copies(web.rs)
    assert set(copies) == set(MEMBERS)
    tokens = set()
    for member, data in copies.items():
        (url, mailto), post_field = one_click(data)
        token = redsky.leave_token(web.rs.verp_key(), {"name": "test", "domain": "lists.example.org"}, member)
        assert url == f"{web.base}/redsky/{LIST}/leave/{token}"
        assert mailto == f"mailto:test-leave+{token}@lists.example.org"
        assert post_field == "List-Unsubscribe=One-Click"
        assert url in parse(data).get_body().get_content()        # $unsubscribe_personal is the link
        assert parse(data)["List-Archive"] == f"<{web.base}/redsky/archive/{LIST}/>"
        tokens.add(token)
    assert len(tokens) == 2


@pytest.mark.server
def test_one_click_headers_over_smtp_data_and_bdat_are_the_same(web):
    """The SMTP transport writes copies with CRLF (BDAT sends them as they
    are): the one-click fields keep their line ends and their folding."""
    from smtpsink import SMTPSink
    copies = {}
    for chunking in (False, True):
        with SMTPSink(chunking=chunking) as sink:
            web.rs.write_config(send={"transport": "smtp", "smtp_host": "127.0.0.1", "smtp_port": sink.port})
            web.rs.queue(post(subject=f"chunking {chunking}", msgid=f"<c{chunking}@x>"), check=0)
            web.rs.run("send", check=0)
        copies[chunking] = {m[1][0]: m[2] for m in sink.messages}
    for member in MEMBERS:
        data = copies[True][member]
        assert data.replace(b"chunking True", b"chunking False").replace(b"cTrue@", b"cFalse@") \
            == copies[False][member]
        head = data.split(b"\r\n\r\n")[0]
        assert b"\n" not in head.replace(b"\r\n", b"")             # every line end is CRLF
        assert re.search(rb"\r\nList-Unsubscribe: <http://[^>]+/leave/[0-9a-f]{16}>,\r\n <mailto:test-leave\+"
                         rb"[0-9a-f]{16}@lists.example.org>\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n",
                         head), head


@pytest.mark.server
def test_digests_offer_one_click_unsubscribe_and_the_archive(web):
    web.rs.run("set-member", LIST, "carol@example.com", "digest", "on", check=0)
    web.rs.run("set", LIST, "digest_size_threshold", "1", check=0)
    web.rs.queue(post(body="x" * 2000 + "\n"), check=0)
    web.rs.run("send", check=0)
    (digest,) = [d for a, d in web.rs.sent() if a[-1] == "carol@example.com"]
    (url, mailto), post_field = one_click(digest)
    assert url.startswith(f"{web.base}/redsky/{LIST}/leave/") and post_field == "List-Unsubscribe=One-Click"
    assert parse(digest)["List-Archive"] == f"<{web.base}/redsky/archive/{LIST}/>"
    assert web.request(url, data=b"List-Unsubscribe=One-Click")[0] == 200
    assert "carol@example.com" not in web.rs.members()


@pytest.mark.server
def test_batched_copies_keep_the_generic_mailto(web):
    web.rs.write_config(send={"verp": "off"})
    web.rs.queue(post(), check=0)
    web.rs.run("send", check=0)
    (data,) = [d for _, d in web.rs.sent()]
    assert one_click(data) == (["mailto:test-leave@lists.example.org"], None)


def test_no_base_url_no_one_click_header(lst):
    lst.queue(post(), check=0)
    lst.run("send", check=0)
    for _, data in lst.sent():
        urls, post_field = one_click(data)
        assert post_field is None and all(u.startswith("mailto:test-leave+") for u in urls)


# --- one-click unsubscribe over HTTP ---------------------------------------------

def leave_url(web, member):
    web.rs.queue(post(subject=f"for {member}"), check=0)
    web.rs.run("send", check=0)
    return one_click(sent_copies(web.rs)[member])[0][0]


@pytest.mark.server
def test_get_shows_a_button_and_never_unsubscribes(web):
    url = leave_url(web, "bob@example.net")
    for _ in range(3):                      # a link scanner, a previewer, the member
        status, headers, body = web.request(url)
        assert status == 200 and '<form method="post">' in body
        assert 'name="List-Unsubscribe" value="One-Click"' in body
    status, _, _ = web.request(url, method="HEAD")
    assert status == 200
    assert set(web.rs.members()) == set(MEMBERS)


@pytest.mark.server
def test_post_one_click_unsubscribes_at_once_and_says_goodbye(web):
    url = leave_url(web, "bob@example.net")
    before = len(web.rs.sent())
    status, headers, body = web.request(url, data=b"List-Unsubscribe=One-Click",
                                        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200 and "no longer subscribed" in body
    assert "Location" not in headers and "Set-Cookie" not in headers
    assert set(web.rs.members()) == {"carol@example.com"}
    web.rs.run("send", check=0)
    goodbye = [parse(d) for a, d in web.rs.sent()[before:] if a[-1] == "bob@example.net"]
    assert len(goodbye) == 1 and goodbye[0]["Subject"].startswith("Goodbye from")
    again = web.request(url, data=b"List-Unsubscribe=One-Click")      # a repeat: the same answer
    assert again[0] == 200 and again[2] == body


@pytest.mark.server
def test_multipart_form_data_one_click_works_too(web):
    url = leave_url(web, "carol@example.com")
    body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\nOne-Click\r\n--XyZ--\r\n")
    status, _, _ = web.request(url, data=body, headers={"Content-Type": "multipart/form-data; boundary=XyZ"})
    assert status == 200
    assert set(web.rs.members()) == {"bob@example.net"}


@pytest.mark.server
def test_wrong_token_or_body_changes_nothing(web):
    url = leave_url(web, "bob@example.net")
    token = url.rsplit("/", 1)[1]
    wrong = [url[:-1] + ("0" if token[-1] != "0" else "1"), url.replace(token, "f" * 16)]
    web.rs.run("newlist", "other@lists.example.org", check=0)
    web.rs.run("subscribe", "other@lists.example.org", "bob@example.net", check=0)
    wrong.append(url.replace(f"/{LIST}/", "/other@lists.example.org/"))   # bob's token, another list
    answers = set()
    for bad in wrong:
        status, _, body = web.request(bad, data=b"List-Unsubscribe=One-Click")
        answers.add((status, body.replace("other@", "test@")))
    assert len(answers) == 1 and answers.pop()[0] == 200          # no oracle for who is subscribed
    assert web.request(url, data=b"List-Unsubscribe=Yes")[0] == 400
    assert web.request(url, data=b"")[0] == 400
    assert web.request(url, data=b"List-Unsubscribe=One-Click&x=" + b"a" * 20000)[0] == 413
    assert web.request(url.replace(token, "zz" + token[2:]))[0] == 404
    assert set(web.rs.members()) == set(MEMBERS)
    assert "bob@example.net" in web.rs.members("other@lists.example.org")


@pytest.mark.server
def test_every_response_has_safe_headers(web):
    for path, method in (("/", "GET"), (f"/{LIST}/", "GET"), (f"/archive/{LIST}/", "GET"), ("/nowhere", "GET"),
                         ("/", "DELETE")):
        status, headers, body = web.request(path, method=method)
        assert status in (200, 404, 405), path
        csp = headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp and "script" not in csp
        assert headers["X-Content-Type-Options"] == "nosniff" and headers["Referrer-Policy"] == "no-referrer"
        assert "<script" not in body


# --- the subscribe page -----------------------------------------------------------

def subscribe(web, address, url=f"/{LIST}/", **fields):
    """POST the subscribe form at ``url`` as a browser does: the page's hidden fields (its signed
    token), the address, and ``fields``; (status, headers, body)."""
    status, _, page = web.request(url)
    assert status == 200, page
    hidden = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', page))
    return web.request(url, data=urllib.parse.urlencode({**hidden, "address": address, **fields}).encode())


@pytest.mark.server
def test_subscribe_form_starts_a_double_opt_in_and_tells_nothing(web):
    status, _, page = web.request(f"/{LIST}/")
    assert status == 200 and 'name="address"' in page and 'method="post"' in page
    web.rs.run("set", LIST, "description", "Talk about <tests> & more", check=0)
    assert "Talk about &lt;tests&gt; &amp; more" in web.request(f"/{LIST}/")[2]
    answers = {}
    for address in ("new@example.com", "bob@example.net"):
        status, _, body = subscribe(web, address)
        answers[address] = (status, body.replace(address, "ADDR"))
    assert answers["new@example.com"] == answers["bob@example.net"]
    assert "new@example.com" not in web.rs.members()
    pending = web.rs.run("pending", LIST, "--json", check=0).out
    assert "new@example.com" in pending and "bob@example.net" not in pending
    web.rs.run("send", check=0)
    (confirm,) = [parse(d) for a, d in web.rs.sent() if a[-1] == "new@example.com"]
    assert "confirm" in confirm["Subject"]
    assert subscribe(web, "not-an-address")[0] == 400
    assert subscribe(web, "<script>@x")[0] == 400


@pytest.mark.server
def test_subscribe_form_keeps_the_rate_limit(web):
    for _ in range(8):
        subscribe(web, "victim@example.com")
    web.rs.run("send", check=0)
    mails = [parse(d)["Subject"] for a, d in web.rs.sent() if a[-1] == "victim@example.com"]
    assert 1 <= len(mails) <= 3 + 1 and "ignored until" in mails[-1]     # [commands] max_confirmations


@pytest.mark.server
def test_closed_list_page_has_no_form(web):
    web.rs.run("set", LIST, "subscribe_policy", "closed", check=0)
    status, _, page = web.request(f"/{LIST}/")
    assert status == 200 and "<form" not in page and "no new members" in page
    assert web.request(f"/{LIST}/", data=b"address=a@example.com")[0] == 200
    assert "a@example.com" not in web.rs.run("pending", "--json", check=0).out


# --- archive pages ----------------------------------------------------------------

THREAD = [
    post(subject="Plans for Friday", body="Shall we meet?\nbob@example.net knows the way: https://example.org/map\n",
         msgid="<p1@example.org>", sender="alice@example.org"),
    post(subject="Re: Plans for Friday", body="> Shall we meet?\nYes.\n", msgid="<p2@example.org>",
         extra="In-Reply-To: <p1@example.org>\nReferences: <p1@example.org>\n", sender="carol@example.com"),
    post(subject="RE: [test] plans for friday", body="Count me in.\n", msgid="<p3@example.org>",
         sender="dave@example.org"),
    post(subject="Something else", body="Another topic with the word zanzibar.\n", msgid="<p4@example.org>"),
]


@pytest.mark.server
def test_archive_index_month_thread_post_page_feed_and_search(web):
    for data in THREAD:
        assert web.rs.queue(data).returncode == 0
    status, _, index = web.request(f"/archive/{LIST}/")
    assert status == 200 and '<a href="2026-11.html">2026-11</a>' in index and "(4 posts)" in index
    status, _, month = web.request(f"/archive/{LIST}/2026-11.html")
    items = re.findall(r'<li class="d(\d+)"><a href="(\d+)\.html">', month)
    # post 2 answers 1 by References; 3 joins by its subject, under the newest post with it
    assert items == [("0", "1"), ("1", "2"), ("2", "3"), ("0", "4")]
    status, headers, page = web.request(f"/archive/{LIST}/2.html")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "<h1>Re: Plans for Friday</h1>" in page and '<a href="1.html">post 1</a>' in page
    assert '<span class="q">&gt; Shall we meet?</span>' in page
    first = web.request(f"/archive/{LIST}/1.html")[2]
    assert '<a href="https://example.org/map" rel="nofollow noopener noreferrer">' in first
    assert "bob@example.net" not in first and "b\u2026@example.net" in first
    assert "alice@example.org" not in first and "<td><bdi>Alice</bdi></td>" in first
    status, headers, feed = web.request(f"/archive/{LIST}/atom.xml")
    assert headers["Content-Type"].startswith("application/atom+xml")
    ns = {"a": "http://www.w3.org/2005/Atom"}
    root = ET.fromstring(feed)
    entries = root.findall("a:entry", ns)
    assert [e.find("a:title", ns).text for e in entries][0] == "Something else" and len(entries) == 4
    assert entries[0].find("a:link", ns).get("href") == f"{web.base}/redsky/archive/{LIST}/4.html"
    status, _, found = web.request(f"/archive/{LIST}/search?q=Zanzibar")
    assert status == 200 and '<a href="4.html"><bdi>Something else</bdi></a>' in found and "1.html" not in found
    assert web.request(f"/archive/{LIST}/search?q=%3Cscript%3E")[2].count("<script") == 0
    assert web.request(f"/archive/{LIST}/99.html")[0] == 404
    assert web.request(f"/archive/{LIST}/../redsky.db")[0] == 404
    assert web.request(f"/archive/{LIST}")[0] == 200          # redirected to the slash


@pytest.mark.server
def test_pages_are_written_as_posts_come_and_can_be_rebuilt(web):
    folder = web.rs.home / "pages" / LIST
    web.rs.queue(THREAD[0], check=0)
    assert sorted(p.name for p in folder.glob("*.html")) == ["1.html", "2026-11.html", "index.html"]
    web.rs.queue(THREAD[1], check=0)
    before = {p.name: p.read_bytes() for p in folder.glob("*.html")}
    shutil.rmtree(folder)
    r = web.rs.run("archive", "html", LIST, check=0)
    assert "2 posts" in r.out
    after = {p.name: p.read_bytes() for p in folder.glob("*.html")}
    assert after == before


@pytest.mark.server
def test_private_archives_are_not_published(web):
    web.rs.queue(THREAD[0], check=0)
    assert web.request(f"/archive/{LIST}/1.html")[0] == 200
    r = web.rs.run("set", LIST, "archive", "private", check=0)
    assert "removed" in r.out
    assert not (web.rs.home / "pages" / LIST).exists()
    for path in (f"/archive/{LIST}/", f"/archive/{LIST}/1.html", f"/archive/{LIST}/atom.xml",
                 f"/archive/{LIST}/search?q=Friday"):
        assert web.request(path)[0] == 404, path
    assert LIST not in web.request("/")[2]
    web.rs.queue(THREAD[1], check=0)                         # archived, not published
    assert not (web.rs.home / "pages" / LIST).exists()
    assert "2 posts" in web.rs.run("set", LIST, "archive", "public", check=0).out
    assert web.request(f"/archive/{LIST}/2.html")[0] == 200


@pytest.mark.server
def test_forgetting_an_author_takes_their_posts_off_the_pages(web):
    for data in THREAD[:3]:
        web.rs.queue(data, check=0)
    web.rs.run("forget", "carol@example.com", "--archive", check=0)
    index = web.request(f"/archive/{LIST}/2026-11.html")[2]
    assert "Carol" not in index and index.count("<li class=") == 2


class Tags(html.parser.HTMLParser):
    """Every start tag with its attributes, and every script-ish thing."""

    def __init__(self):
        super().__init__()
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


ALLOWED_PAGE_TAGS = {"html", "head", "meta", "title", "style", "body", "main", "nav", "h1", "table", "tr", "th", "td",
                     "bdi", "mark",
                     "hr", "div", "span", "p", "ul", "li", "a", "small", "form", "input", "button", "label",
                     "br", "b", "i", "em", "strong", "u", "s", "ol", "blockquote", "pre", "code", "h2", "h3",
                     "h4", "h5", "h6", "thead", "tbody", "tfoot", "dl", "dt", "dd", "sub", "sup", "big", "tt"}


def assert_no_active_content(page):
    parser = Tags()
    parser.feed(page)
    for tag, attrs in parser.tags:
        assert tag in ALLOWED_PAGE_TAGS, tag
        assert not [a for a in attrs if a.startswith("on") or a in ("style", "src", "srcdoc", "formaction")], attrs
        if tag == "a" and "href" in attrs:
            assert re.match(r"(https?://|[\w.-]*\.(html|eml|mbox)$|thread/\d+\.(html|mbox)$|\./$|att/|\.\./|#p\d+$"
                            r"|atom\.xml$|admin/$|search\?q=[^:]*$)", attrs["href"]), attrs
    assert parser.tags.count(("style", {})) == 1        # only the page's own stylesheet


HOSTILE_HTML = (
    '<p onclick="alert(1)" style="x">Hi <script>alert(2)</script><SCRIPT SRC=//evil/x.js></SCRIPT>'
    '<a href="javascript:alert(3)">js</a> <a href=" jav&#x09;ascript:alert(4)">tab</a>'
    '<a href="data:text/html,<script>alert(5)</script>">data</a> <a href="https://ok.example/?a=1&b=2">ok</a>'
    '<img src="http://tracker.example/p.gif" onerror="alert(6)"><iframe src="https://evil/"></iframe>'
    '<svg onload="alert(7)"><script>alert(8)</script></svg><style>body{display:none}</style>'
    '<form action="https://evil/"><input name=x></form><object data="x"></object>'
    '<a href="https://x" onmouseover="alert(9)" target=_blank>x</a><b/onmouseover=alert(10)>bold</b>'
    '<td colspan="2" onclick="x">cell</td><math><mtext><table><mglyph><style><img src=x onerror=alert(11)>'
    '<!-- <script>alert(12)</script> --><noscript><p title="</noscript><img src=x onerror=alert(13)>">'
    '<base href="https://evil/"><meta http-equiv="refresh" content="0;url=https://evil/"></p>')


def hostile_post(n, subject, name, html, filename):
    return (f'From: "{name}" <mallory@example.org>\nTo: {LIST}\nSubject: {subject}\n'
            f"Message-ID: <h{n}@example.org>\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=B\n\n"
            f"--B\nContent-Type: text/html; charset=utf-8\n\n{html}\n"
            f'--B\nContent-Type: text/html\nContent-Disposition: attachment; filename="{filename}"\n\n'
            f"<script>alert('attachment')</script>\n--B--\n").encode()


@pytest.mark.server
def test_hostile_posts_make_pages_without_active_content(web):
    cases = [
        ("<script>alert(1)</script>", "<img src=x onerror=alert(1)>", HOSTILE_HTML, "<script>.html"),
        ('"><svg onload=alert(1)>', "javascript:alert(1)", "<a href='javascript:alert(1)'>x</a>", "../../x.html"),
        ("=?utf-8?q?=3Cscript=3Ealert(1)=3C/script=3E?=", "=?utf-8?q?=3Cb_onclick=3Dx=3E?=", "<p>ok</p>",
         "..\\..\\boot.ini"),
    ]
    for n, (subject, name, html_part, filename) in enumerate(cases, 1):
        assert web.rs.queue(hostile_post(n, subject, name, html_part, filename)).returncode == 0
    big = "<p onmouseover=x>" + "<b>word</b> <script>x</script>" * 340_000           # ~10 MB of HTML
    assert len(big) > 10_000_000
    assert web.rs.queue(hostile_post(4, "big", "Big", big, "big.html"), timeout=300).returncode == 0
    folder = web.rs.home / "pages" / LIST
    pages = [p for p in folder.iterdir() if p.suffix == ".html"]
    assert len(pages) == 4 + 2
    for page in pages:
        assert_no_active_content(page.read_text())
    for att in (folder / "att").iterdir():
        assert re.fullmatch(r"\d+-\d+-[A-Za-z0-9][A-Za-z0-9._-]*", att.name), att.name
    status, headers, body = web.request(f"/archive/{LIST}/att/" + sorted(os.listdir(folder / "att"))[0])
    assert headers["Content-Type"] == "application/octet-stream"
    assert headers["Content-Disposition"].startswith("attachment; filename=")
    first = (folder / "1.html").read_text()
    assert '<a href="https://ok.example/?a=1&amp;b=2" rel="nofollow noopener noreferrer">ok</a>' in first
    assert "[image]" in first and "alert(2)" not in first
    assert len((folder / "4.html").read_bytes()) < 2_000_000          # the part is cut, said so
    assert "more characters not shown" in (folder / "4.html").read_text()
    feed = (folder / "atom.xml").read_text()
    ET.fromstring(feed)
    assert "<script" not in feed


# --- CGI and WSGI ------------------------------------------------------------------

def cgi(rs, path, method="GET", body=b"", query="", umask=None):
    env = {k: v for k, v in os.environ.items() if k != "REDSKY_CONFIG"}
    env.update(GATEWAY_INTERFACE="CGI/1.1", REQUEST_METHOD=method, PATH_INFO=path, SCRIPT_NAME="/cgi-bin/redsky",
               QUERY_STRING=query, SERVER_NAME="lists.example.org", SERVER_PORT="443", SERVER_PROTOCOL="HTTP/1.1",
               REDSKY_CONFIG=str(rs.config), CONTENT_LENGTH=str(len(body)),
               CONTENT_TYPE="application/x-www-form-urlencoded")
    r = subprocess.run(["python3", REDSKY], input=body, capture_output=True, env=env, timeout=60,
                       preexec_fn=None if umask is None else lambda: os.umask(umask))
    head, _, page = r.stdout.partition(b"\r\n\r\n")
    return head.decode(), page.decode(), r.stderr.decode()


@pytest.mark.server
def test_runs_as_a_cgi_script(web):
    web.rs.queue(THREAD[0], check=0)
    head, page, err = cgi(web.rs, f"/archive/{LIST}/1.html")
    assert head.startswith("Status: 200 OK") and "Content-Security-Policy:" in head, err
    assert "<h1>Plans for Friday</h1>" in page
    url = leave_url(web, "carol@example.com")
    head, page, err = cgi(web.rs, url.split("/redsky", 1)[1], "POST", b"List-Unsubscribe=One-Click")
    assert head.startswith("Status: 200 OK"), err
    assert "carol@example.com" not in web.rs.members()
    head, _, _ = cgi(web.rs, "/nothing/here")
    assert head.startswith("Status: 404")


def test_wsgi_application_is_importable(lst, monkeypatch):
    import io
    import redsky
    monkeypatch.setenv("REDSKY_CONFIG", str(lst.config))
    lst.run("set", LIST, "archive", "public", check=0)
    seen = {}

    def start_response(status, headers):
        seen["status"], seen["headers"] = status, dict(headers)
    umask = os.umask(0o022)                 # what a WSGI server's process may have
    try:
        body = b"".join(redsky.application({"REQUEST_METHOD": "GET", "PATH_INFO": f"/{LIST}/",
                                            "wsgi.input": io.BytesIO()}, start_response))
        assert os.umask(0o022) == 0o007     # [redsky] umask, as main() would have set it
    finally:
        os.umask(umask)
    assert seen["status"] == "200 OK" and b'name="address"' in body
    assert seen["headers"]["X-Content-Type-Options"] == "nosniff"


@pytest.mark.server
def test_cgi_and_a_wsgi_server_write_with_the_configured_umask(web):
    """A web server runs the CGI script, or loads `application`, with its
    own umask (022: files anyone may read); what redsky writes follows
    [redsky] umask all the same (0660, as the pipe's)."""
    spool = web.rs.home / "spool"

    def new_files(before):
        return {p: p.stat().st_mode & 0o777 for p in spool.glob("*.eml") if p not in before}
    before = set(spool.glob("*.eml"))
    form = aged_form(web.rs, remote="")             # the form's token, for a client the script cannot name
    head, _, err = cgi(web.rs, f"/{LIST}/", "POST", f"form={form}&address=cgi-mask@example.com".encode(),
                       umask=0o022)
    assert head.startswith("Status: 200"), err
    written = new_files(before)
    assert written and set(written.values()) == {0o660}, {p.name: oct(m) for p, m in written.items()}
    before = set(spool.glob("*.eml"))
    code = ("import io, os, sys; os.umask(0o022); sys.path.insert(0, sys.argv[1]); import redsky; "
            "body = sys.argv[3].encode(); "
            "env = {'REQUEST_METHOD': 'POST', 'PATH_INFO': sys.argv[2], 'CONTENT_LENGTH': str(len(body)), "
            "'CONTENT_TYPE': 'application/x-www-form-urlencoded', 'wsgi.input': io.BytesIO(body)}; "
            "print(b''.join(redsky.application(env, lambda status, headers: print(status))))")
    r = subprocess.run([sys.executable, "-c", code, str(ROOT), f"/{LIST}/",
                        f"form={aged_form(web.rs, remote='')}&address=wsgi-mask@example.com"], capture_output=True, text=True,
                       env={**os.environ, "REDSKY_CONFIG": str(web.rs.config)}, timeout=60)
    assert r.stdout.startswith("200 OK"), r.stderr
    written = new_files(before)
    assert written and set(written.values()) == {0o660}, {p.name: oct(m) for p, m in written.items()}


@pytest.mark.server
def test_web_refuses_a_bad_listen_address(lst):
    assert lst.run("web", "--listen", "nonsense", subprocess=True).returncode == 64      # a server: its own process
    port = free_port()
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        r = lst.run("web", "--listen", f"127.0.0.1:{port}", subprocess=True)
    assert r.returncode == 78 and "cannot listen" in r.err and "Traceback" not in r.err


# --- doctor: base_url and the DKIM signer -------------------------------------------

def test_doctor_checks_base_url_and_the_dkim_signer(lst, tmp_path):
    out = lst.run("doctor").out
    assert "WARN  [web] base_url is not set" in out
    lst.write_config(web={"base_url": "http://lists.example.org/redsky", "dkim_signers": ""})
    out = lst.run("doctor").out
    assert "is plain http" in out and "no DKIM signer's settings found" in out
    opendkim, rspamd = tmp_path / "opendkim.conf", tmp_path / "rspamd" / "dkim_signing.conf"
    rspamd.parent.mkdir()
    opendkim.write_text("Syslog yes\n# SignHeaders List-Unsubscribe,List-Unsubscribe-Post\nOversignHeaders From\n")
    rspamd.write_text('sign_headers = "(o)from:(x)sender:list-unsubscribe";\n')
    lst.write_config(web={"base_url": "https://lists.example.org/redsky", "dkim_signers": f"{opendkim}, {rspamd}"})
    out = lst.run("doctor").out
    assert f"WARN  {opendkim} does not sign list-unsubscribe and list-unsubscribe-post" in out
    assert "SignHeaders From,To,Cc,Subject,Date,Message-ID" in out and "List-Unsubscribe-Post" in out
    assert f"WARN  {rspamd} does not sign list-unsubscribe-post" in out
    assert "one-click unsubscribe links point to https://lists.example.org/redsky" in out
    opendkim.write_text("SignHeaders From, Subject, List-Unsubscribe, List-Unsubscribe-Post\n")
    rspamd.write_text('sign_headers = "(o)from:list-unsubscribe:(x)list-unsubscribe-post";\n')
    out = lst.run("doctor").out
    assert f"OK    {opendkim} signs" in out and f"OK    {rspamd} signs" in out
    lst.write_config(web={"base_url": "lists.example.org"})
    assert "FAIL  [web] base_url 'lists.example.org' is not an http(s) URL" in lst.run("doctor").out


# --- a real browser ----------------------------------------------------------------

def chromium():
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        require("no chromium (Debian: apt-get install chromium)", "REDSKY_REQUIRE_CHROMIUM")
    return exe


def render(exe, url, tmp_path):
    """The DOM headless Chromium made of ``url``, and its console messages."""
    r = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        f"--user-data-dir={tmp_path}/chromium", "--enable-logging=stderr", "--v=0",
                        "--dump-dom", url], capture_output=True, timeout=120)
    console = [line for line in r.stderr.decode("utf-8", "replace").splitlines() if ":CONSOLE" in line]
    return r.returncode, r.stdout.decode("utf-8", "replace"), console


def visible_text(dom):
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", re.sub(r"(?s)<(style|title)>.*?</\1>", "", dom)))


@pytest.mark.server
@pytest.mark.browser
def test_a_real_browser_renders_the_pages_without_errors(web, tmp_path):
    import html as entities
    exe = chromium()
    for data in THREAD:
        web.rs.queue(data, check=0)
    web.rs.queue(hostile_post(5, "<script>alert(1)</script> hostile", "Mallory", HOSTILE_HTML, "x.html"), check=0)
    for path, expected in ((f"/archive/{LIST}/", ["The archive of test@lists.example.org", "2026-11 (4 posts)"]),
                           (f"/archive/{LIST}/1.html", ["Plans for Friday", "Alice", "Shall we meet?",
                                                       "knows the way: https://example.org/map"]),
                           (f"/archive/{LIST}/2026-11.html", ["Re: Plans for Friday", "Something else"]),
                           (f"/archive/{LIST}/5.html", ["<script>alert(1)</script> hostile", "Hi", "bold"]),
                           (f"/archive/{LIST}/thread/1.html", ["Shall we meet?", "Yes.", "Count me in."]),
                           (f"/archive/{LIST}/search?q=%22plans+for%22", ["3 found", "Plans for Friday"]),
                           (f"/{LIST}/", ["Subscribe"])):
        code, dom, console = render(exe, web.base + path, tmp_path)
        assert code == 0 and console == [], (path, console)
        text = entities.unescape(visible_text(dom))
        for words in expected:
            assert words in text, (path, words)
        assert "alert(" not in re.sub(r"<script>alert\(1\)</script> hostile", "", text), path
        assert_no_active_content(dom.replace("<head></head>", ""))


# --- the README's nginx set-ups, in a private nginx ------------------------------------

def readme_blocks(kind):
    from conftest import ROOT
    return re.findall(rf"```{kind}\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def tool(name, *places):
    exe = shutil.which(name) or next((p for p in places if os.access(p, os.X_OK)), None)
    if exe is None:
        require(f"no {name} (Debian: apt-get install nginx-light fcgiwrap apache2)", "REDSKY_REQUIRE_WEBSERVERS")
    return exe


def wait_for_http(ports, proc, log):
    """Until every port answers HTTP (any status); the server must still run."""
    deadline = time.monotonic() + 20
    for port in ports:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
            except urllib.error.HTTPError:
                break
            except OSError:
                time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode() + (log.read_text() if log.exists() else "")


def signin_link_mailed(web, base):
    """The admin's sign-in form through ``base`` (a CGI server): the answer, then the link mailed
    once the answer is complete (the CGI lives on after it, SIGTERM or not), within 20 s."""
    web.rs.run("set", LIST, "owners", "owner@example.org", check=0)
    status, _, page = subscribe(web, "owner@example.org", f"{base}/redsky/{LIST}/admin/")
    assert status == 200 and "Check your mail" in page, page
    for _ in range(200):
        web.rs.run("send", check=0)
        if "owner@example.org" in web.rs.sent_to():
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def nginx(web, tmp_path):
    """Each nginx block of the README in a server of its own (proxy, CGI by
    fcgiwrap, static pages), its paths pointed at this installation.  Run by
    root, its workers are nobody's, as Debian's are www-data's: the static
    block reads what the list user wrote, through a data_dir opened as the
    README opens it (o+x)."""
    nginx_exe = tool("nginx", "/usr/sbin/nginx")
    fcgiwrap = tool("fcgiwrap", "/usr/sbin/fcgiwrap")
    run = tmp_path / "nginx"
    run.mkdir()
    workers = "master_process off;"
    if os.geteuid() == 0:
        import grp
        import pwd
        nobody = pwd.getpwnam("nobody")
        workers = f"user nobody {grp.getgrgid(nobody.pw_gid).gr_name};"
        for path in [tmp_path, *tmp_path.parents][:3]:      # data_dir (tmp_path) and the folders above it
            path.chmod(path.stat().st_mode | 0o001)
    shutil.copy(REDSKY, run / "redsky.py")
    os.chmod(run / "redsky.py", 0o755)
    sock = run / "fcgiwrap.sock"
    wrap = subprocess.Popen([fcgiwrap, "-s", f"unix:{sock}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    replace = {"/opt/redsky/redsky.py": str(run / "redsky.py"),
               "/etc/redsky/redsky.ini": str(web.rs.config), "/var/lib/redsky/pages/": f"{web.rs.home}/pages/",
               "127.0.0.1:8025": f"127.0.0.1:{web.port}", "unix:/run/fcgiwrap.socket": f"unix:{sock}",
               "include fastcgi_params;": "include /etc/nginx/fastcgi_params;"}
    ports, servers = [], []
    for block in readme_blocks("nginx"):
        for old, new in replace.items():
            block = block.replace(old, new)
        ports.append(free_port())
        servers.append(f"server {{ listen 127.0.0.1:{ports[-1]}; {block} }}")
    (run / "nginx.conf").write_text(
        f"daemon off; {workers} pid {run}/nginx.pid; error_log {run}/error.log;\n"
        "events { worker_connections 64; }\n"
        f"http {{ include /etc/nginx/mime.types; access_log off; client_body_temp_path {run}/body;"
        f" proxy_temp_path {run}/proxy; fastcgi_temp_path {run}/fastcgi; uwsgi_temp_path {run}/uwsgi;"
        f" scgi_temp_path {run}/scgi;\n" + "\n".join(servers) + "\n}\n")
    proc = subprocess.Popen([nginx_exe, "-c", str(run / "nginx.conf"), "-p", str(run)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not sock.exists():
        time.sleep(0.05)
    if sock.exists():
        sock.chmod(0o666)                           # the workers (nobody) connect to fcgiwrap
    wait_for_http(ports, proc, run / "error.log")
    yield [f"http://127.0.0.1:{p}" for p in ports]
    proc.terminate()
    wrap.terminate()
    proc.wait(10)
    wrap.wait(10)


@pytest.mark.server
@pytest.mark.webserver
def test_the_readme_nginx_set_ups_work(nginx, web):
    assert len(nginx) == 3                          # proxy, fcgiwrap, static pages
    proxy, cgi_server, static = nginx
    web.rs.queue(THREAD[0], check=0)
    web.rs.queue(hostile_post(2, "attached", "Mallory", "<p>x</p>", "evil.html"), check=0)
    for base in (proxy, cgi_server):
        status, headers, page = web.request(f"{base}/redsky/archive/{LIST}/1.html")
        assert status == 200 and "<h1>Plans for Friday</h1>" in page, base
        assert "default-src 'none'" in headers["Content-Security-Policy"]
        status, _, page = web.request(f"{base}/redsky/{LIST}/")
        assert status == 200 and 'name="address"' in page
    status, _, page = subscribe(web, "cgi@example.com", f"{cgi_server}/redsky/{LIST}/")
    assert status == 200 and "cgi@example.com" in web.rs.run("pending", "--json", check=0).out
    assert signin_link_mailed(web, cgi_server)
    url = leave_url(web, "carol@example.com").replace(web.base, proxy)
    assert web.request(url, data=b"List-Unsubscribe=One-Click")[0] == 200
    assert "carol@example.com" not in web.rs.members()
    status, headers, page = web.request(f"{static}/redsky/archive/{LIST}/")
    assert status == 200 and "The archive of" in page
    status, headers, page = web.request(f"{static}/redsky/archive/{LIST}/1.html")
    assert status == 200 and "<h1>Plans for Friday</h1>" in page and "Content-Security-Policy" in page
    status, headers, body = web.request(f"{static}/redsky/archive/{LIST}/att/2-1-evil.html")
    assert status == 200 and headers["Content-Type"] == "application/octet-stream"
    assert headers["Content-Disposition"] == "attachment" and headers["X-Content-Type-Options"] == "nosniff"
    status, _, found = web.request(f"{static}/redsky/archive/{LIST}/search?q=%22plans+for%22")
    assert status == 200 and '<a href="1.html"><bdi>Plans for Friday</bdi></a>' in found
    status, headers, raw = web.request(f"{static}/redsky/archive/{LIST}/1.eml")
    assert headers["Content-Type"].startswith("text/plain") and headers["X-Content-Type-Options"] == "nosniff"
    assert "Message-ID: <p1@example.org>" in raw
    for name in ("thread/1.mbox", "2026-11.mbox"):              # mboxes: as text, never sniffed
        status, headers, box = web.request(f"{static}/redsky/archive/{LIST}/{name}")
        assert status == 200 and headers["Content-Type"].startswith("text/plain"), name
        assert headers["X-Content-Type-Options"] == "nosniff" and "Message-ID: <p1@example.org>" in box
    # Archived-At resolves through the static block too, whatever a Message-ID holds
    for n, msgid in enumerate(("<odd/one+%41?#x@ex.example>", "<a=b&c;d\"e@ex.example>", "<ünï@ex.example>"), 3):
        web.rs.queue(post(subject=f"odd {n}", msgid=msgid), check=0)
        web.rs.run("send", check=0)
        copy = next(parse(d) for _, d in web.rs.sent() if b"Message-ID: " + msgid.encode() in d)
        url = copy["Archived-At"].strip("<>").replace(web.base, static)
        status, _, page = web.request(url)
        assert status == 200 and f"<h1>odd {n}</h1>" in page, (url, status)


@pytest.fixture
def apache(web, tmp_path):
    """The README's Apache blocks (proxy; CGI) in a private Apache, one
    virtual host each, behind Debian's `<Directory />` refusal; the CGI
    script runs as nobody, with whom this installation is shared as *As
    CGI* says: its group (nogroup here, nobody's), [web] cgi = yes, init."""
    httpd = tool("apache2", "/usr/sbin/apache2")
    modules = "/usr/lib/apache2/modules"
    run = tmp_path / "apache"
    run.mkdir()
    shutil.copy(REDSKY, run / "redsky.py")
    # the config moves out of the home: redsky refuses a config in a folder others may write
    web.rs.config = run / "redsky.ini"
    web.rs.write_config(redsky={"log": "stderr", "data_dir": str(web.rs.home)}, web={"user": "nobody", "cgi": "yes"})
    run.chmod(0o755)
    web.rs.config.chmod(0o644)
    for path in [tmp_path, *tmp_path.parents][:3]:
        path.chmod(path.stat().st_mode | 0o001)
    # root stands for the list user here, whose own group this is: what root writes takes it too
    nogroup = grp.getgrnam("nogroup").gr_gid
    for root, dirs, files in os.walk(web.rs.home):
        os.chown(root, -1, nogroup)
        os.chmod(root, os.stat(root).st_mode | 0o2000)
        for name in files:
            os.chown(os.path.join(root, name), -1, nogroup)
    shared = web.rs.run("init", check=0)
    assert "shared:" in shared.out and "warning" not in shared.err, shared.err
    replace = {"/opt/redsky/redsky.py": str(run / "redsky.py"), "/opt/redsky": str(run),
               "/etc/redsky/redsky.ini": str(web.rs.config), "127.0.0.1:8025": f"127.0.0.1:{web.port}"}
    ports, hosts = [], []
    for block in readme_blocks("apache"):
        for old, new in replace.items():
            block = block.replace(old, new)
        ports.append(free_port())
        hosts.append(f"Listen 127.0.0.1:{ports[-1]}\n<VirtualHost 127.0.0.1:{ports[-1]}>\n{block}</VirtualHost>")
    load = "".join(f"LoadModule {m}_module {modules}/mod_{m}.so\n"
                   for m in ("mpm_prefork", "authz_core", "alias", "env", "cgi", "proxy", "proxy_http", "mime"))
    (run / "httpd.conf").write_text(
        f"ServerRoot {run}\nServerName localhost\nPidFile {run}/httpd.pid\nErrorLog {run}/error.log\n{load}"
        f"User nobody\nGroup nogroup\nTypesConfig /etc/mime.types\n"
        "<Directory />\n    Require all denied\n</Directory>\n"          # as Debian's apache2.conf
        + "\n".join(hosts) + "\n")
    env = {**os.environ, "APACHE_RUN_DIR": str(run), "APACHE_LOCK_DIR": str(run)}
    # a new session: prefork signals its whole process group when it stops
    proc = subprocess.Popen([httpd, "-f", str(run / "httpd.conf"), "-DFOREGROUND"], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for_http(ports, proc, run / "error.log")
    yield [f"http://127.0.0.1:{p}" for p in ports], run
    proc.terminate()
    proc.wait(10)


@pytest.mark.server
@pytest.mark.webserver
def test_the_readme_apache_set_ups_work(apache, web):
    (proxy, cgi_server), run = apache
    assert len(readme_blocks("apache")) == 2
    web.rs.queue(THREAD[0], check=0)
    for base in (proxy, cgi_server):
        status, headers, page = web.request(f"{base}/redsky/archive/{LIST}/1.html")
        assert status == 200 and "<h1>Plans for Friday</h1>" in page, (base, (run / "error.log").read_text())
        assert headers["X-Content-Type-Options"] == "nosniff"
    status, _, page = subscribe(web, "apache@example.com", f"{cgi_server}/redsky/{LIST}/")
    assert status == 200, (run / "error.log").read_text()
    assert "apache@example.com" in web.rs.run("pending", "--json", check=0).out
    assert signin_link_mailed(web, cgi_server), (run / "error.log").read_text()
    url = leave_url(web, "bob@example.net")
    assert web.request(url.replace(web.base, cgi_server), data=b"List-Unsubscribe=One-Click")[0] == 200
    assert "bob@example.net" not in web.rs.members()
    # the script wrote as nobody, and nothing is open to others
    written = [p for p in web.rs.home.rglob("*") if p.stat().st_uid == pwd.getpwnam("nobody").pw_uid]
    assert written and all(p.stat().st_gid == grp.getgrnam("nogroup").gr_gid for p in written)
    assert not [p for p in written + [web.rs.home / "redsky.db", *(web.rs.home / "spool").rglob("*")]
                if p.stat().st_mode & 0o007]


@pytest.mark.server
def test_imported_archives_are_published_and_deleted_lists_unpublished(web, tmp_path):
    for data in THREAD[:2]:
        web.rs.queue(data, check=0)
    web.rs.run("export", LIST, "--output", str(tmp_path / "team.json"), check=0)
    web.rs.run("import", "redsky", str(tmp_path / "team.json"), "--as", "moved@lists.example.org", check=0)
    moved = web.rs.home / "pages" / "moved@lists.example.org"
    assert sorted(p.name for p in moved.glob("[0-9].html")) == ["1.html", "2.html"]
    assert web.request("/archive/moved@lists.example.org/2.html")[0] == 200
    web.rs.run("dellist", "moved@lists.example.org", check=0)
    assert not moved.exists()
    assert web.request("/archive/moved@lists.example.org/2.html")[0] == 404


@pytest.mark.server
def test_the_servers_token_table_follows_joins_and_leaves(web):
    """The table of leave tokens (kept in the database) follows joins and
    leaves: a member who joins later still leaves with one click."""
    assert web.request(f"/{LIST}/leave/{'0' * 16}", data=b"List-Unsubscribe=One-Click")[0] == 200
    web.rs.run("subscribe", LIST, "dave@example.org", check=0)
    url = leave_url(web, "dave@example.org")
    assert web.request(url, data=b"List-Unsubscribe=One-Click")[0] == 200
    assert "dave@example.org" not in web.rs.members()
    web.rs.run("unsubscribe", LIST, "carol@example.com", check=0)
    web.rs.run("subscribe", LIST, "erin@example.org", check=0)     # as many members as before
    url = leave_url(web, "erin@example.org")
    assert web.request(url, data=b"List-Unsubscribe=One-Click")[0] == 200
    assert set(web.rs.members()) == {"bob@example.net"}


@pytest.mark.server
def test_an_archive_from_before_the_pages_is_published_whole(web):
    """Upgrading: posts archived before redsky wrote pages are numbered and
    published with the next post, as `archive` numbers them."""
    for data in THREAD[:2]:
        web.rs.queue(data, check=0)
    shutil.rmtree(web.rs.home / "pages")
    web.rs.queue(THREAD[2], check=0)
    folder = web.rs.home / "pages" / LIST
    assert sorted(p.name for p in folder.glob("[0-9].html")) == ["1.html", "2.html", "3.html"]
    assert "<h1>RE: [test] plans for friday</h1>" in (folder / "3.html").read_text()
    numbered = web.rs.run("archive", LIST, check=0).out.splitlines()
    assert numbered[2].split()[0] == "3" and "plans for friday" in numbered[2]


# --- `web --listen`: deadlines, peers, strict HTTP ----------------------------------

def raw_http(port, data, source="127.0.0.1", timeout=15):
    """Send ``data`` as it is on one connection from ``source`` and return
    all the server sends back until it closes."""
    import socket
    chunks = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0)) as s:
        s.sendall(data)
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def status_of(answer):
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.") else None


def web_log(rs):
    path = rs.home / "web.log"
    return path.read_text() if path.exists() else ""


@pytest.fixture
def slow_web(lst):
    """`web --listen` with short deadlines and a small share per peer, logging to a file."""
    lst.write_config(redsky={"log": str(lst.home / "web.log")},
                     web={"timeout": "3s", "peer_connections": "4", "workers": "2"})
    server = Web(lst)
    yield server
    server.stop()


class Trickle:
    """Connections from one address that send a request head a byte at a
    time, never finishing it, and reconnect whenever the server closes one."""

    def __init__(self, port, count, source="127.0.0.1", every=0.5):
        import socket
        import threading
        self.port, self.source, self.every, self.stopped = port, source, every, threading.Event()
        self.socket, self.closed = socket, 0
        self.threads = [threading.Thread(target=self.one, daemon=True) for _ in range(count)]
        for t in self.threads:
            t.start()

    def one(self):
        while not self.stopped.is_set():
            try:
                with self.socket.create_connection(("127.0.0.1", self.port), timeout=5,
                                                   source_address=(self.source, 0)) as s:
                    for byte in b"GET /" + b"a" * 10_000:
                        s.sendall(bytes([byte]))
                        if self.stopped.wait(self.every):
                            return
            except OSError:
                self.closed += 1
                time.sleep(0.05)

    def stop(self):
        self.stopped.set()
        for t in self.threads:
            t.join(10)


# a client of its own: another local user, who times each of five requests
TIMED_GETS = """
import http.client, sys, time
for _ in range(5):
    start = time.monotonic()
    c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=10)
    c.request("GET", sys.argv[2])
    r = c.getresponse()
    print(r.status, len(r.read()), round(time.monotonic() - start, 3))
    time.sleep(0.7)
"""


@pytest.mark.server
def test_a_slowloris_from_one_peer_leaves_another_peer_served_promptly(slow_web):
    """40 connections from this process trickle a head each and reconnect
    when cut: another local user is still served at once, every time, and
    each of those connections past the peer's share is refused at once."""
    trickle = Trickle(slow_web.port, 40, source="127.0.0.2")        # another address: the same user
    try:
        time.sleep(1.0)
        r = as_nobody(TIMED_GETS, str(slow_web.port), f"/{LIST}/")
        answers = [line.split() for line in r.stdout.splitlines()]
        assert len(answers) == 5 and all(a[0] == "200" and float(a[2]) < 1.0 for a in answers), (answers, r.stderr)
        # the trickling user itself gets 503 at once past its share, from any loopback address
        assert status_of(raw_http(slow_web.port, b"GET / HTTP/1.0\r\n\r\n")) == 503
    finally:
        trickle.stop()
    assert trickle.closed > 20              # past its 4 connections, each is answered and closed at once
    assert "Traceback" not in web_log(slow_web.rs)


@pytest.mark.server
def test_a_request_that_never_completes_is_cut_at_its_deadline_with_one_log_line(slow_web):
    """A head that keeps coming a byte at a time, and a connection that says
    nothing: both closed when the deadline for the whole request (3 s) is
    reached, whatever they sent meanwhile; one line in the log for each."""
    import socket
    silent = socket.create_connection(("127.0.0.1", slow_web.port), timeout=10)
    slow = socket.create_connection(("127.0.0.1", slow_web.port), timeout=10)
    start, answer = time.monotonic(), b""
    try:
        for byte in b"POST /" + b"x" * 100:
            slow.sendall(bytes([byte]))
            time.sleep(0.2)
    except OSError:                              # closed by the server: what did it say?
        pass
    cut = time.monotonic() - start
    try:
        answer = slow.recv(4096)
    except OSError:
        pass
    assert 2.5 < cut < 5.0, cut
    assert status_of(answer) == 408
    silent.settimeout(5)
    assert silent.recv(4096) == b""              # closed, nothing said: it sent nothing
    assert time.monotonic() - start < 6
    time.sleep(0.3)
    log = web_log(slow_web.rs)
    lines = [line for line in log.splitlines() if "no whole request" in line]
    assert len(lines) == 2 and "(0 bytes came)" in log, log
    assert "Traceback" not in log and len(log.splitlines()) < 10, log


@pytest.mark.server
def test_one_peer_holds_a_few_connections_and_other_peers_the_rest(slow_web):
    import socket
    time.sleep(0.3)         # the fixture's own request counts until the server's loop sees it answered
    held = [socket.create_connection(("127.0.0.1", slow_web.port), timeout=5) for _ in range(4)]
    try:
        time.sleep(0.3)
        assert status_of(raw_http(slow_web.port, b"GET / HTTP/1.0\r\n\r\n")) == 503
        assert b"Retry-After" in raw_http(slow_web.port, b"GET / HTTP/1.0\r\n\r\n", source="127.0.0.3")
        r = as_nobody(TIMED_GETS.replace("range(5)", "range(1)"), str(slow_web.port), "/")
        assert r.stdout.startswith("200 "), r.stderr
    finally:
        for s in held:
            s.close()
    time.sleep(0.3)
    assert status_of(raw_http(slow_web.port, b"GET / HTTP/1.0\r\n\r\n")) == 200   # freed when they close
    assert web_log(slow_web.rs).count("more refused (503)") == 1                  # once a minute, per peer


@pytest.mark.server
def test_numbers_threads_downloads_and_search_over_http(web):
    """Issue 33 through `redsky.py web`: a copy's Archived-At leads to its page; numbers stay when
    an author is forgotten and an owner deletes a post; the thread and month come as mboxes; the
    search takes phrases and fields and offers a feed."""
    for data in THREAD:
        web.rs.queue(data, check=0)
    web.rs.run("send", check=0)
    copy = next(parse(d) for _, d in web.rs.sent() if parse(d)["Message-ID"] == "<p3@example.org>")
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args):
            return None
    url = copy["Archived-At"].strip("<>").replace(web.base + "/redsky", web.base)
    with pytest.raises(urllib.error.HTTPError) as moved:
        urllib.request.build_opener(NoRedirect).open(url, timeout=30)
    assert moved.value.code == 301 and moved.value.headers["Location"] == f"{web.base}/redsky/archive/{LIST}/3.html"
    status, _, page = web.request(moved.value.headers["Location"])         # [web] base_url: behind the proxy
    assert status == 200 and "plans for friday</h1>" in page.lower()
    web.rs.run("forget", "carol@example.com", "--archive", check=0)         # post 2
    web.rs.run("archive", "delete", LIST, "4", check=0)
    assert "its author" in web.request(f"/archive/{LIST}/2.html")[2]
    assert "owners" in web.request(f"/archive/{LIST}/4.html")[2]
    assert "Count me in." in web.request(f"/archive/{LIST}/3.html")[2]
    status, headers, mbox = web.request(f"/archive/{LIST}/thread/1.mbox")
    assert status == 200 and headers["Content-Type"] == "application/mbox"
    assert re.findall(r"(?m)^Message-ID: (\S+)", mbox) == ["<p1@example.org>", "<p3@example.org>"]
    assert re.findall(r"(?m)^Message-ID: (\S+)", web.request(f"/archive/{LIST}/2026-11.mbox")[2]) == \
        ["<p1@example.org>", "<p3@example.org>"]
    found = web.request(f"/archive/{LIST}/search?q=%22shall+we+meet%22+from%3Aalice")[2]
    assert re.findall(r'<li><a href="(\d+)\.html">', found) == ["1"] and "<mark>Shall</mark>" in found
    status, headers, feed = web.request(f"/archive/{LIST}/search?q=friday&format=atom")
    ns = {"a": "http://www.w3.org/2005/Atom"}
    links = [e.find("a:link", ns).get("href") for e in ET.fromstring(feed).findall("a:entry", ns)]
    assert links == [f"{web.base}/redsky/archive/{LIST}/3.html", f"{web.base}/redsky/archive/{LIST}/1.html"]


HOSTILE_REQUESTS = [
    # what a proxy in front could read another way: refused, never guessed at
    (b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400),
    (b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", 400),
    (b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello", 400),
    (b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello", 400),
    (b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\nhello", 400),
    (b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 411),
    (b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 5\r\n\r\nhello", 411),
    (b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    (b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400),
    (b"GET /x HTTP/1.1\r\nHost: a\r\nX-Folded: one\r\n two\r\n\r\n", 400),
    (b"GET /x HTTP/1.1\r\nHost: a\r\n\tX: y\r\n\r\n", 400),
    (b"GET /x HTTP/1.1\nHost: a\n\n", 400),
    (b"GET /x HTTP/1.1\r\nHost: a\nX: y\r\n\r\n", 400),
    (b"GET /x HTTP/1.1\r\nHost: a\rX: y\r\n\r\n", 400),
    (b"GET /x HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", 400),
    (b"GET /x HTTP/1.1\r\nHost: a\r\nNo-Colon\r\n\r\n", 400),
    (b"GET /x HTTP/1.1\r\n\r\n", 400),                                   # 1.1 needs one Host
    (b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    (b"GET /x HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    (b"GET /x HTTP/1.1 extra\r\nHost: a\r\n\r\n", 400),
    (b"GET  /x HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"GET /x#frag HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"G\xc9T /x HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"GET /\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
    (b"GET /x HTTP/1.1\r\nHost: a\r\n" + b"X-Many: y\r\n" * 100 + b"\r\n", 431),
    (b"GET /x HTTP/1.1\r\nHost: a\r\nX-Big: " + b"y" * 17000 + b"\r\n\r\n", 431),
    (b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: " + str(redsky.WEB_FORM_MAX_BODY + 1).encode() + b"\r\n\r\n", 413),
    (b"POST /x HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\nContent-Length: 1\r\n\r\nx", 417),
]


@pytest.mark.server
def test_http_is_read_strictly(web):
    for request, status in HOSTILE_REQUESTS:
        answer = raw_http(web.port, request)
        assert status_of(answer) == status, (request[:120], answer[:200])
        assert answer.count(b"HTTP/1.1 ") == 1 and b"Connection: close" in answer, answer[:300]
    # a request behind one with a body is never answered: one request, one answer, closed
    smuggled = (f"POST /{LIST}/ HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"
                f"GET /archive/{LIST}/ HTTP/1.1\r\nHost: a\r\n\r\n").encode()
    answer = raw_http(web.port, smuggled)
    assert answer.count(b"HTTP/1.1 ") == 1 and status_of(answer) == 400      # no address given
    assert web.proc.poll() is None


@pytest.mark.server
def test_http_1_0_1_1_head_expect_and_the_environ(web):
    web.rs.queue(THREAD[0], check=0)
    get = raw_http(web.port, f"GET /{LIST}/ HTTP/1.1\r\nHost: a\r\n\r\n".encode())
    head = raw_http(web.port, f"HEAD /{LIST}/ HTTP/1.1\r\nHost: a\r\n\r\n".encode())
    assert status_of(get) == status_of(head) == 200
    length = int(re.search(rb"Content-Length: (\d+)", get).group(1))
    assert head.endswith(b"\r\n\r\n") and f"Content-Length: {length}".encode() in head
    assert len(get.split(b"\r\n\r\n", 1)[1]) == length
    # HTTP/1.0 without Host; PATH_INFO unquoted; the absolute form a proxy may send
    assert status_of(raw_http(web.port, "GET /%74est@lists.example.org/ HTTP/1.0\r\n\r\n".encode())) == 200
    assert status_of(raw_http(web.port, f"GET http://lists.example.org/{LIST}/ HTTP/1.1\r\nHost: x\r\n\r\n"
                                        .encode())) == 200
    search = raw_http(web.port, f"GET /archive/{LIST}/search?q=Friday HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert status_of(search) == 200 and b'value="Friday"' in search
    # Expect: 100-continue gets its 100 before the body is sent
    import socket
    with socket.create_connection(("127.0.0.1", web.port), timeout=10) as s:
        body = f"form={aged_form(web.rs, remote='127.0.0.1')}&address=expect@example.com".encode()
        s.sendall(f"POST /{LIST}/ HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
                  f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n\r\n".encode())
        assert s.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(body)
        answer = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
    assert status_of(answer) == 200 and b"expect@example.com" in answer
    assert "expect@example.com" in web.rs.run("pending", "--json", check=0).out


@pytest.mark.server
def test_web_and_lmtp_listen_on_ipv6_and_read_listen_alike(lst):
    import socket
    assert lst.run("web", "--listen", "127.0.0.1:abc", subprocess=True).returncode == 64
    for bad in ("127.0.0.1:abc", "::1:8025", "[::1]", "[nonsense]:25", "127.0.0.1:70000", ""):
        r = lst.run("lmtp", "--listen", bad, subprocess=True, timeout=30)
        assert r.returncode == 64 and "Traceback" not in r.err and "--listen" in r.err, (bad, r.err)
    try:
        socket.socket(socket.AF_INET6).bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 on loopback")
    port = free_port()
    lst.write_config(web={"base_url": ""})
    proc = subprocess.Popen([*REDSKY_MAIN, "-c", str(lst.config), "web", "--listen", f"[::1]:{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("::1", port), timeout=5) as s:
                    s.sendall(f"GET /{LIST}/ HTTP/1.0\r\n\r\n".encode())
                    assert s.recv(100).startswith(b"HTTP/1.1 200 ")
                    break
            except ConnectionRefusedError:
                time.sleep(0.05)
        else:
            raise AssertionError(proc.stderr.read1(4000))
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


# --- issue 29: redirects stay on the site ---------------------------------------------

C0_AND_SPACE = "".join(map(chr, range(0x21)))


def whatwg_resolve(base, ref):
    """(host, path) where a browser goes for the Location ``ref`` of a page at ``base`` (an http(s)
    URL), by the rules of the WHATWG URL Standard that decide the host: leading and trailing C0
    controls and spaces are stripped and every tab and newline removed; a backslash is a slash
    (http and https are special schemes); a scheme of its own ("https:", "javascript:") or a
    leading // (after that, // or \\\\ or /\\) makes an authority, whose host is percent-decoded
    and follows the last @ before the first / ? # (or \\); else the reference is a path,
    absolute or relative to the base's folder, with dot segments removed."""
    import unicodedata
    ref = re.sub("[\t\n\r]", "", ref.strip(C0_AND_SPACE))
    scheme, rest = base.split("://", 1)
    host, _, path = rest.partition("/")
    m = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):(.*)", ref, re.S)
    if m:
        if m.group(1).lower() not in ("http", "https"):
            return f"{m.group(1).lower()}:", ""             # another scheme: not this site either
        ref = m.group(2) if m.group(1).lower() == scheme else "//" + m.group(2).replace("\\", "/").lstrip("/")
    ref = ref.replace("\\", "/")
    if ref.startswith("//"):
        authority = re.split(r"[/?#]", ref.lstrip("/"), 1)[0]
        name = urllib.parse.unquote(authority.rpartition("@")[2])
        name = unicodedata.normalize("NFKC", name).replace("\u3002", ".").lower()
        return re.sub(r":\d*$", "", name).rstrip("."), "/" + ref.lstrip("/")[len(authority):]
    ref = re.split(r"[?#]", ref, 1)[0]
    target = ref if ref.startswith("/") else "/" + path.rpartition("/")[0] + "/" + ref
    segments = []
    for segment in target.split("/")[1:]:
        if segment in ("..", "%2e%2e", ".%2e", "%2e."):
            segments = segments[:-1]
        elif segment not in (".", "%2e"):
            segments.append(segment)
    return host, "/" + "/".join(segments)


def test_the_resolver_follows_a_browser():
    """The resolver sends the issue's Location where a browser went, so a test of it can fail."""
    base = "http://lists.example.org/redsky/%5Cevil.example%5C@x"
    assert whatwg_resolve(base, "/\\evil.example\\@x/")[0] == "evil.example"
    assert whatwg_resolve(base, " \t//evil.example/")[0] == "evil.example"
    assert whatwg_resolve(base, "/\t/evil.example")[0] == "evil.example"
    assert whatwg_resolve(base, "https:\\\\evil.example")[0] == "evil.example"
    assert whatwg_resolve(base, "http:/\\EVIL.example")[0] == "evil.example"
    assert whatwg_resolve(base, "//x@%65vil.example@evil.example:80/")[0] == "evil.example"
    assert whatwg_resolve(base, "//\uff45vil\u3002example")[0] == "evil.example"
    assert whatwg_resolve(base, "javascript:alert(1)")[0] == "javascript:"
    assert whatwg_resolve(base, "./test@lists.example.org/") == ("lists.example.org", "/redsky/test@lists.example.org/")
    assert whatwg_resolve("http://h/a/b/c", "../d") == ("h", "/a/d")


def hostile_spellings(rng, names):
    """Paths a browser or a script may send: backslashes, //, /\\, tabs, CR, LF, other controls,
    @, encoded forms (single and double), Unicode look-alikes, around made-up and real names."""
    pieces = ["/", "\\", "//", "/\\", "\\\\", "\t", "\n", "\r", "\r\n", "\x00", "\x0b", " ", "@", "%5C", "%5c",
              "%2F", "%2f", "%252F", "%5C%5C", "%09", "%0a", ":", "http:", "https:", "evil.example",
              "evil.example:80", "\uff0f", "\uff3c", "\u2215", "\u3002", "\uff45vil.example", "..", ".",
              "?", "#", "x@evil.example", "%40", "@evil.example"]
    spellings = {"/%5Cevil.example%5C@x", "/\\evil.example\\@x", "/\\evil.example\\@test@lists.example.org",
                 "//evil.example/test@lists.example.org", "//evil.example@lists.example.org",
                 "/\t/evil.example\\@lists.example.org", "/archive/\\evil.example\\@x",
                 "/archive//evil.example@x", "/\\\\evil.example@x", "/ /evil.example@x",
                 "/\uff0f\uff0fevil.example@x", "/\r\n//evil.example@x", "/%2F%2Fevil.example@x"}
    for name in names:
        local, domain = name.split("@")
        for variant in (name, name.upper(), f"{local.upper()}@{domain}", name.title()):
            spellings.update({f"/{variant}", f"/archive/{variant}"})
    while len(spellings) < 600:
        name = rng.choice(names + ["evil.example@x", "x@evil.example"])
        parts = [rng.choice(pieces) for _ in range(rng.randrange(1, 4))]
        at = rng.randrange(len(parts) + 1)
        path = "".join(parts[:at]) + name + "".join(parts[at:])
        spellings.add(rng.choice(["/", "/archive/", "", "//", "/\\"]) + path)
    return sorted(spellings)


def test_no_spelling_of_a_path_redirects_off_the_site(lst):
    """Issue 29.4: every Location the app answers (for 600 spellings, under three mount points)
    resolves, as a browser resolves it, to this site and inside the app; the app's own addresses
    still get their slash."""
    import random
    lst.run("set", LIST, "archive", "public", check=0)
    lst.run("newlist", "evil.example@lists.example.org", check=0)     # a list named like a host
    names = [LIST, "evil.example@lists.example.org"]
    redirected, off_site = set(), []
    for script in ("", "/redsky", "/cgi-bin/redsky.py"):
        for path in hostile_spellings(random.Random(29), names):
            status, headers, _ = wsgi(lst, path, script=script)
            if "Location" not in headers:
                continue
            base = "https://lists.example.org" + script + urllib.parse.quote(path, safe="/@%:\\")
            host, where = whatwg_resolve(base, headers["Location"])
            if host != "lists.example.org":
                off_site.append((path, headers["Location"], host))
            redirected.add((status, where.lower(), script, path.startswith("/archive/")))
    assert not off_site, f"{len(off_site)} redirects off the site, e.g. {off_site[:3]}"
    assert all(status == 301 and where.startswith(script + "/") and where.endswith("/")
               for status, where, script, _ in redirected), redirected
    redirected = {(where, archive) for _, where, _, archive in redirected}
    assert {where.rstrip("/").rsplit("/", 1)[1] for where, _ in redirected} == set(names), redirected
    assert ("/redsky/test@lists.example.org/", False) in redirected
    assert ("/cgi-bin/redsky.py/archive/evil.example@lists.example.org/", True) in redirected
    assert wsgi(lst, "/%5Cevil.example%5C@x")[0] == 404 and wsgi(lst, "/\\evil.example\\@x")[0] == 404


def raw_get(port, path):
    """(status, Location or None) of a GET with ``path`` sent as these bytes, nothing encoded."""
    import socket
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"GET " + path + b" HTTP/1.0\r\nHost: lists.example.org\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    head = data.split(b"\r\n\r\n")[0].decode("latin-1")
    location = re.search(r"(?im)^Location:[ \t]*(.*?)\r?$", head)
    return int(head.split()[1]), location and location.group(1)


SERVER_SPELLINGS = [b"/%5Cevil.example%5C@x", b"/%5Cevil.example%5C@test@lists.example.org",
                    b"//evil.example/test@lists.example.org", b"/%2F%2Fevil.example@x", b"/%09/evil.example@x",
                    b"/\\evil.example\\@x", b"/%5C%5Cevil.example@lists.example.org", b"/TEST@Lists.Example.ORG",
                    b"/archive/Test@lists.example.org", b"/%54est@lists.example.org", b"/%EF%BC%8Fevil.example@x"]


def assert_stays_on_the_site(port, prefix):
    moved = 0
    for path in SERVER_SPELLINGS:
        status, location = raw_get(port, prefix + path)
        if location is not None:
            base = "http://lists.example.org" + (prefix + path).decode("latin-1")
            host, where = whatwg_resolve(base, location)
            assert host == "lists.example.org" and where.startswith(prefix.decode() + "/"), (path, location)
            assert where.lower().endswith(("/test@lists.example.org/")), (path, location)
            moved += 1
    assert moved >= 3


@pytest.mark.server
def test_the_server_redirects_only_to_its_own_pages(web):
    assert raw_get(web.port, b"/%5Cevil.example%5C@x") == (404, None)
    assert_stays_on_the_site(web.port, b"")


@pytest.mark.server
@pytest.mark.webserver
def test_the_readme_nginx_blocks_redirect_only_to_the_site(nginx, web):
    proxy, cgi_server, _ = nginx
    for base in (proxy, cgi_server):
        assert_stays_on_the_site(int(base.rsplit(":", 1)[1]), b"/redsky")


# --- issue 29: the subscribe form mails no stranger ------------------------------------

def network(rs, remote, forwarded=""):
    import redsky
    return redsky.client_network(redsky.Config(str(rs.config)), {
        "REMOTE_ADDR": remote, **({"HTTP_X_FORWARDED_FOR": forwarded} if forwarded else {})})


def aged_form(rs, age=10.0, address=LIST, purpose="subscribe", remote="192.0.2.10", forwarded=""):
    """A form token as the list's page gave it to ``remote`` ``age`` seconds ago."""
    import redsky
    return redsky.sign_token(rs.verp_key(), purpose, address, network(rs, remote, forwarded),
                             issued=time.time() - age)


def page_form(page):
    return dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', page))


def pending(rs):
    return {p["address"] for p in json.loads(rs.run("pending", "--json", check=0).out)}


def post_form(rs, address, remote="192.0.2.10", age=10.0, **fields):
    """POST the subscribe form with a token ``age`` seconds old: (status, answer with ADDR for the address)."""
    status, _, body = wsgi(rs, f"/{LIST}/", "POST", {"form": aged_form(rs, age, remote=remote), "address": address,
                                                     **fields},
                           remote=remote)
    return status, body.replace(address, "ADDR")


def mailed(rs):
    """Who `send` delivers the queued notices to."""
    rs.run("send", check=0)
    return sorted(rs.sent_to())


def test_signed_tokens_are_bound_to_purpose_scope_subject_and_age():
    import redsky
    token = redsky.sign_token("k", "subscribe", "Test@Lists.example.org", "", issued=1000)
    assert re.fullmatch(r"[0-9a-f]+-[0-9a-f]{16}-[0-9a-f]{32}", token)
    check = lambda *a, **kw: redsky.check_token(*a, **kw)[0]       # noqa: E731
    assert check("k", "subscribe", "test@lists.example.org", "", token, 1010, 3600, 3) == "ok"
    assert check("k", "subscribe", "test@lists.example.org", "", token.upper(), 1010, 3600, 3) == "ok"
    assert check("k", "subscribe", "test@lists.example.org", "", token, 1002, 3600, 3) == "young"
    assert check("k", "subscribe", "test@lists.example.org", "", token, 4601, 3600, 3) == "stale"
    assert check("k", "subscribe", "test@lists.example.org", "", token, 900, 3600) == "stale"    # from the future
    for wrong in (("other", "subscribe", "test@lists.example.org", ""), ("k", "leave", "test@lists.example.org", ""),
                  ("k", "subscribe", "other@lists.example.org", ""), ("k", "subscribe", "test@lists.example.org", "x")):
        assert check(*wrong, token, 1010, 3600) == "bad", wrong
    issued, nonce, mac = token.split("-")
    for forged in (f"{int(issued, 16) + 1:x}-{nonce}-{mac}", f"{issued}-{nonce[::-1]}-{mac}",
                   token[:-1] + "01"[token[-1] == "0"], token + "0", "", None, "x" * 5000, f"{issued}-{nonce}", token.replace("-", ".")):
        assert check("k", "subscribe", "test@lists.example.org", "", forged, 1010, 3600) in ("bad",), forged
    assert redsky.check_token("k", "subscribe", "test@lists.example.org", "", token, 1010, 3600)[1] == nonce
    assert redsky.sign_token("k", "subscribe", "x@y") != redsky.sign_token("k", "subscribe", "x@y")


def test_a_subscribe_form_counts_only_with_a_fresh_token_of_its_list_taken_once(lst):
    """Issue 29.7: a POST that did not come from this list's page, came back faster than a person
    fills a form, or too late, mails nobody and says "please try again"; the page's token works
    once, after [web] form_min_age (3 s: one real wait here)."""
    lst.run("newlist", "other@lists.example.org", check=0)
    status, _, page = wsgi(lst, f"/{LIST}/")
    fields = page_form(page)
    assert status == 200 and set(fields) == {"form"}
    tries = {"no token": {}, "the page's, at once": fields, "two hours old": {"form": aged_form(lst, 7200)},
             "another list's": {"form": aged_form(lst, address="other@lists.example.org")},
             "another purpose": {"form": aged_form(lst, purpose="leave")},
             "another network's": {"form": aged_form(lst, remote="203.0.113.99")},
             "from the future": {"form": aged_form(lst, -600)},
             "forged": {"form": re.sub(".$", lambda m: "01"[m.group(0) == "0"], aged_form(lst))}}
    for n, (why, form) in enumerate(tries.items()):
        status, _, body = wsgi(lst, f"/{LIST}/", "POST", {**form, "address": f"s{n}@example.com"})
        assert status == 400 and "Please try again" in body and f'value="s{n}@example.com"' in body, why
        assert page_form(body)["form"] != form.get("form"), why          # a new form to send
    assert ("quicker than a person" in wsgi(lst, f"/{LIST}/", "POST", {**fields, "address": "q@example.com"})[2])
    assert pending(lst) == set()
    time.sleep(3.2)
    assert wsgi(lst, f"/{LIST}/", "POST", {**fields, "address": "person@example.com"})[0] == 200
    replay = wsgi(lst, f"/{LIST}/", "POST", {**fields, "address": "second@example.com"})
    assert replay[0] == 200 and "second@example.com" in replay[2]          # the usual answer ...
    assert pending(lst) == {"person@example.com"}                         # ... and nothing sent
    assert mailed(lst) == ["person@example.com"]


def test_one_client_network_cannot_mail_forty_strangers(lst):
    """The issue's script: 40 different addresses from one client, each with a good token, make
    [web] subscribe_per_client (5) confirmations; an IPv6 /64 is one client; behind a trusted proxy
    the client is what X-Forwarded-For's last hop names, not what the client wrote before it."""
    answers = set()
    for i in range(40):
        answers.add(post_form(lst, f"stranger{i}@example.com", remote="198.51.100.7"))
    assert len(answers) == 1 and next(iter(answers))[0] == 200
    assert len(pending(lst)) == 5
    for i, remote in enumerate(["2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:fffe", "2001:db8:1:2::3%eth0"] * 3):
        post_form(lst, f"six{i}@example.com", remote=remote)
    assert len(pending(lst)) == 10
    assert post_form(lst, "mapped@example.com", remote="::ffff:198.51.100.7")[0] == 200
    for i, forwarded in enumerate(["203.0.113.9", "192.0.2.1, 203.0.113.9", "10.9.9.9 , 203.0.113.9, 127.0.0.1"] * 3):
        wsgi(lst, f"/{LIST}/", "POST", {"form": aged_form(lst, remote="127.0.0.1", forwarded=forwarded),
                                        "address": f"proxied{i}@example.com"},
             remote="127.0.0.1", headers={"HTTP_X_FORWARDED_FOR": forwarded})
    assert len(pending(lst)) == 15 and "mapped@example.com" not in pending(lst)
    for i in range(3):                   # an untrusted client's own X-Forwarded-For names nobody
        wsgi(lst, f"/{LIST}/", "POST", {"form": aged_form(lst, remote="198.51.100.7"),
                                        "address": f"liar{i}@example.com"},
             remote="198.51.100.7", headers={"HTTP_X_FORWARDED_FOR": f"192.0.2.{i}"})
    assert len(pending(lst)) == 15
    assert len([a for a in mailed(lst) if a not in MEMBERS]) == 15


def test_client_networks_as_budgets_count_them(lst):
    import redsky
    config = redsky.Config(str(lst.config))
    net = lambda remote, forwarded="": redsky.client_network(         # noqa: E731
        config, {"REMOTE_ADDR": remote, **({"HTTP_X_FORWARDED_FOR": forwarded} if forwarded else {})})
    assert net("192.0.2.7") == "192.0.2.7" and net("::ffff:192.0.2.7") == "192.0.2.7"
    assert net("2001:DB8:0:1:2:3:4:5") == net("2001:db8:0:1::9") == "2001:db8:0:1::/64"
    assert net("2001:db8:0:2::9") != net("2001:db8:0:1::9")
    assert net("127.0.0.1") == "127.0.0.1" and net("::1") == "::/64"
    assert net("127.0.0.1", "[2001:db8::7]") == "2001:db8::/64"
    assert net("::ffff:127.0.0.1", "198.51.100.4") == "198.51.100.4"     # a dual-stack server's proxy
    assert net("127.0.0.1", "garbage") == net("", "") == net("not an address") == "unknown"
    assert net("192.0.2.7", "198.51.100.1") == "192.0.2.7"
    lst.write_config(web={"trusted_proxies": "192.0.2.0/24, 2001:db8::/32"})
    config = redsky.Config(str(lst.config))
    assert net("192.0.2.7", "198.51.100.1, 192.0.2.9") == "198.51.100.1"
    assert net("127.0.0.1", "198.51.100.1") == "127.0.0.1"
    lst.write_config(web={"trusted_proxies": "192.0.2.0/33"})
    with pytest.raises(redsky.ConfigError):
        redsky.client_network(redsky.Config(str(lst.config)), {"REMOTE_ADDR": "192.0.2.7"})


def test_a_list_takes_a_few_requests_an_hour_and_a_day_and_the_owners_hear_of_it_once(lst):
    """[web] subscribe_per_list per hour over all clients; [web] subscribe_per_day for requests
    that may mail someone, after which the owners get one notice that day, however many more come."""
    lst.run("set", LIST, "owners", "owner@example.org", check=0)
    lst.write_config(web={"subscribe_per_list": "4"})
    for i in range(9):
        post_form(lst, f"hour{i}@example.com", remote=f"198.51.100.{i}")
    assert len(pending(lst)) == 4
    lst.write_config(web={"subscribe_per_list": "0", "subscribe_per_day": "6"})
    answers = {post_form(lst, f"day{i}@example.com", remote=f"203.0.113.{i}") for i in range(12)}
    assert len(answers) == 1 and answers.pop()[0] == 200
    assert len(pending(lst)) == 6           # the day's 6 counted the hour's 4 too
    for i in range(3):
        post_form(lst, f"later{i}@example.com", remote=f"192.0.2.{i}")
    lst.run("send", check=0)
    sent = [(argv[-1], parse(data)["Subject"]) for argv, data in lst.sent()]
    told = [subject for to, subject in sent if to == "owner@example.org"]
    assert told == ["test@lists.example.org: the subscribe form reached its daily limit"]
    assert sorted(to for to, _ in sent if to != "owner@example.org") == sorted(pending(lst))


@pytest.mark.parametrize("spelling", ["dave+{i}@example.org", "Dave+web{i}@Example.ORG", '"dave+{i}"@example.org'])
def test_the_form_spends_only_an_allowance_anyone_could_spend(lst, spelling):
    """F12/F13 on the web: forms for dave+1@, dave+2@ … (from as many networks) all draw on the one
    allowance of dave's mailbox for requests anyone could have made: 3 confirmations, then one
    notice of until when; dave's own mail, which the MTA authenticated, still gets a confirmation."""
    from conftest import inbox, mail
    lst.write_config(commands={"authserv_id": "mx.example.net"})
    used = [spelling.format(i=i) for i in range(8)]
    for i, address in enumerate(used):
        assert post_form(lst, address, remote=f"198.51.100.{i}")[0] == 200
    lst.run("send", check=0)
    import redsky
    spelt = {redsky.normalize_address(a).lower() for a in used}
    got = [parse(d)["Subject"] for argv, d in lst.sent() if argv[-1].lower() in spelt]
    assert len(got) == 3 + 1 and "ignored until" in got[-1], got
    mail(lst, "test-join@lists.example.org", "dave@example.org",
         extra="Authentication-Results: mx.example.net; dkim=pass header.d=example.org\n")
    assert inbox(lst, "dave@example.org")[-1]["Subject"].startswith("confirm ")


@pytest.mark.parametrize("how", ["one-click", "mailto"])
def test_a_member_leaves_at_once_whatever_was_spent_in_their_name(lst, how):
    """RFC 8058's one-click POST and the personal mailto of List-Unsubscribe need no confirmation and
    draw on no allowance: after forms, join, leave and help requests spent every allowance of the
    member's mailbox, the member still leaves."""
    import redsky
    from conftest import mail
    lst.run("set", LIST, "owners", "owner@example.org", check=0)
    member = "carol@example.com"
    for i in range(6):
        post_form(lst, f"carol+{i}@example.com", remote=f"198.51.100.{i}")
        for to, subject in (("test-leave", "bye"), ("test-request", "help"), ("test-request", "set digest on")):
            mail(lst, f"{to}@lists.example.org", member, subject=subject, envelope="m@evil.example")
    token = redsky.leave_token(lst.verp_key(), {"name": "test", "domain": "lists.example.org"}, member)
    if how == "one-click":
        status, _, body = wsgi(lst, f"/{LIST}/leave/{token}", "POST", {"List-Unsubscribe": "One-Click"})
        assert status == 200
    else:
        mail(lst, f"test-leave+{token}@lists.example.org", member, subject="unsubscribe")
    assert member not in lst.members(LIST)
    lst.run("send", check=0)
    assert parse([d for argv, d in lst.sent() if argv[-1] == member][-1])["Subject"].startswith("Goodbye")


def test_a_field_no_person_fills_stops_robots_silently(lst):
    status, _, page = wsgi(lst, f"/{LIST}/")
    field = re.search(r'<p class="hp"><label>Leave this empty <input name="website" tabindex="-1"'
                      r' autocomplete="off"></label></p>', page)
    assert field and ".hp{position:absolute;width:1px;height:1px;overflow:hidden;" in page   # the stylesheet's
    assert "hidden" not in field.group(0) and "style=" not in page
    good = post_form(lst, "person@example.com", remote="192.0.2.20")
    for i in range(5):
        assert post_form(lst, f"robot{i}@example.com", website="https://spam.example") == good
    assert post_form(lst, "after@example.com") == good                    # the robots used the budget
    assert pending(lst) == {"person@example.com"}


def test_owners_can_ask_a_question(lst):
    """A list's subscribe_question and subscribe_answers (set LIST ...): the answer is checked
    case-insensitively, spaces aside; a wrong one is an error a person can put right, until the
    client's budget is used up, then it gets the usual answer too."""
    lst.run("set", LIST, "subscribe_question", "What colour <is> the sky?", check=0)
    assert 'name="answer"' not in wsgi(lst, f"/{LIST}/")[2]            # no answers: not asked
    lst.run("set", LIST, "subscribe_answers", " Blue |azure  | | sky   blue ", check=0)
    (row,) = json.loads(lst.run("lists", "--json", check=0).out)
    assert row["subscribe_answers"] == "Blue | azure | sky blue"
    page = wsgi(lst, f"/{LIST}/")[2]
    assert "What colour &lt;is&gt; the sky?" in page and 'name="answer" required' in page
    status, body = post_form(lst, "person@example.com", answer="green")
    assert status == 400 and "not the answer" in body and 'value="ADDR"' in body
    assert post_form(lst, "blank@example.com")[0] == 400
    for answer in ("  AZURE ", "Sky\tBlue", "bLUE"):
        assert post_form(lst, f"{answer.split()[0].lower()}@example.com", remote="192.0.2.30", answer=answer)[0] == 200
    assert pending(lst) == {"azure@example.com", "sky@example.com", "blue@example.com"}
    for i in range(3):
        post_form(lst, f"guess{i}@example.com", answer=f"guess {i}")         # 5 tries of 192.0.2.10 used
    assert post_form(lst, "guess@example.com", answer="red") == post_form(lst, "x@example.com", answer="blue")
    assert len(pending(lst)) == 3
    assert lst.run("set", LIST, "subscribe_answers", "|".join(map(str, range(21)))).returncode == 65
    assert lst.run("set", LIST, "subscribe_answers", "x" * 101).returncode == 65


def test_the_answer_is_the_same_whatever_happened_and_a_refused_form_mails_nobody(lst):
    """A new address, a member, a banned one, a robot, a replay, a client without budget, a list
    without room: one page, one status; only the first and the member's reply send mail."""
    lst.run("ban", LIST, "add", "*@banned.example", check=0)
    lst.write_config(web={"subscribe_per_client": "3"})
    form = aged_form(lst, remote="192.0.2.40")
    cases = [("new@example.com", {"form": form}, "192.0.2.40"), ("bob@example.net", {}, "192.0.2.41"),
             ("someone@banned.example", {}, "192.0.2.42"), ("robot@example.com", {"website": "x"}, "192.0.2.43"),
             ("replay@example.com", {"form": form}, "192.0.2.40")]
    cases += [(f"budget{i}@example.com", {}, "192.0.2.45") for i in range(5)]
    answers = set()
    for address, fields, remote in cases:
        status, _, body = wsgi(lst, f"/{LIST}/", "POST", {"form": aged_form(lst, remote=remote), "address": address,
                                                          **fields},
                               remote=remote)
        answers.add((status, body.replace(address, "ADDR")))
    assert len(answers) == 1 and answers.pop()[0] == 200
    assert pending(lst) == {"new@example.com", "budget0@example.com", "budget1@example.com", "budget2@example.com"}
    assert set(mailed(lst)) == {"new@example.com", "bob@example.net", "someone@banned.example",
                                "budget0@example.com", "budget1@example.com", "budget2@example.com"}


def test_search_has_a_budget_per_client_network(lst):
    lst.run("set", LIST, "archive", "public", check=0)
    lst.queue(post(subject="zanzibar"), check=0)
    lst.write_config(web={"search_per_client": "3"})
    search = lambda remote: wsgi(lst, f"/archive/{LIST}/search", query="q=zanzibar", remote=remote)   # noqa: E731
    assert [search("192.0.2.50")[0] for _ in range(3)] == [200] * 3
    status, headers, body = search("192.0.2.50")
    assert status == 429 and headers["Retry-After"] == "60" and "zanzibar" not in body
    assert search("2001:db8:5:5::1")[0] == 200 and search("192.0.2.51")[0] == 200
    with lst.db() as db:
        db.execute("UPDATE web_budgets SET since = since - 61")           # a minute later
    assert search("192.0.2.50")[0] == 200
    assert wsgi(lst, f"/archive/{LIST}/")[0] == 200                         # pages have no budget


# --- issue 29: a made-up one-click token costs one look-up ---------------------------------

def add_members(rs, n, prefix="m", list_address=LIST):
    with rs.db() as db:
        (list_id,) = db.execute("SELECT id FROM lists WHERE name || '@' || domain = ?", (list_address,)).fetchone()
        db.executemany("INSERT INTO members (list_id, address, subscribed) VALUES (?, ?, 0)",
                       ((list_id, f"{prefix}{i}@example.net") for i in range(n)))


def token_of(rs, member, list_address=LIST):
    import redsky
    name, domain = list_address.split("@")
    return redsky.leave_token(rs.verp_key(), {"name": name, "domain": domain}, member)


def leave_by_web(rs, token, remote="192.0.2.60"):
    return wsgi(rs, f"/{LIST}/leave/{token}", "POST", b"List-Unsubscribe=One-Click", remote=remote)


def leave_by_mail(rs, token, sender):
    return rs.queue(post(subject="unsubscribe", sender=sender, msgid=f"<{sender}.{token}@example.org>"),
                    recipient=f"test-leave+{token}@lists.example.org", sender=sender, check=0)


def test_a_made_up_leave_token_costs_one_look_up_however_many_members(lst, monkeypatch):
    """Issue 29.10: on an open list, a subscribe then a one-click POST with a made-up token (as CGI:
    a new app per request) and a LIST-leave+BOGUS@ mail compute one member's token, not every
    member's; the tokens already in people's mailboxes (the same HMAC as ever) keep working."""
    import redsky
    lst.run("set", LIST, "subscribe_policy", "open", check=0)
    add_members(lst, 3000)
    old_tokens = {m: token_of(lst, m) for m in ("m7@example.net", "m2999@example.net", "bob@example.net")}
    computed = []
    real = redsky.leave_token
    monkeypatch.setattr(redsky, "leave_token", lambda *a, **kw: computed.append(a[2]) or real(*a, **kw))
    assert leave_by_web(lst, "0123456789abcdef")[0] == 200
    assert 3000 <= len(computed) <= 3010                               # every member once, ever
    for i in range(8):
        computed.clear()
        assert wsgi(lst, f"/{LIST}/", "POST", {"form": aged_form(lst, remote=f"198.51.100.{i}"),
                                               "address": f"new{i}@example.org"},
                    remote=f"198.51.100.{i}")[0] == 200
        assert f"new{i}@example.org" in lst.members()
        assert leave_by_web(lst, f"{i:016x}")[0] == 200
        leave_by_mail(lst, f"{i + 100:016x}", sender=f"new{i}@example.org")
        assert computed == [f"new{i}@example.org"], computed[:5]      # the one who joined; no look-up else
    assert len(lst.members()) == 3000 + 2 + 8
    assert leave_by_web(lst, old_tokens["m7@example.net"])[0] == 200
    leave_by_mail(lst, old_tokens["m2999@example.net"], sender="someone@example.org")
    leave_by_mail(lst, old_tokens["bob@example.net"].upper(), sender="bob@example.net")
    assert not {"m7@example.net", "m2999@example.net", "bob@example.net"} & set(lst.members())


def test_the_table_of_leave_tokens_follows_the_members(lst):
    import redsky
    lst.run("newlist", "other@lists.example.org", check=0)
    lst.run("subscribe", "other@lists.example.org", "bob@example.net", check=0)
    rows = lambda: lst.db().execute("SELECT count(*) FROM leave_tokens").fetchone()[0]      # noqa: E731
    bob = token_of(lst, "bob@example.net")
    assert lst.run("queue", "--dry-run", "--recipient", f"test-leave+{bob}@lists.example.org",
                   input=post(subject="dry run"), check=0).returncode == 0
    assert rows() == 0 and "bob@example.net" in lst.members()           # a dry run stores nothing
    assert leave_by_web(lst, token_of(lst, "bob@example.net", "other@lists.example.org"))[0] == 200
    assert "bob@example.net" in lst.members() and rows() == 3           # another list's token: nobody
    lst.run("subscribe", LIST, "dave@example.org", check=0)             # joins after the table was made
    assert leave_by_web(lst, token_of(lst, "dave@example.org"))[0] == 200
    assert "dave@example.org" not in lst.members() and rows() == 3      # his row went with him
    with lst.db() as db:                       # the newest member leaves; the next one takes his id
        newest = db.execute("SELECT max(id) FROM members").fetchone()[0]
    lst.run("subscribe", LIST, "erin@example.org", check=0)
    leave_by_web(lst, "f" * 16)
    lst.run("unsubscribe", LIST, "erin@example.org", check=0)
    lst.run("subscribe", LIST, "fred@example.org", check=0)
    with lst.db() as db:
        assert db.execute("SELECT id FROM members WHERE address = 'fred@example.org'").fetchone()[0] == newest + 1
    assert leave_by_web(lst, token_of(lst, "erin@example.org"))[0] == 200
    assert leave_by_web(lst, token_of(lst, "fred@example.org"))[0] == 200
    assert "fred@example.org" not in lst.members()
    # a row a tool without foreign keys left behind names nobody else
    lst.run("subscribe", LIST, "gina@example.org", check=0)
    leave_by_web(lst, "e" * 16)
    db = lst.db()
    with db:
        gina = db.execute("SELECT id FROM members WHERE address = 'gina@example.org'").fetchone()[0]
        db.execute("DELETE FROM members WHERE address = 'gina@example.org'")            # no cascade here
        db.execute("INSERT INTO members (list_id, address, subscribed) VALUES (1, 'hank@example.org', 0)")
        assert db.execute("SELECT id FROM members WHERE address = 'hank@example.org'").fetchone()[0] == gina
    assert leave_by_web(lst, token_of(lst, "gina@example.org"))[0] == 200
    assert "hank@example.org" in lst.members()
    lst.run("dellist", "other@lists.example.org", check=0)
    assert lst.db().execute("SELECT count(*) FROM leave_tokens WHERE list_id <> 1").fetchone()[0] == 0
    assert redsky.leave_member is not None


@pytest.mark.parametrize("spelling,bob", [('"spammer"@evil.example', '"bob"@example.net'),
                                          ('"sp\\ammer"@Evil.Example', '"b\\ob"@Example.NET'),
                                          ("spammer@EVIL.example", "bob@EXAMPLE.net")])
def test_the_form_knows_an_address_in_any_spelling_as_the_mail_path_does(lst, spelling, bob):
    """A quoted spelling got past the ban list, and subscribed a member a second time."""
    lst.run("ban", LIST, "add", "spammer@evil.example", check=0)
    status, _ = post_form(lst, spelling)
    assert status == 200
    assert pending(lst) == set()                              # the ban holds: no confirmation to join
    assert [parse(d)["Subject"] for _, d in lst.sent()] in ([], [f"{LIST}: subscriptions are closed"]) or \
        mailed(lst) == ["spammer@evil.example"]
    post_form(lst, bob, remote="192.0.2.11")
    assert pending(lst) == set()                              # bob is a member already: no second row
    lst.run("send", check=0)
    assert "already subscribed" in str(parse(lst.sent()[-1][1])["Subject"])


@pytest.mark.parametrize("body,kind", [
    (b"&".join(b"f%d=1" % n for n in range(25)) + b"&List-Unsubscribe=One-Click", "application/x-www-form-urlencoded"),
    (b'--B\r\nContent-Disposition: form-data; name="\xff\xfe"\r\n\r\nx\r\n--B--\r\n', "multipart/form-data; boundary=B"),
    (b'name="a"\r\n' * 1500, "multipart/form-data; boundary=B"),
    (b"\xff\xfe=\x00&=&&&", "application/x-www-form-urlencoded"),
])
def test_a_bad_form_body_is_an_answer_not_an_error(lst, body, kind):
    """21 fields, undecodable names, or a body the multipart parser took quadratic time on: 503
    and a traceback in the log before; now the page answers as for a missing field."""
    import redsky
    token = redsky.leave_token(lst.verp_key(), dict(lst.db().execute("SELECT * FROM lists").fetchone()),
                               "bob@example.net")
    for path in (f"/{LIST}/leave/{token}", f"/{LIST}/"):
        status, _, page = wsgi(lst, path, "POST", body, headers={"CONTENT_TYPE": kind})
        assert status in (200, 400), (path, status, page[:200])
    assert "bob@example.net" in lst.members()


def _peak_kb(pid):
    with open(f"/proc/{pid}/status") as fh:
        return int(re.search(r"VmHWM:\s+(\d+)", fh.read()).group(1))


@pytest.mark.server
def test_a_large_archive_file_is_sent_as_read_not_held_in_memory(web):
    """Issue 33 review: `web --listen` read a whole file into memory per download (a 400 MB mbox
    fetched 3 times at once: 3.6 GB).  Three downloads of a 48 MB file at once arrive whole, and the
    server's peak memory grows by far less than one copy of it."""
    from concurrent.futures import ThreadPoolExecutor
    web.rs.queue(THREAD[0], check=0)
    folder = web.rs.home / "pages" / LIST
    line = b"".join(b"line %07d of a big month, quoted as mbox keeps it\n" % i for i in range(1000))
    (folder / "2020-01.mbox").write_bytes(line * (48_000_000 // len(line)))
    size = (folder / "2020-01.mbox").stat().st_size
    (folder / "2020-02.mbox").write_bytes(b"From a small one\n")
    web.request(f"/archive/{LIST}/2020-02.mbox")
    before = _peak_kb(web.proc.pid)

    def fetch(_):
        with urllib.request.urlopen(f"{web.base}/archive/{LIST}/2020-01.mbox", timeout=60) as answer:
            got = 0
            while chunk := answer.read(1 << 20):
                got += len(chunk)
            return got, answer.headers["Content-Length"]
    with ThreadPoolExecutor(3) as pool:
        assert list(pool.map(fetch, range(3))) == [(size, str(size))] * 3
    grown = _peak_kb(web.proc.pid) - before
    assert grown < size // 1024 // 3, f"peak memory grew by {grown} KB serving a {size // 1024} KB file"
    status, headers, _ = web.request(f"/archive/{LIST}/2020-01.mbox", method="HEAD")
    assert status == 200 and headers["Content-Length"] == str(size)
