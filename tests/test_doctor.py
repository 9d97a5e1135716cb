"""`redsky.py doctor`: every FAIL it can report, and a clean bill when all is well."""

import os
import pwd
import shutil
import subprocess
import sys

import pytest

import redsky
from conftest import ROOT
from smtpsink import SMTPSink, free_port

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="permission checks need root to set up")
needs_postconf = pytest.mark.skipif(shutil.which("postconf") is None and not os.path.exists("/usr/sbin/postconf"),
                                    reason="Postfix (postconf) is not installed")


def doctor(rs, env=None):
    r = rs.run("doctor", env=env)
    assert "Traceback" not in r.err
    return r.returncode, r.out


def fails(out):
    return [line for line in out.splitlines() if line.startswith("FAIL")]


@pytest.fixture
def ok(rs):
    rs.newlist("test@lists.example.org", members=("a@example.org",))
    return rs


def test_healthy_installation_passes(ok):
    code, out = doctor(ok)
    assert code == 0 and fails(out) == [], out
    assert "OK    database" in out and "OK    sendmail" in out


def test_missing_database_fails(rs):
    code, out = doctor(rs)
    assert code == 78 and "does not exist" in fails(out)[0] and "redsky.py init" in out


def test_wrong_schema_version_fails(ok):
    with ok.db() as db:
        db.execute("PRAGMA user_version = 99")
    code, out = doctor(ok)
    assert code == 78 and "schema version 99" in fails(out)[0]


def test_sendmail_not_executable_fails(ok):
    ok.write_config(send={"sendmail": str(ok.home / "nope")})
    code, out = doctor(ok)
    assert code == 78 and "is not an executable file" in fails(out)[0]


def test_smtp_unreachable_fails_and_reachable_passes(ok):
    ok.write_config(send={"transport": "smtp", "smtp_host": "127.0.0.1", "smtp_port": free_port()})
    code, out = doctor(ok)
    assert code == 78 and "unreachable" in fails(out)[0]
    with SMTPSink() as sink:
        ok.write_config(send={"smtp_port": sink.port})
        code, out = doctor(ok)
    assert code == 0 and "answers" in out


@needs_root
def test_pipe_user_cannot_write_the_archive_fails():
    """In a home nobody can reach (pytest's tmp is root's 0700), only the archive is closed."""
    import tempfile
    from conftest import Redsky
    home = tempfile.mkdtemp(prefix="redsky-doctor-", dir="/tmp")
    try:
        os.chmod(home, 0o1777)         # sticky, as /tmp: nobody writes, nobody replaces the config
        rs = Redsky(home)
        rs.write_config(postfix={"user": "nobody"}, redsky={"log": "stderr", "umask": "000"})
        rs.newlist("test@lists.example.org")
        code, out = doctor(rs)
        assert "nobody can write the database and spool" in out, out
        os.mkdir(os.path.join(home, "archive"), 0o755)        # root's, closed to nobody
        code, out = doctor(rs)
        assert code == 78 and "nobody cannot write the archive" in fails(out)[0]
    finally:
        shutil.rmtree(home, ignore_errors=True)


@needs_root
def test_pipe_user_cannot_write_the_database_fails(ok):
    ok.write_config(postfix={"user": "nobody"})
    ok.home.chmod(0o700)               # root's, closed: nobody cannot reach the database
    code, out = doctor(ok)
    assert code == 78 and "nobody cannot write" in fails(out)[0]
    assert "chown -R nobody" in out


def test_cron_schedule_is_found_or_warned(tmp_path):
    assert redsky.find_send_schedule([str(tmp_path)]) == (None, [])
    (tmp_path / "redsky").write_text("* * * * * list /usr/bin/python3 /opt/redsky/redsky.py -c /etc/r.ini send\n")
    assert redsky.find_send_schedule([str(tmp_path)]) == (str(tmp_path / "redsky"), [])


def test_a_schedule_with_no_cron_daemon_is_a_failure(tmp_path, monkeypatch):
    """A cron file nobody runs is no schedule: doctor says which daemon is missing."""
    (tmp_path / "redsky").write_text("* * * * * list /usr/bin/python3 /opt/redsky/redsky.py send\n")
    config = redsky.Config(None)
    assert any(name.startswith("python") or name == "pytest" for name in redsky.running_programs())
    for running, level in (({"bash", "python3"}, "FAIL"), ({"cron", "bash"}, "OK"), ({"crond"}, "OK"),
                           (None, "WARN")):
        monkeypatch.setattr(redsky, "running_programs", lambda running=running: running)
        found = list(redsky.schedule_checks(config, "list", [str(tmp_path)]))
        assert found[0][0] == "OK" and "is scheduled" in found[0][1]
        assert [f[0] for f in found[1:]] == ([] if level == "OK" else [level]), (running, found)
    assert "systemd" not in "".join(f[1] for f in found)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to nobody needs root")
