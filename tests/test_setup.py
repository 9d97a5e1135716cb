"""From a bare host to a working list (issue 17): root does the right thing,
`postfix-config --apply` merges into a live Postfix configuration, and
`doctor` sees what breaks mail, with the fix for whoever runs it."""

import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

import redsky
from conftest import FILE_MAIN, ROOT, post

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
needs_postconf = pytest.mark.skipif(shutil.which("postconf") is None and not os.path.exists("/usr/sbin/postconf"),
                                    reason="Postfix (postconf) is not installed")
NOBODY = pwd.getpwnam("nobody")


@pytest.fixture
def site():
    """An installation as an admin lays it out: redsky.py and the config in
    root's directories that everyone may read, the data directory inside."""
    top = Path(tempfile.mkdtemp(prefix="redsky-setup-", dir="/tmp"))
    top.chmod(0o755)
    shutil.copy(ROOT / "redsky.py", top / "redsky.py")
    config = top / "redsky.ini"
    config.write_text("[redsky]\ndata_dir = data\nlog = stderr\n[send]\ntransport = maildir\n"
                      "[postfix]\nuser = nobody\n")
    yield top
    shutil.rmtree(top, ignore_errors=True)


def redsky_as(site, *args, user=None, input=b"", env=None):
    """Run the site's redsky.py with /usr/bin/python3 (or this python), as root or as ``user``
    (from cached bytecode: FILE_MAIN)."""
    python = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else shutil.which("python3")
    def drop():
        if user is not None:
            pw = pwd.getpwnam(user)
            os.setgroups([])
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)
    env = {k: v for k, v in {**os.environ, **(env or {})}.items() if k != "PYTHONDONTWRITEBYTECODE"}
    r = subprocess.run([python, "-c", FILE_MAIN, str(site / "redsky.py"), "-c", str(site / "redsky.ini"), *args],
                       input=input, capture_output=True, timeout=60, preexec_fn=drop, env=env)
    r.out, r.err = r.stdout.decode(), r.stderr.decode()
    return r


def owners(directory):
    return {pwd.getpwuid(p.stat().st_uid).pw_name for p in Path(directory).rglob("*")} | \
        {pwd.getpwuid(Path(directory).stat().st_uid).pw_name}


@needs_root
def test_root_creates_the_data_dir_for_the_list_user_and_works_as_it(site):
    """init, newlist, subscribe and queue run by root: every file is the list user's."""
    assert redsky_as(site, "init").returncode == 0
    data = site / "data"
    assert data.stat().st_uid == NOBODY.pw_uid and stat.S_IMODE(data.stat().st_mode) == 0o751
    redsky_as(site, "newlist", "team@lists.example.org", "--access", "open")
    redsky_as(site, "subscribe", "team@lists.example.org", "ann@example.org")
    r = redsky_as(site, "queue", "--recipient", "team@lists.example.org", "--sender", "bob@example.org",
                  input=post(sender="bob@example.org"))
    assert r.returncode == 0, r.err
    assert owners(data) == {"nobody"}
    assert list((data / "spool").iterdir())
    # and the list user's own send, as the MTA pipe or cron would run it, reads it all
    r = redsky_as(site, "send", user="nobody")
    assert r.returncode == 0 and "sent 1" in r.err + r.out, r.err


@needs_root
def test_root_on_an_existing_data_dir_works_as_its_owner(site):
    (site / "data").mkdir()
    os.chown(site / "data", NOBODY.pw_uid, NOBODY.pw_gid)
    (site / "redsky.ini").write_text("[redsky]\ndata_dir = data\nlog = stderr\n")    # no [postfix] user
    assert redsky_as(site, "init").returncode == 0
    assert owners(site / "data") == {"nobody"}


@needs_root
def test_a_data_dir_its_owner_cannot_reach_is_a_clear_77(site):
    (site / "closed").mkdir(mode=0o700)
    (site / "closed" / "data").mkdir()
    os.chown(site / "closed" / "data", NOBODY.pw_uid, NOBODY.pw_gid)
    (site / "redsky.ini").write_text("[redsky]\ndata_dir = closed/data\nlog = stderr\n")
    r = redsky_as(site, "init")
    assert r.returncode == 77 and "Traceback" not in r.err
    assert "nobody" in r.err and len(r.err.strip().splitlines()) == 1
    assert not list((site / "closed" / "data").iterdir())          # nothing created by root


