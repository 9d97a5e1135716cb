"""redsky behind a real, private Postfix: the seam where things go wrong in the field.

Skipped (with the reason) where Postfix cannot run; .ci/run sets
REDSKY_REQUIRE_POSTFIX=1 so that CI fails instead of skipping.
"""

import functools
import pwd
import re
import subprocess
import smtplib
import sqlite3
import time

import pytest

import postfix as pf
from conftest import ledger_view, mta_post, parse, require

pytestmark = pytest.mark.mta

LIST = f"team@{pf.LISTS}"
MEMBERS = (f"ann@{pf.USERS}", f"ben@{pf.USERS}")


def require_postfix():
    require(pf.missing(), "REDSKY_REQUIRE_POSTFIX")


@pytest.fixture
def bare():
    """A private Postfix without any of redsky's settings."""
    require_postfix()
    instance = pf.PrivatePostfix(bare=True)
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture(scope="session")
def mta():
    require_postfix()
    from conftest import ledger_view, fake_dns
    instance = pf.PrivatePostfix(nameserver=fake_dns().address)
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture
def pfx(mta):
    mta.reset()
    mta.redsky("newlist", LIST, "--access", "open", check=True)
    mta.redsky("subscribe", LIST, *MEMBERS, check=True)
    mta.redsky("set", LIST, "dmarc", "never", check=True)      # no DNS from the tests
    return mta


post = functools.partial(mta_post, LIST, sender=f"carl@{pf.USERS}", body="Hello through a real MTA.\n")


def test_post_by_sendmail_reaches_queue_and_every_member(pfx):
    pfx.sendmail(post("Through Postfix"), LIST, sender=f"carl@{pf.USERS}")
    pfx.wait_idle()
    assert ledger_view(pfx.home / "redsky.db") == [(m, "pending") for m in MEMBERS], pfx.log()[-2000:]
    pfx.redsky("send", check=True)
    pfx.wait_idle()
    for member in MEMBERS:
        (data,) = pfx.maildir(member.split("@")[0])
        msg = parse(data)
        local, domain = member.split("@")
        assert msg["Subject"] == "Through Postfix"
        assert msg["List-Id"] == "<team.lists.test>" and msg["X-Loop"] == LIST
        assert re.fullmatch(r"<mailto:team-leave\+[0-9a-f]{16}@lists\.test>", msg["List-Unsubscribe"])
        assert msg["Return-Path"].endswith(f"+{local}={domain}@{pf.LISTS}>")
        assert msg["Return-Path"].startswith("<team-bounces+")
        assert msg["X-Original-To"] == member          # the subscriber's, not the list's
    assert ledger_view(pfx.home / "redsky.db") == [(m, "sent") for m in MEMBERS]


def test_post_over_smtp(pfx):
    with smtplib.SMTP("127.0.0.1", pfx.port) as smtp:
        smtp.sendmail(f"carl@{pf.USERS}", [LIST], post("Over SMTP"))
    pfx.wait_idle()
    pfx.redsky("send", check=True)
    pfx.wait_idle()
    assert all(parse(pfx.maildir(m.split("@")[0])[0])["Subject"] == "Over SMTP" for m in MEMBERS)


def test_the_pipe_runs_queue_from_the_bytecode_that_postfix_config_compiled(pfx):
    """master.cf's argv has the code that imports redsky as one { } group,
    which the real pipe(8) hands to python as one argument; the pipe's
    user (nobody) cannot write beside redsky.py, and runs the .pyc that
    postfix-config compiled as root: a marked copy of it writes nobody's uid."""
    import bytecode
    import redsky
    master = (pfx.etc / "master.cf").read_text()
    assert f"  argv=/usr/bin/python3 -I -c {{{redsky.PIPE_CODE}}}\n  {pfx.dir} -c {pfx.config} queue " in master
    pyc = bytecode.pyc_of(pfx.redsky_py)
    assert not redsky.user_can(str(pfx.dir), "nobody", write=True)
    assert not redsky.user_can(str(pyc.parent), "nobody", write=True)
    marker = pfx.dir / "marker"
    original = bytecode.mark(pfx.redsky_py, marker)
    try:
        before = bytecode.snapshot(pyc.parent)
        pfx.sendmail(post("From the bytecode"), LIST, sender=f"carl@{pf.USERS}")
        pfx.wait_idle()
        assert bytecode.snapshot(pyc.parent) == before                 # nothing compiled or written
    finally:
        pyc.write_bytes(original)
    assert ledger_view(pfx.home / "redsky.db") == [(m, "pending") for m in MEMBERS], pfx.log()[-2000:]
    assert bytecode.runs(marker) == [pwd.getpwnam("nobody").pw_uid], pfx.log()[-2000:]


