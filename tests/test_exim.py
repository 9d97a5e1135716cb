"""redsky behind a real, private Exim 4: the README's router and transport.

Skipped (with the reason) where Exim cannot run; .ci/run extracts Debian's
Exim package and sets REDSKY_REQUIRE_EXIM=1 so that CI fails instead."""

import functools
import json
import os
import smtplib
import sqlite3
import subprocess

import pytest

import exim as ex
from conftest import mta_post, parse, require

pytestmark = pytest.mark.mta

LIST = f"team@{ex.LISTS}"
MEMBERS = (f"ann@{ex.USERS}", f"ben@{ex.USERS}")


@pytest.fixture(scope="module")
def mta():
    require(ex.missing(), "REDSKY_REQUIRE_EXIM")
    instance = ex.PrivateExim()
    instance.redsky("newlist", LIST, "--access", "open", check=True)
    instance.redsky("subscribe", LIST, *MEMBERS, check=True)
    instance.redsky("set", LIST, "dmarc", "never", check=True)
    try:
        yield instance
    finally:
        instance.stop()


post = functools.partial(mta_post, LIST, sender=f"carl@{ex.USERS}", body="Hello through Exim.\n")


def test_a_post_through_exim_reaches_every_member(mta):
    mta.submit(post("Through Exim"), LIST, sender=f"carl@{ex.USERS}")
    mta.wait_idle()
    assert mta.redsky("send").returncode == 0
    mta.wait_idle()
    for member in MEMBERS:
        got = [parse(d) for d in mta.maildir(member.split("@")[0])]
        assert any(m["Subject"] == "Through Exim" and m["List-Id"] for m in got), mta.log()[-2000:]


def test_the_exim_pipe_runs_queue_from_the_bytecode_that_init_compiled(mta):
    """The README's transport: Exim splits the command at spaces outside
    quotes, so the single-quoted code that imports redsky is one argument;
    the pipe's user (nobody) cannot write beside redsky.py and runs the .pyc
    `init` compiled as root (a marked copy of it writes nobody's uid)."""
    import pwd
    import bytecode
    import redsky
    site = mta.redsky_py.parent
    pyc = bytecode.pyc_of(mta.redsky_py)
    assert not redsky.user_can(str(site), "nobody", write=True)
    assert not redsky.user_can(str(pyc.parent), "nobody", write=True)
    marker = site / "marker"
    original = bytecode.mark(mta.redsky_py, marker)
    try:
        before = bytecode.snapshot(pyc.parent)
        mta.submit(post("From the bytecode"), LIST, sender=f"carl@{ex.USERS}")
        mta.wait_idle()
        assert bytecode.snapshot(pyc.parent) == before                 # nothing compiled or written
    finally:
        pyc.write_bytes(original)
    assert bytecode.runs(marker) == [pwd.getpwnam("nobody").pw_uid], mta.log()[-2000:]


def test_unknown_list_refused_at_rcpt_time(mta):
    with smtplib.SMTP("127.0.0.1", mta.port, timeout=30) as smtp:
        smtp.ehlo()
        smtp.mail(f"carl@{ex.USERS}")
        code, text = smtp.rcpt(f"nosuch@{ex.LISTS}")
        assert code == 550, text
        for suffix in ("", "-request", "-bounces", "-join", "-leave"):
            assert smtp.rcpt(f"team{suffix}@{ex.LISTS}")[0] == 250, suffix


def test_a_bounce_comes_back_to_the_verp_address_and_counts(mta):
    mta.redsky("subscribe", LIST, f"unknown1@{ex.USERS}", check=True)
    mta.submit(post("Who is there"), LIST, sender=f"carl@{ex.USERS}")
    mta.wait_idle()
    mta.redsky("send", check=True)
    mta.wait_idle()                       # Exim's bounce went through the pipe into bouncehandler
    scores = {m["address"]: m["bounce_score"]
              for m in json.loads(mta.redsky("members", LIST, "--json", check=True).stdout)}
    assert scores[f"unknown1@{ex.USERS}"] > 0, mta.log()[-3000:]
    db = sqlite3.connect(mta.data / "redsky.db")
    assert db.execute("SELECT source, action FROM bounces WHERE address = ?",
                      (f"unknown1@{ex.USERS}",)).fetchone() == ("verp", "failed")


def test_join_through_exim_gets_a_confirmation(mta):
    mta.submit(b"From: dora@users.test\nTo: team-join@lists.test\nSubject: join\n\nplease\n",
               f"team-join@{ex.LISTS}", sender=f"dora@{ex.USERS}")
    mta.wait_idle()
    mta.redsky("send", check=True)
    mta.wait_idle()
    (confirmation,) = [parse(d) for d in mta.maildir("dora")]
    token = confirmation["Subject"].split()[-1]
    assert confirmation["Reply-To"] == f"team-confirm+{token}@{ex.LISTS}"
    mta.submit(b"From: dora@users.test\nSubject: Re: confirm\n\nyes\n", confirmation["Reply-To"],
               sender=f"dora@{ex.USERS}")
    mta.wait_idle()
    assert "dora@users.test" in mta.redsky("members", LIST, check=True).stdout.decode()


def test_doctor_follows_the_list_addresses_through_exim(mta):
    """doctor finds Exim on PATH and asks it (exim -bt) where each list address goes
    (run by root, it works as the list user, so the wrapper lives where that user can reach)."""
    bindir = mta.dir / "bin"
    bindir.mkdir(exist_ok=True)
    wrapper = bindir / "exim4"
    wrapper.write_text(f"#!/bin/sh\nexec {ex.BINARY} -C {mta.conf} \"$@\"\n")
    wrapper.chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}:/usr/sbin:/usr/bin:/sbin:/bin"}
    run = lambda: subprocess.run(["/usr/bin/python3", str(mta.redsky_py), "-c", str(mta.config), "doctor"],
                                 capture_output=True, text=True, env=env, timeout=120).stdout
    out = run()
    assert "OK    Exim routes all 9 list addresses checked to redsky" in out, out
    conf = mta.conf.read_text()
    try:
        mta.conf.write_text(conf.replace("transport = redsky_pipe", "transport = maildir_home")
                            .replace("redsky:\n  driver = accept", "lists:\n  driver = accept"))
        assert "FAIL  Exim does not route 9 list addresses to redsky" in run()
    finally:
        mta.conf.write_text(conf)