@needs_root
def test_an_in_process_run_never_switches_this_process_to_the_list_user(rs):
    """The tests run as root and the CLI in their own process: a run that
    would work as the owner of data_dir is refused (it needs a process of
    its own, subprocess=True), and this process stays root."""
    from conftest import UserSwitch
    data = rs.home / "data"
    data.mkdir()
    os.chown(data, NOBODY.pw_uid, NOBODY.pw_gid)
    rs.write_config(redsky={"data_dir": str(data)})
    with pytest.raises(UserSwitch):
        rs.run("init")
    assert (os.getuid(), os.geteuid(), os.getgid(), os.getegid()) == (0, 0, 0, 0)
    assert list(data.iterdir()) == []
    rs.write_config(redsky={"data_dir": str(rs.home)})
    assert rs.run("init").returncode == 0                   # and the next run is whole


@needs_root
def test_a_missing_postfix_user_is_a_configuration_error(site):
    (site / "redsky.ini").write_text("[redsky]\ndata_dir = data\nlog = stderr\n[postfix]\nuser = no-such-user\n")
    r = redsky_as(site, "init")
    assert r.returncode == 78 and "useradd" in r.err and not (site / "data").exists()


def postfix_etc(site, main="", master=""):
    etc = site / "etc"
    etc.mkdir()
    (etc / "main.cf").write_text("compatibility_level = 3.6\n" + main)
    (etc / "master.cf").write_text("smtp      inet  n       -       n       -       -       smtpd\n" + master)
    return {"MAIL_CONFIG": str(etc)}


@pytest.mark.mta
@needs_root
@needs_postconf
def test_apply_merges_into_a_live_configuration_once(site):
    env = postfix_etc(site, "virtual_alias_maps = hash:/etc/postfix/virtual\nrecipient_delimiter = -\n"
                            "transport_maps = inline:{ a.example=smtp:[mx.a.example], b.example=discard: }\n")
    redsky_as(site, "init")
    redsky_as(site, "newlist", "team@lists.example.org")
    before = (site / "etc" / "main.cf").read_text()
    r = redsky_as(site, "postfix-config", "--apply", env=env)
    assert r.returncode == 0, r.err
    main = (site / "etc" / "main.cf").read_text()
    assert "virtual_alias_maps = hash:/etc/postfix/virtual, sqlite:" in main      # kept, ours added
    assert "recipient_delimiter = -+" in main
    assert "inline:{ a.example=smtp:[mx.a.example], b.example=discard: }, inline:{redsky.invalid=redsky:}" in main
    assert "redsky_destination_recipient_limit = 1" in main
    assert "main.cf: virtual_alias_maps" in r.out and "backup:" in r.out and "postfix reload" in r.out
    backups = sorted((site / "etc").glob("main.cf.redsky-*"))
    assert len(backups) == 1 and backups[0].read_text() == before
    service = subprocess.run(["postconf", "-M", "redsky/unix"], capture_output=True, text=True,
                             env={**os.environ, **env}).stdout
    assert "user=nobody" in service and "--recipient=${original_recipient}" in service
    for cf in ("redsky-domains.cf", "redsky-aliases.cf"):
        assert stat.S_IMODE((site / "etc" / cf).stat().st_mode) == 0o644
    again = redsky_as(site, "postfix-config", "--apply", env=env)
    assert again.out.startswith("nothing to change") and (site / "etc" / "main.cf").read_text() == main
    assert len(list((site / "etc").glob("main.cf.redsky-*"))) == 1
    assert owners(site / "data") == {"nobody"}             # the map was made as the list user