def test_unknown_list_refused_at_rcpt_time(pfx):
    with smtplib.SMTP("127.0.0.1", pfx.port) as smtp:
        smtp.ehlo()
        smtp.mail(f"carl@{pf.USERS}")
        code, text = smtp.rcpt(f"nosuch@{pf.LISTS}")
        assert code == 550 and b"nosuch@lists.test" in text
        for suffix in ("", "-request", "-bounces", "-owner", "-join", "-leave"):
            code, _ = smtp.rcpt(f"team{suffix}@{pf.LISTS}")
            assert code == 250, suffix


def test_unknown_subscriber_dsn_comes_back_to_verp_and_scores_that_member(pfx):
    pfx.redsky("subscribe", LIST, f"unknown1@{pf.USERS}", check=True)
    pfx.sendmail(post("Who is there"), LIST, sender=f"carl@{pf.USERS}")
    pfx.wait_idle()
    pfx.redsky("send", check=True)
    pfx.wait_idle()                          # the DSN has gone through the pipe into bouncehandler
    scores = {m["address"]: m["bounce_score"] for m in
              __import__("json").loads(pfx.redsky("members", LIST, "--json", check=True).stdout)}
    assert scores == {f"ann@{pf.USERS}": 0, f"ben@{pf.USERS}": 0, f"unknown1@{pf.USERS}": 1}, pfx.log()[-3000:]
    db = sqlite3.connect(pfx.home / "redsky.db")
    (source, action, status) = db.execute("SELECT source, action, status FROM bounces").fetchone()
    assert (source, action, status) == ("verp", "failed", "5.1.1")


def test_queue_exit_75_defers_in_postfix_and_a_flush_delivers_once(pfx):
    holder = sqlite3.connect(pfx.home / "redsky.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")                  # queue cannot write: exits 75
    try:
        pfx.sendmail(post("Deferred first"), LIST, sender=f"carl@{pf.USERS}")
        deadline = time.time() + 20
        while "status=deferred" not in pfx.log() and time.time() < deadline:
            time.sleep(0.05)
        assert "status=deferred" in pfx.log()
        assert pfx.queued(), "the post must wait in Postfix's queue"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    pfx.flush()
    pfx.wait_idle()
    assert ledger_view(pfx.home / "redsky.db") == [(m, "pending") for m in MEMBERS]   # queued once, not twice
    pfx.redsky("send", check=True)
    pfx.wait_idle()
    assert [len(pfx.maildir(m.split("@")[0])) for m in MEMBERS] == [1, 1]


def test_request_command_through_postfix_gets_a_confirmation(pfx):
    pfx.sendmail(b"From: dora@users.test\nTo: team-join@lists.test\nSubject: join\n\nplease\n",
                 f"team-join@{pf.LISTS}", sender=f"dora@{pf.USERS}")
    pfx.wait_idle()
    pfx.redsky("send", check=True)
    pfx.wait_idle()
    (confirmation,) = [parse(d) for d in pfx.maildir("dora")]
    token = confirmation["Subject"].split()[-1]
    reply_to = confirmation["Reply-To"]
    assert reply_to == f"team-confirm+{token}@{pf.LISTS}"
    pfx.sendmail(b"From: dora@users.test\nSubject: Re: confirm\n\nyes\n", reply_to, sender=f"dora@{pf.USERS}")
    pfx.wait_idle()
    members = pfx.redsky("members", LIST, check=True).stdout.decode()
    assert "dora@users.test" in members


def test_doctor_passes_on_this_installation(pfx):
    r = pfx.redsky("doctor")
    out = r.stdout.decode()
    assert r.returncode == 0, out
    for finding in ("OK    Postfix recipient_delimiter has +",
                    "OK    Postfix 'redsky' pipe service runs 'queue' with the original recipient",
                    "OK    user postfix can read the list map", "OK    nobody can write the database and spool"):
        assert finding in out, out


