"""`redsky.py doctor`: every FAIL it can report, and a clean bill when all is well."""

import os
import pwd
import shutil

import pytest

import redsky
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
    assert redsky.find_send_schedule([str(tmp_path)]) is None
    (tmp_path / "redsky").write_text("* * * * * list /usr/bin/python3 /opt/redsky/redsky.py -c /etc/r.ini send\n")
    assert redsky.find_send_schedule([str(tmp_path)]) == str(tmp_path / "redsky")


def test_dkim_breaking_lists_are_warned(ok):
    ok.run("set", "test@lists.example.org", "subject_tag", "[t]", check=0)
    code, out = doctor(ok)
    assert code == 0 and "WARN  list test@lists.example.org: its subject tag change" in out


def postfix_conf(tmp_path, main, master=""):
    etc = tmp_path / "pf"
    etc.mkdir()
    (etc / "main.cf").write_text("compatibility_level = 3.6\n" + main)
    (etc / "master.cf").write_text(master)
    past = os.path.getmtime(etc) - 10
    for f in etc.iterdir():
        os.utime(f, (past, past))
    return {"MAIL_CONFIG": str(etc)}


@pytest.mark.mta
@needs_postconf
def test_postfix_without_recipient_delimiter_fails(ok, tmp_path):
    env = postfix_conf(tmp_path, "recipient_delimiter =\n")
    code, out = doctor(ok, env)
    assert code == 78 and "recipient_delimiter" in fails(out)[0]
    assert "no 'redsky' pipe service" in out


@pytest.mark.mta
@needs_postconf
def test_postfix_pipe_without_original_recipient_fails(ok, tmp_path):
    master = ("redsky    unix  -       n       n       -       -       pipe\n"
              "  user=nobody argv=/usr/bin/python3 /opt/redsky.py queue\n")
    env = postfix_conf(tmp_path, "recipient_delimiter = +\nredsky_destination_recipient_limit = 1\n", master)
    code, out = doctor(ok, env)
    assert code == 78 and "original_recipient" in fails(out)[0]


@pytest.mark.mta
@needs_postconf
def test_postfix_recipient_limit_fails(ok, tmp_path):
    master = ("redsky    unix  -       n       n       -       -       pipe\n"
              "  flags=OR user=nobody argv=/usr/bin/python3 /opt/redsky.py queue --recipient=${original_recipient}\n")
    env = postfix_conf(tmp_path, "recipient_delimiter = +\n", master)
    code, out = doctor(ok, env)
    assert code == 78 and "redsky_destination_recipient_limit" in fails(out)[0]


@pytest.mark.mta
@needs_postconf
@needs_root
def test_postfix_cannot_read_the_map_fails(ok, tmp_path):
    try:
        pwd.getpwnam("postfix")
    except KeyError:
        pytest.skip("no postfix user")
    env = postfix_conf(tmp_path, "recipient_delimiter = +\n")
    ok.home.chmod(0o700)
    code, out = doctor(ok, env)
    assert code == 78 and any("user postfix cannot read the list map" in f for f in fails(out))
    # the positive case runs against the private Postfix in test_postfix.py