@pytest.mark.mta
@needs_root
@needs_postconf
def test_apply_on_a_postfix_with_no_main_cf_says_what_to_do_and_writes_nothing(site):
    """Debian's "No configuration" leaves no main.cf: --apply used to write its files, then print
    only "postconf -e ... failed"."""
    etc = site / "etc"
    etc.mkdir()
    (etc / "master.cf").write_text("smtp      inet  n       -       n       -       -       smtpd\n")
    redsky_as(site, "init")
    r = redsky_as(site, "postfix-config", "--apply", "--dir", str(etc), env={"MAIL_CONFIG": str(etc)})
    assert r.returncode == 78, r.err
    assert f"no {etc}/main.cf" in r.err and "dpkg-reconfigure postfix" in r.err
    assert sorted(p.name for p in etc.iterdir()) == ["master.cf"]          # nothing written
    # a postconf that refuses a change says why, in its own words
    (etc / "main.cf").write_text("compatibility_level = 3.6\n")
    fake = site / "bin"
    fake.mkdir()
    (fake / "postconf").write_text("#!/bin/sh\ncase \"$1\" in -e|-M) case \"$2\" in *=*) echo 'postconf: fatal:"
                                   " open /x/main.cf: Read-only file system' >&2; exit 1;; esac;; esac\n"
                                   "exec /usr/sbin/postconf \"$@\"\n")
    (fake / "postconf").chmod(0o755)
    fake.chmod(0o755)
    r = redsky_as(site, "postfix-config", "--apply",
                  env={"MAIL_CONFIG": str(etc), "PATH": f"{fake}:{os.environ['PATH']}"})
    assert r.returncode == 78 and "failed: postconf: fatal: open /x/main.cf: Read-only file system" in r.err, r.err


def doctor_fails(r):
    return [line for line in r.out.splitlines() if line.startswith("FAIL")]


@pytest.mark.mta
@needs_root
@needs_postconf
def test_doctor_follows_each_list_address_through_the_live_maps(site):
    env = postfix_etc(site, "recipient_delimiter = +\n")
    redsky_as(site, "init")
    redsky_as(site, "newlist", "team@lists.example.org")
    r = redsky_as(site, "doctor", env=env)
    fails = "\n".join(doctor_fails(r))
    assert r.returncode == 78
    assert "does not accept mail for lists.example.org" in fails
    assert "9 of 9 list addresses are not routed" in fails and "transport_maps" in fails
    assert "postfix-config --apply" in r.out
    redsky_as(site, "postfix-config", "--apply", env=env)
    r = redsky_as(site, "doctor", env=env)
    assert "OK    Postfix accepts mail for lists.example.org" in r.out
    assert "OK    all 9 list addresses are routed to redsky" in r.out
    assert "OK    transport_maps sends the lists to the 'redsky' pipe" in r.out
    assert not [f for f in doctor_fails(r) if "Postfix" in f or "routed" in f], r.out
    # the same domain as a local one: a conflict Postfix only warns about in its log
    subprocess.run(["postconf", "-e", "mydestination = localhost, lists.example.org"], env={**os.environ, **env})
    assert any("mydestination" in f for f in doctor_fails(redsky_as(site, "doctor", env=env)))
    # Postfix does not trust a map file others may change
    (site / "etc" / "redsky-aliases.cf").chmod(0o666)
    assert any("chmod 644" in line for line in redsky_as(site, "doctor", env=env).out.splitlines())


@pytest.mark.mta
@needs_root
@needs_postconf
def test_apply_replaces_a_pipe_that_runs_redsky_as_a_script(site):
    """An installation made before the pipe imported redsky: doctor says
    every message is compiled, and --apply brings the pipe up to date."""
    env = postfix_etc(site, "recipient_delimiter = +\n", "redsky    unix  -       n       n       -       -       pipe\n"
                      f"  flags=OR user=nobody null_sender= argv=/usr/bin/python3 {site}/redsky.py -c"
                      f" {site}/redsky.ini queue --recipient=${{original_recipient}} --sender=${{sender}}\n")
    redsky_as(site, "init")
    warning = "WARN  the Postfix 'redsky' pipe runs redsky.py as a script"
    assert warning in redsky_as(site, "doctor", env=env).out
    r = redsky_as(site, "postfix-config", "--apply", env=env)
    assert "master.cf: redsky/unix changed" in r.out, r.out + r.err
    service = subprocess.run(["postconf", "-M", "redsky/unix"], capture_output=True, text=True,
                             env={**os.environ, **env}).stdout
    assert f"-I -c {{{redsky.PIPE_CODE}}} {site} -c {site}/redsky.ini queue" in service
    assert warning not in redsky_as(site, "doctor", env=env).out
    assert redsky_as(site, "postfix-config", "--apply", env=env).out.startswith("nothing to change")