def test_lookups_work_while_redsky_holds_a_write_lock(pfx):
    seen = len(pfx.log())
    holder = sqlite3.connect(pfx.home / "redsky.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")            # longer than any real redsky transaction
    try:
        with smtplib.SMTP("127.0.0.1", pfx.port) as smtp:
            smtp.ehlo()
            smtp.mail(f"carl@{pf.USERS}")
            assert smtp.rcpt(LIST)[0] == 250
            assert smtp.rcpt(f"team-bounces+ann=users.test@{pf.LISTS}")[0] == 250
            assert smtp.rcpt(f"nosuch@{pf.LISTS}")[0] == 550
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    new_log = pfx.log()[seen:]
    assert "dict_sqlite" not in new_log and "fatal" not in new_log


# --- the README's content-filter example (redsky.py filter behind Postfix) --------------

LISTED = "81.2.69.142"


def through_filter(pfx, data, sender=f"carl@{pf.USERS}", recipients=(LIST,)):
    with smtplib.SMTP("127.0.0.1", pfx.filter_port) as smtp:
        smtp.sendmail(sender, list(recipients), data)
    pfx.wait_idle()


def listed_received(ip=LISTED):
    return f"Received: from spam.example (spam.example [{ip}])\n\tby mx.example; Wed, 25 Nov 2026 10:00:00 +0000\n"


def test_content_filter_passes_clean_mail_back_into_postfix(pfx):
    through_filter(pfx, post("Filtered and clean"), recipients=(LIST, f"dora@{pf.USERS}"))
    assert ledger_view(pfx.home / "redsky.db") == [(m, "pending") for m in MEMBERS], pfx.log()[-3000:]
    (copy,) = pfx.maildir("dora")                # a plain mailbox recipient in the same transaction
    assert parse(copy)["Subject"] == "Filtered and clean"
    assert "redsky-filter" in pfx.log() and "status=sent" in pfx.log()


def test_content_filter_rejects_a_listed_client_with_a_bounce(pfx):
    from conftest import fake_dns
    fake_dns().a_records[".".join(reversed(LISTED.split("."))) + "." + pf.FILTER_ZONE] = ["127.0.0.2"]
    through_filter(pfx, listed_received().encode() + post("From a listed host"))
    assert ledger_view(pfx.home / "redsky.db") == []                     # never reached the list
    (bounce,) = [parse(d) for d in pfx.maildir("carl")]
    assert bounce.get_content_type() == "multipart/report"
    report = " ".join(bounce.as_string().split())          # Postfix folds the diagnostic
    assert f"Command output: 550 5.7.1 client {LISTED} is listed in {pf.FILTER_ZONE} (127.0.0.2)" in report


def test_content_filter_hold_is_quarantined_not_bounced(pfx):
    from conftest import fake_dns
    ip = "81.2.69.143"
    fake_dns().a_records[".".join(reversed(ip.split("."))) + "." + pf.FILTER_ZONE] = ["127.0.0.3"]
    original = pfx.config.read_text()
    pfx.config.write_text(original.replace("[dnsbl]\n", "[dnsbl]\naction = hold\n"))
    try:
        through_filter(pfx, listed_received(ip).encode() + post("Held by the filter"))
    finally:
        pfx.config.write_text(original)
    assert ledger_view(pfx.home / "redsky.db") == [] and pfx.maildir("carl") == []          # not delivered, no bounce
    (held,) = list((pfx.home / "quarantine" / "new").iterdir())
    assert b"Subject: Held by the filter" in held.read_bytes()


# --- the README's set-up path, command by command ---------------------------

def readme_setup(site, lists, users, send_settings):
    """The README's "From a bare host" block, made to run here: the paths
    under ``site``, the user nobody for redsky (a test must not add users),
    Postfix already installed (.ci/run does it), this test's domains, and
    `send` over SMTP to the private instance (see PrivatePostfix)."""
    block = pf.readme_setup_block()
    lines = []
    for line in block.splitlines():
        if line.startswith(("id -u redsky", "apt-get install")):
            continue
        line = (line.replace("/etc/cron.d/redsky", f"{site}/cron.d/redsky")
                .replace("/opt/redsky", f"{site}/opt/redsky").replace("/etc/redsky", f"{site}/etc/redsky")
                .replace("/var/lib/redsky", f"{site}/var/lib/redsky")
                .replace("user = redsky\\n", "user = nobody\\n" + send_settings.replace("\n", "\\n"))
                .replace("* * * * * redsky ", "* * * * * nobody ")
                .replace("lists.example.org", lists).replace("you@example.org", f"you@{users}"))
        lines.append(line)
    return "\n".join(lines) + "\n"