def test_doctor_as_the_list_user_says_what_it_cannot_read_and_goes_on():
    """Debian's /var/spool/cron/crontabs is 1730 root:crontab: doctor, working as the list user,
    cannot list it, says so, and finishes every other check (it used to exit 70)."""
    import tempfile
    top = tempfile.mkdtemp(prefix="redsky-cron-", dir="/tmp")
    try:
        os.chmod(top, 0o755)
        closed = os.path.join(top, "crontabs")
        os.mkdir(closed, 0o1730)
        with open(os.path.join(closed, "root"), "w") as fh:
            fh.write("* * * * * true\n")
        code = (f"import os, sys; sys.path.insert(0, {str(ROOT)!r}); import redsky\n"
                "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
                f"for f in redsky.schedule_checks(redsky.Config(None), 'nobody', [{closed!r}]): print(f[0], f[1])\n"
                "def broken():\n    yield 'OK', 'first', ''\n    os.listdir(" + repr(closed) + ")\n"
                "for f in redsky.looked('a thing', broken()): print(f[0], f[1])\n")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "HOME": "/tmp"})
    finally:
        shutil.rmtree(top)
    assert r.returncode == 0, r.stderr
    assert f"WARN no job that runs 'redsky.py send' found, but {closed} cannot be read" in r.stdout
    assert "OK first\nWARN cannot check a thing: PermissionError" in r.stdout


@needs_root
def test_doctor_checks_what_the_web_servers_user_can_reach(ok):
    """[web] user (and [web] cgi): doctor says whether that user can write what the CGI script
    writes and read the pages of public archives, each FAIL with its fix, until all is OK.
    (tests/test_setup.py runs the README's set-up, the script as www-data and doctor end to end.)"""
    import grp
    import stat
    import tempfile
    from pathlib import Path
    from conftest import post
    web = [line for line in doctor(ok)[1].splitlines() if "www-data" in line or "[web] user" in line]
    assert web == []                                        # no [web] user: nothing to check
    # init refuses to open to the group the folder of the config (here in data_dir): it is code
    ok.write_config(web={"cgi": "yes", "user": "www-data"})
    modes = {p: p.stat().st_mode for p in [ok.home, *ok.home.rglob("*")]}
    r = ok.run("init")
    assert r.returncode == 78 and "move it out first" in r.err and str(ok.config) in r.err, r.err
    assert {p: p.stat().st_mode for p in [ok.home, *ok.home.rglob("*")]} == modes
    del ok.settings["web"]
    # a host's layout: the config in a folder of root's, data_dir beside it, everyone may pass
    top = Path(tempfile.mkdtemp(prefix="redsky-doctor-", dir="/tmp"))
    try:
        top.chmod(0o755)
        (top / "etc").mkdir(mode=0o755)
        (top / "data").mkdir(mode=0o700)
        ok.config.unlink()
        ok.config, data = top / "etc" / "redsky.ini", top / "data"
        ok.write_config(redsky={"data_dir": str(data)})
        ok.config.chmod(0o644)
        ok.run("init", check=0)
        ok.newlist("test@lists.example.org", members=("a@example.org",))
        ok.run("set", "test@lists.example.org", "archive", "public", check=0)
        ok.queue(post(), check=0)
        web_user_checks(ok, data)
    finally:
        shutil.rmtree(top)


def web_user_checks(ok, data):
    import grp
    import stat
    ok.write_config(web={"cgi": "yes"})
    assert "WARN  [web] cgi = yes, but [web] user is empty" in doctor(ok)[1]
    ok.write_config(web={"user": "no-such-web-user"})
    assert "FAIL  [web] user no-such-web-user does not exist" in doctor(ok)[1]
    ok.write_config(web={"user": "www-data"})
    out = doctor(ok)[1]
    assert f"FAIL  www-data is not in {data}'s group root" in out, out
    assert "fix: run as root: adduser www-data root, then restart the web server" in out
    assert "FAIL  www-data cannot read the archive pages" in out         # 0770 and 0660, group root
    # the list user's group is one www-data is in (its own here): the folders are not shared yet
    www = grp.getgrnam("www-data").gr_gid
    for root, dirs, files in os.walk(data):
        for name in [root, *(os.path.join(root, f) for f in files)]:
            os.chown(name, -1, www)
    out = doctor(ok)[1]
    assert f"FAIL  {data}, {data}/spool: not set-group-ID and group-writable for www-data" in out, out
    assert " init (it shares them when [web] cgi = yes)" in out, out
    assert "FAIL  www-data cannot read the archive pages" in out          # data_dir 0700: no way in
    assert ok.run("init").returncode == 0                                # the fix doctor names
    assert stat.S_IMODE(data.stat().st_mode) == 0o3770
    out = doctor(ok)[1]
    assert "OK    www-data can read the archive pages of 1 public lists" in out, out
    assert "OK    www-data (the CGI script) can write the database, its -wal and -shm and the spool" in out, out
    assert not [line for line in fails(out) if "www-data" in line]
    ok.write_config(redsky={"umask": "027"})
    out = doctor(ok)[1]
    assert "FAIL  [redsky] umask = 027 closes what the CGI script (www-data) writes" in out
    assert "fix: set [redsky] umask = 007" in out
    ok.write_config(redsky={"umask": "007"})
    os.chmod(data / "redsky.db", 0o640)                              # a database the group cannot write
    out = doctor(ok)[1]
    assert f"FAIL  www-data cannot write {data}/redsky.db" in out, out
    os.chmod(ok.config, 0o600)                                       # nor read the config
    out = doctor(ok)[1]
    assert f"FAIL  www-data cannot read {ok.config} nor write {data}/redsky.db" in out, out
    assert f"fix: run as root: chmod 644 {ok.config}; run as root: " in out
    os.chmod(data / "redsky.db", 0o660)
    out = doctor(ok)[1]
    assert f"FAIL  www-data cannot read {ok.config}: the CGI" in out and f"fix: run as root: chmod 644 {ok.config}\n" in out