@needs_root
@needs_postconf
def test_doctor_sees_a_pipe_user_that_does_not_own_the_data(site):
    env = postfix_etc(site, "recipient_delimiter = +\n")
    redsky_as(site, "init")
    redsky_as(site, "postfix-config", "--apply", "--user", "daemon", env=env)
    r = redsky_as(site, "doctor", env=env)
    assert any("runs as daemon, but" in f and "belongs to nobody" in f for f in doctor_fails(r)), r.out


@needs_root
def test_doctor_run_by_the_list_user_on_a_closed_database_says_chown_not_init(site):
    redsky_as(site, "init")
    (site / "data").chmod(0o700)
    os.chown(site / "data", 0, 0)                  # root took it over
    r = redsky_as(site, "doctor", user="nobody")
    assert r.returncode == 78
    (fail,) = doctor_fails(r)
    assert "cannot reach the database" in fail and "chown -R nobody" in r.out and "redsky.py init" not in r.out


def test_who_runs_the_scheduled_send(tmp_path):
    line = "/usr/bin/python3 /opt/redsky/redsky.py -c /etc/redsky/redsky.ini send"
    (tmp_path / "cron.d").mkdir()
    (tmp_path / "cron.d" / "redsky").write_text(f"# m h dom mon dow user command\n* * * * * list {line}\n")
    (tmp_path / "crontab").write_text(f"@reboot root {line}\n")
    (tmp_path / "unit.service").write_text(f"[Service]\nUser=redsky\nExecStart={line}\n")
    (tmp_path / "bare.service").write_text(f"[Service]\nExecStart={line}\n")
    assert redsky.schedule_user(str(tmp_path / "cron.d" / "redsky")) == "list"
    assert redsky.schedule_user(str(tmp_path / "crontab")) == "root"
    assert redsky.schedule_user(str(tmp_path / "unit.service")) == "redsky"
    assert redsky.schedule_user(str(tmp_path / "bare.service")) == "root"
    assert redsky.schedule_user("/var/spool/cron/crontabs/list") == "list"


@needs_root
def test_doctor_fails_a_cron_job_that_runs_as_a_third_user(site, tmp_path):
    redsky_as(site, "init")
    cron = tmp_path / "cron.d"
    cron.mkdir()
    (cron / "redsky").write_text(f"* * * * * daemon /usr/bin/python3 {site}/redsky.py send\n")
    checks = list(redsky.doctor_checks(redsky.Config(str(site / "redsky.ini")), cron_places=[str(cron)]))
    assert any(level == "FAIL" and "as daemon, but the data belongs to nobody" in finding
               for level, finding, _ in checks), checks


@needs_root
def test_roots_nightly_backup_goes_where_only_root_may_write(site, tmp_path):
    """The README's `backup /var/backups/...` as root: the list user cannot write there, so the file
    is opened by root, written by the list user's process, and renamed by root; nothing in data_dir
    becomes root's."""
    redsky_as(site, "init")
    redsky_as(site, "newlist", "team@lists.example.org")
    redsky_as(site, "subscribe", "team@lists.example.org", "bob@example.net")
    backups = site / "backups"
    backups.mkdir(mode=0o700)                   # root's, like /var/backups
    r = redsky_as(site, "backup", str(backups / "nightly.tar.gz"))
    assert r.returncode == 0, r.err
    made = backups / "nightly.tar.gz"
    assert made.stat().st_uid == 0 and stat.S_IMODE(made.stat().st_mode) == 0o600
    assert not list(backups.glob("*.tmp")) and owners(site / "data") == {"nobody"}
    import tarfile
    with tarfile.open(made) as tar:
        assert "redsky.db" in tar.getnames()
    # a backup that fails leaves no file behind, and says why in one line
    r = redsky_as(site, "backup", str(backups / "missing-dir" / "b.tar"))
    assert r.returncode == 75 and "cannot write the backup" in r.err and "Traceback" not in r.err