def test_the_readme_setup_path_works_on_a_bare_postfix(bare):
    """Every command of the README's set-up, in order, against a private
    Postfix that has none of redsky's settings; then the first post comes back."""
    site = bare.dir / "site"
    (site / "cron.d").mkdir(parents=True)
    script = readme_setup(site, pf.LISTS, pf.USERS, bare.send_settings)
    assert "postfix-config --apply" in script and "doctor" in script
    env = {**bare.env, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}     # python3 is Debian's, as on the host
    r = subprocess.run(["bash", "-ex"], input=script, text=True, capture_output=True, env=env,
                       cwd=pf.ROOT, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "FAIL" not in r.stdout and "OK    all 9 list addresses are routed to redsky" in r.stdout, r.stdout
    # init (as root) compiled redsky.py where the pipe's user cannot write, and the pipe imports it
    assert f"OK    the MTA's pipe runs redsky from its bytecode {site}/opt/redsky/__pycache__/redsky." in r.stdout
    assert "as a script" not in r.stdout
    data = site / "var" / "lib" / "redsky"
    assert {p.stat().st_uid for p in [data, *data.rglob("*")]} == {pwd.getpwnam("nobody").pw_uid}
    bare.wait_idle()
    cron = (site / "cron.d" / "redsky").read_text().split(None, 6)
    assert cron[5] == "nobody"
    subprocess.run(cron[6].split(), env=env, check=True, timeout=60)    # what cron runs each minute
    bare.wait_idle()
    (got,) = [parse(d) for d in bare.maildir("you")]
    assert got["Subject"] == "hello" and got["List-Id"], bare.log()[-2000:]


def test_postfix_lmtp_client_to_redsky_lmtp(bare):
    """Postfix's own lmtp client delivers the lists to `redsky.py lmtp`
    (postfix-config --lmtp --apply); unknown lists are refused at RCPT."""
    from smtpsink import free_port
    site = bare.dir / "site"
    site.mkdir()
    site.chmod(0o755)
    script = site / "redsky.py"
    script.write_bytes((pf.ROOT / "redsky.py").read_bytes())
    script.chmod(0o755)
    config = site / "redsky.ini"
    # a share of 2 sessions per peer: Postfix's lmtp clients, all of one user, would open 5 at once
    config.write_text("[redsky]\ndata_dir = data\nlog = redsky.log\n[postfix]\nuser = nobody\n"
                      "[lmtp]\nsessions_per_peer = 2\n" + bare.send_settings)
    rs = lambda *a: subprocess.run(["/usr/bin/python3", str(script), "-c", str(config), *a], capture_output=True,
                                   text=True, env=bare.env, timeout=60)
    port = free_port()
    server = None
    try:
        for args in (("init",), ("newlist", LIST, "--access", "open"), ("subscribe", LIST, *MEMBERS),
                     ("set", LIST, "dmarc", "never")):
            assert rs(*args).returncode == 0
        server = subprocess.Popen(["/usr/bin/python3", str(script), "-c", str(config), "lmtp", "--listen",
                                   f"127.0.0.1:{port}"], env=bare.env)
        applied = rs("postfix-config", "--lmtp", f"inet:127.0.0.1:{port}", "--apply")
        assert applied.returncode == 0 and "relay_recipient_maps" in applied.stdout, applied.stderr
        bare.postfix("reload")
        time.sleep(1)
        with smtplib.SMTP("127.0.0.1", bare.port, timeout=30) as smtp:
            smtp.ehlo()
            smtp.mail(f"carl@{pf.USERS}")
            assert smtp.rcpt(f"nosuch@{pf.LISTS}")[0] == 550
            assert smtp.rcpt(f"team-bounces+x=example.org@{pf.LISTS}")[0] == 250
        bare.sendmail(post("Over LMTP"), LIST, sender=f"carl@{pf.USERS}")
        bare.wait_idle()
        assert "relay=127.0.0.1" in bare.log() and "status=sent" in bare.log(), bare.log()[-2000:]
        assert rs("send").returncode == 0
        bare.wait_idle()
        assert [len(bare.maildir(m.split("@")[0])) for m in MEMBERS] == [1, 1], bare.log()[-2000:]
        doctor = rs("doctor").stdout
        assert "OK    Postfix sends the lists over LMTP to inet:127.0.0.1:" in doctor, doctor
        assert "OK    all 9 list addresses are routed to redsky" in doctor, doctor
        assert "OK    Postfix opens at most 2 LMTP sessions to redsky, which grants one peer 2" in doctor, doctor
        # a burst: 24 posts held back, then let go at once; no session is refused (421)
        postconf = lambda *a: subprocess.run(["postconf", "-c", str(bare.etc), *a], env=bare.env, check=True,
                                             capture_output=True, text=True).stdout
        assert "lmtp" in postconf("-M", "redsky-lmtp/unix")
        postconf("-e", "defer_transports = redsky-lmtp")
        bare.postfix("reload")
        time.sleep(1)
        for i in range(24):
            bare.sendmail(post(f"Burst {i}"), LIST, sender=f"carl@{pf.USERS}")
        deadline = time.time() + 30
        while len(bare.queued()) < 24 and time.time() < deadline:
            time.sleep(0.1)
        postconf("-e", "defer_transports =")
        bare.postfix("reload")
        time.sleep(1)
        bare.flush()
        bare.wait_idle(60)
        log = bare.log()
        # an LMTP refusal is logged as "said: 421 4.7.0 ..." (a bare "421" may be part of a Message-ID)
        assert log.count("status=sent") >= 25 and not re.search(r"\b421[ -]4\.\d", log), log[-3000:]
        assert "more get 421" not in (site / "data" / "redsky.log").read_text()
    finally:
        if server is not None:
            server.terminate()
            server.wait(20)


def test_a_new_or_deleted_list_reaches_postfix_without_a_reload(pfx):
    """Postfix's daemons keep the map open: a map replaced by rename left them reading the old
    one for minutes ("User unknown in virtual alias table" for a list just made).  redsky
    updates it in place, so the next lookup of every daemon sees the change."""
    def rcpt(address):
        with smtplib.SMTP("127.0.0.1", pfx.port, timeout=30) as smtp:
            smtp.ehlo()
            smtp.mail(f"carl@{pf.USERS}")
            return smtp.rcpt(address)
    assert rcpt(LIST)[0] == 250                       # smtpd and trivial-rewrite have the map open now
    other = f"other@{pf.LISTS}"
    assert rcpt(other)[0] == 550
    pfx.redsky("newlist", other, "--access", "open", check=True)
    pfx.redsky("subscribe", other, *MEMBERS, check=True)
    for suffix in ("", "-request", "-join"):
        code, text = rcpt(other.replace("@", f"{suffix}@"))
        assert code == 250, (suffix, text)
    pfx.redsky("dellist", other, check=True)
    assert rcpt(other)[0] == 550
    assert rcpt(LIST)[0] == 250


def test_doctor_tells_a_postfix_that_does_not_run(bare, tmp_path, monkeypatch):
    """A newcomer's doctor said every list address was routed while Postfix was stopped: the master
    process of the Postfix postconf reads is looked for (its pid file, then /proc)."""
    import redsky
    monkeypatch.setenv("MAIL_CONFIG", str(bare.etc))
    (tmp_path / "redsky.ini").write_text(f"[redsky]\ndata_dir = {tmp_path}\n")
    config = redsky.Config(str(tmp_path / "redsky.ini"))
    assert redsky.postfix_running() is True
    assert not any("master process does not run" in f for _, f, _ in redsky.postfix_checks(config))
    bare.postfix("stop")
    deadline = time.time() + 10
    while redsky.postfix_running() and time.time() < deadline:
        time.sleep(0.2)
    assert redsky.postfix_running() is False
    findings = list(redsky.postfix_checks(config))
    assert ("FAIL", "Postfix is configured but its master process does not run: the lists get no mail",
            "systemctl start postfix (and systemctl enable postfix, for every boot)") in findings
