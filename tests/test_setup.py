"""From a bare host to a working list (issue 17): root does the right thing,
`postfix-config --apply` merges into a live Postfix configuration, and
`doctor` sees what breaks mail, with the fix for whoever runs it."""

import os
import pwd
import re
import shutil
import stat
import subprocess
import tempfile
import time
import urllib.parse
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
def test_lmtp_apply_keeps_postfix_within_the_sessions_redsky_grants_one_peer(site):
    """Postfix's lmtp clients all run as one user, one peer to `redsky.py lmtp`, which grants a peer
    [lmtp] sessions_per_peer sessions (10): Postfix opened up to 20 (its default destination
    concurrency), and the rest got 421.  --lmtp routes the lists through a service of their own
    whose concurrency limit is that share, and only that service: the host's other LMTP (Dovecot)
    keeps its own; a changed share is applied again; doctor says when they disagree."""
    env = postfix_etc(site, "lmtp_destination_concurrency_limit = 3\n",
                      "lmtp      unix  -       -       y       -       -       lmtp\n")
    redsky_as(site, "init")
    redsky_as(site, "newlist", "team@lists.example.org")
    postconf = lambda *a: subprocess.run(["postconf", *a], capture_output=True, text=True,
                                         env={**os.environ, **env}).stdout.strip()
    printed = redsky_as(site, "postfix-config", "--lmtp", "inet:127.0.0.1:8024")
    assert "redsky-lmtp_destination_concurrency_limit = 10\n" in printed.out, printed.out
    assert "redsky-lmtp unix  -       -       n       -       -       lmtp" in printed.out
    r = redsky_as(site, "postfix-config", "--lmtp", "inet:127.0.0.1:8024", "--apply", env=env)
    assert r.returncode == 0, r.err
    assert postconf("-h", "redsky-lmtp_destination_concurrency_limit") == "10"
    assert postconf("-h", "lmtp_destination_concurrency_limit") == "3"                 # the admin's, kept
    assert postconf("-M", "redsky-lmtp/unix").split() == "redsky-lmtp unix - - n - - lmtp".split()
    assert postconf("-M", "lmtp/unix").split()[:5] == ["lmtp", "unix", "-", "-", "y"]
    transport = (site / "etc" / "redsky-transport.cf").read_text()
    assert "SELECT 'redsky-lmtp:inet:127.0.0.1:8024' FROM addresses" in transport
    assert redsky_as(site, "postfix-config", "--lmtp", "inet:127.0.0.1:8024", "--apply",
                     env=env).out.startswith("nothing to change")
    config = site / "redsky.ini"
    config.write_text(config.read_text() + "[lmtp]\nsessions_per_peer = 30\nsessions = 6\n")     # within sessions
    r = redsky_as(site, "postfix-config", "--lmtp", "inet:127.0.0.1:8024", "--apply", env=env)
    assert "main.cf: redsky-lmtp_destination_concurrency_limit = 6 (was 10)" in r.out, r.out
    subprocess.run(["postconf", "-e", "redsky-lmtp_destination_concurrency_limit = 9"], env={**os.environ, **env},
                   check=True)
    out = redsky_as(site, "doctor", env=env).out
    assert "WARN  redsky-lmtp_destination_concurrency_limit is 9, but redsky grants one peer 6 LMTP" in out, out
    assert "postconf -e 'redsky-lmtp_destination_concurrency_limit = 6'" in out
    # a route made before: Postfix's own lmtp service, with its default concurrency (20)
    cf = site / "etc" / "redsky-transport.cf"
    cf.write_text(cf.read_text().replace("'redsky-lmtp:", "'lmtp:"))
    subprocess.run(["postconf", "-X", "lmtp_destination_concurrency_limit"], env={**os.environ, **env}, check=True)
    out = redsky_as(site, "doctor", env=env).out
    assert "WARN  lmtp_destination_concurrency_limit is 20, but redsky grants one peer 6 LMTP sessions" in out, out
    assert "fix: run as root: redsky.py postfix-config --lmtp inet:127.0.0.1:8024 --apply" in out


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
    # this Postfix is a configuration only: that its master does not run is all doctor fails on
    assert [f for f in doctor_fails(r) if "Postfix" in f or "routed" in f] == \
        ["FAIL  Postfix is configured but its master process does not run: the lists get no mail"], r.out
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
    # restored by root on a new host, as the README says: root's 0600 file is read by root (the list
    # user could not open it: 65), and what it writes is the list user's
    (site / "data").rename(site / "data-old")
    r = redsky_as(site, "restore", str(backups / "missing.tar.gz"))
    assert r.returncode == 65 and "cannot read the backup" in r.err and "Traceback" not in r.err
    assert redsky_as(site, "lists").returncode == 0             # a read makes no database: a restore
    assert not (site / "data" / "redsky.db").exists()           # can follow a failed one
    r = redsky_as(site, "restore", str(made))
    assert r.returncode == 0, r.err
    assert owners(site / "data") == {"nobody"}
    assert redsky_as(site, "members", "team@lists.example.org").out.split()[0] == "bob@example.net"


# -- the CGI script as the web server's user (README: As CGI) ---------------------------------

LIST = "team@lists.example.org"


class Accounts:
    """This host's /etc/passwd and /etc/group plus the README's list user `redsky` (ids nobody
    has), bound over the real ones in a private mount namespace (unshare -m) for each command:
    the host's accounts never change (a test must not add users).  `adduser USER GROUP`, which
    would rewrite /etc/group, is done to the copy (``join``)."""

    def __init__(self, top):
        self.passwd, self.group = top / "passwd", top / "group"
        used = {int(line.split(":")[2]) for f in ("/etc/passwd", "/etc/group") for line in open(f) if line.count(":") >= 3}
        self.id = next(i for i in range(64100, 65000) if i not in used)
        self.passwd.write_text(Path("/etc/passwd").read_text()
                               + f"redsky:x:{self.id}:{self.id}::/var/lib/redsky:/usr/sbin/nologin\n")
        self.group.write_text(Path("/etc/group").read_text() + f"redsky:x:{self.id}:\n")
        for f in (self.passwd, self.group):
            f.chmod(0o644)
        probe = self.run(["id", "redsky"])
        if probe.returncode != 0:
            pytest.skip(f"no private mount namespace here (unshare -m): {probe.err.strip()}")

    def join(self, user, group):
        lines = self.group.read_text().splitlines()
        for i, line in enumerate(lines):
            name, x, gid, members = line.split(":")
            if name == group:
                lines[i] = ":".join([name, x, gid, ",".join([m for m in members.split(",") if m] + [user])])
        self.group.write_text("\n".join(lines) + "\n")

    def run(self, argv, user=None, input=b"", env=None, umask="022"):
        """``argv`` as root, or as ``user`` with the groups /etc/group gives it (initgroups, as a web
        server that starts as it, or systemd's User=), in the namespace."""
        switch = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups"] if user else []
        shell = ('mount --bind "$1" /etc/passwd && mount --bind "$2" /etc/group && umask "$3" && shift 3'
                 ' && exec "$@"')
        r = subprocess.run(["unshare", "-m", "sh", "-c", shell, "sh", str(self.passwd), str(self.group), umask,
                            *switch, *argv], input=input, capture_output=True, timeout=120,
                           env=env or {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"})
        r.out, r.err = r.stdout.decode(), r.stderr.decode()
        return r


@pytest.fixture
def host():
    """A host laid out as *From a bare host to a working list* leaves it, steps 1 to 3 as the
    README writes them (paths under a scratch root, `[send] transport = maildir` added), with
    its list user `redsky` (Accounts)."""
    top = Path(tempfile.mkdtemp(prefix="redsky-cgi-", dir="/tmp"))
    top.chmod(0o755)
    try:
        if os.geteuid() != 0:
            pytest.skip("switching users needs root")
        accounts = Accounts(top)
        steps = redsky_setup_block().split("# 4.")[0]
        script = "set -e\n" + localized(steps, top) + \
            f"printf '[send]\\ntransport = maildir\\n' >> {top}/etc/redsky/redsky.ini\n"
        r = accounts.run(["bash", "-c", script], env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        assert r.returncode == 0, r.out + r.err
        yield top, accounts
    finally:
        shutil.rmtree(top, ignore_errors=True)


def redsky_setup_block():
    text = (ROOT / "README.md").read_text()
    return text.split("<!-- setup -->\n```sh\n")[1].split("```\n<!-- /setup -->")[0]


def localized(text, top):
    """The README's commands with its paths under ``top``, run from the checkout."""
    for path in ("/opt/redsky", "/etc/redsky", "/var/lib/redsky"):
        text = text.replace(path, f"{top}{path}")
    return text.replace("install -m 755 redsky.py ", f"install -m 755 {ROOT}/redsky.py ")


def cgi_as(accounts, top, method, path, body=b"", user="www-data", remote="192.0.2.7"):
    """One request to the CGI script as the README's Apache block runs it, as ``user``:
    (status line, page, stderr: the web server's error log)."""
    block = readme_blocks_of("apache")[1]
    script = re.search(r"ScriptAlias /redsky (\S+)", block).group(1)
    config = re.search(r"SetEnv REDSKY_CONFIG (\S+)", block).group(1)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "GATEWAY_INTERFACE": "CGI/1.1", "REQUEST_METHOD": method,
           "PATH_INFO": path, "SCRIPT_NAME": "/redsky", "QUERY_STRING": "", "SERVER_NAME": "lists.example.org",
           "SERVER_PORT": "443", "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": remote,
           "REDSKY_CONFIG": localized(config, top), "CONTENT_LENGTH": str(len(body)),
           "CONTENT_TYPE": "application/x-www-form-urlencoded"}
    r = accounts.run([localized(script, top)], user=user, input=body, env=env)
    head, _, page = r.out.partition("\r\n\r\n")
    return head.splitlines()[0] if head else "", page, r.err


def readme_blocks_of(kind):
    return re.findall(rf"```{kind}\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def cgi_setup(accounts, top, skip_join=False, warning=None):
    """The README's CGI set-up (<!-- cgi-setup -->) as root: its `adduser` done to the namespace's
    /etc/group, the web server's restart left out (each request here starts the script afresh);
    init warns only with ``warning``; returns doctor's run, its last line."""
    block = (ROOT / "README.md").read_text().split("<!-- cgi-setup -->\n```sh\n")[1].split("```\n")[0]
    lines = block.strip().splitlines()
    assert lines[-1].endswith(" doctor") and any(line.startswith("systemctl restart") for line in lines)
    doctor = None
    for line in lines:
        if line.startswith("adduser "):
            _, user, group = line.split()
            if not skip_join:
                accounts.join(user, group)
        elif line.startswith("systemctl "):
            continue
        else:
            r = accounts.run(["bash", "-c", localized(line, top)])
            if line.endswith(" doctor"):
                doctor = r
            else:
                assert r.returncode == 0, (line, r.out, r.err)
                assert (warning in r.err) if warning and " init" in line else "warning" not in r.err, r.err
    return doctor


def web_form(page):
    return dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', page))


def aged(top, form):
    """The page's form token made 10 s older: [web] form_min_age (3 s) has passed."""
    import sqlite3
    db = sqlite3.connect(top / "var/lib/redsky/redsky.db")
    key = db.execute("SELECT value FROM meta WHERE key = 'verp_key'").fetchone()[0]
    db.close()
    config = redsky.Config(str(top / "etc/redsky/redsky.ini"))
    network = redsky.client_network(config, {"REMOTE_ADDR": "192.0.2.7"})
    assert redsky.check_token(key, "subscribe", LIST, network, form["form"], time.time(), 3600)[0] != "bad"
    return {**form, "form": redsky.sign_token(key, "subscribe", LIST, network, issued=time.time() - 10)}


def owned(top):
    """{path: (user, group, mode)} of everything in the data directory."""
    import grp
    data = top / "var/lib/redsky"
    return {p: (p.stat().st_uid, p.stat().st_gid, stat.S_IMODE(p.stat().st_mode)) for p in [data, *data.rglob("*")]}


def test_the_readme_cgi_set_up_lets_the_web_servers_user_write_and_keeps_it_all_the_list_users(host):
    """Issue 30: CGI as the web user said "Not now" (`attempt to write a readonly database`: init
    made data_dir 0751, and SQLite makes the -wal and -shm there).  The README's set-up, then the
    script as www-data in the list user's group, as Apache or fcgiwrap run it: it subscribes,
    unsubscribes with one click and shows the archive; `send`, as the list user, delivers what the
    script queued; every file stays the group's; doctor says so."""
    top, accounts = host
    rs = ["/usr/bin/python3", f"{top}/opt/redsky/redsky.py", "-c", f"{top}/etc/redsky/redsky.ini"]
    assert accounts.run([*rs, "set", LIST, "archive", "public"]).returncode == 0
    assert accounts.run([*rs, "queue", "--recipient", LIST, "--sender", "you@example.org"],
                        input=post(sender="you@example.org", to=LIST)).returncode == 0
    doctor = cgi_setup(accounts, top)
    web_lines = [line for line in doctor.out.splitlines() if "www-data" in line]
    assert web_lines == ["OK    www-data (the CGI script) can write the database, its -wal and -shm and the spool,"
                         " which stay redsky's (group redsky, set-group-ID)",
                         "OK    www-data can read the archive pages of 1 public lists"], doctor.out
    data = top / "var/lib/redsky"
    assert stat.S_IMODE(data.stat().st_mode) == 0o3771 and stat.S_IMODE((data / "spool").stat().st_mode) == 0o2770
    status, page, err = cgi_as(accounts, top, "GET", f"/{LIST}/")
    assert status == "Status: 200 OK" and 'name="address"' in page, err
    form = aged(top, web_form(page))
    status, page, err = cgi_as(accounts, top, "POST", f"/{LIST}/",
                               urllib.parse.urlencode({**form, "address": "new@example.net"}).encode())
    assert status == "Status: 200 OK" and "new@example.net" in page, (status, page, err)
    import sqlite3
    db = sqlite3.connect(data / "redsky.db")
    row = db.execute("SELECT name, domain FROM lists").fetchone()
    key = db.execute("SELECT value FROM meta WHERE key = 'verp_key'").fetchone()[0]
    db.close()
    token = redsky.leave_token(key, {"name": row[0], "domain": row[1]}, "you@example.org")
    status, page, err = cgi_as(accounts, top, "POST", f"/{LIST}/leave/{token}", b"List-Unsubscribe=One-Click")
    assert status == "Status: 200 OK", (page, err)
    status, page, err = cgi_as(accounts, top, "GET", f"/archive/{LIST}/1.html")
    assert status == "Status: 200 OK" and "hello" in page.lower(), (status, err)
    www = pwd.getpwnam("www-data").pw_uid
    files = owned(top)
    assert any(uid == www for uid, _, _ in files.values())                  # the script wrote here
    assert {gid for _, gid, _ in files.values()} == {accounts.id}, files      # all of it the group redsky's
    assert not [p for p, (uid, _, mode) in files.items() if uid == www and mode & 0o066 != 0o060], files
    members = accounts.run([*rs, "members", LIST])
    assert "you@example.org" not in members.out and members.returncode == 0, members.err
    # the list user's `send` (cron's) reads what the script queued: the confirmation, the goodbye
    sent = accounts.run([*rs, "send"])
    assert sent.returncode == 0, sent.err
    maildir = data / "maildir"
    assert {p.name for p in maildir.iterdir()} >= {"new@example.net", "you@example.org"}, sent.err
    assert accounts.run([*rs, "status"]).returncode == 0
    # data_dir is sticky: the web server's user cannot remove or replace the list user's files
    r = accounts.run(["mv", "-f", str(data / "redsky.db"), str(data / "gone")], user="www-data")
    assert r.returncode != 0 and (data / "redsky.db").exists()
    assert accounts.run(["rm", "-f", str(data / "postfix-map.db")], user="www-data").returncode != 0
    # and init, run again, changes no file a link put in a shared folder points to
    elsewhere = top / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    os.chown(elsewhere, accounts.id, accounts.id)
    assert accounts.run(["sh", "-c", f"rmdir {data}/spool/tmp && ln -s {elsewhere} {data}/spool/tmp"],
                        user="www-data").returncode == 0        # the spool is not sticky: its files are moved
    r = accounts.run([*rs, "init"])
    assert r.returncode == 0 and f"warning: cannot give {data}/spool/tmp to group redsky" in r.err, r.err
    assert stat.S_IMODE(elsewhere.stat().st_mode) == 0o700


@pytest.mark.parametrize("mistake", ["no adduser", "not set-group-ID", "umask 077"])
def test_a_cgi_set_up_that_cannot_share_refuses_before_writing_and_doctor_names_the_fix(host, mistake):
    """The web server's user not in the group (or a server started before it joined), a data_dir
    that is not set-group-ID (what the script wrote would be group www-data: a -wal file the pipe
    cannot open stops every `queue`), a umask that closes the group: the script answers "Not now"
    and writes nothing; its error log and doctor give the fix; mail goes on.  The fix works."""
    top, accounts = host
    rs = ["/usr/bin/python3", f"{top}/opt/redsky/redsky.py", "-c", f"{top}/etc/redsky/redsky.ini"]
    config, data = top / "etc/redsky/redsky.ini", top / "var/lib/redsky"
    assert accounts.run([*rs, "set", LIST, "archive", "public"]).returncode == 0
    assert accounts.run([*rs, "queue", "--recipient", LIST, "--sender", "you@example.org"],
                        input=post(sender="you@example.org", to=LIST)).returncode == 0
    if mistake == "umask 077":
        config.write_text(config.read_text().replace("[redsky]\n", "[redsky]\numask = 077\n"))
    doctor = cgi_setup(accounts, top, skip_join=mistake == "no adduser",
                       warning={"no adduser": "run as root: adduser www-data redsky, then restart the web server",
                                "umask 077": "set it to 007"}.get(mistake))
    if mistake == "not set-group-ID":
        data.chmod(0o0771)                       # as an admin who made it by hand
        doctor = accounts.run([*rs, "doctor"])
    said, fix = {"no adduser": ("www-data is not in", "adduser www-data redsky"),
                 "not set-group-ID": ("not set-group-ID", " init"),
                 "umask 077": ("umask = 077", "set [redsky] umask = 007")}[mistake]
    fails = [line for line in doctor.out.splitlines() if line.startswith("FAIL") and "www-data" in line]
    assert fails and said in doctor.out and fix in doctor.out, doctor.out
    before = owned(top)
    for method, path, body in (("GET", f"/{LIST}/", b""), ("POST", f"/{LIST}/", b"address=x%40example.net"),
                               ("GET", f"/archive/{LIST}/1.html", b"")):
        status, page, err = cgi_as(accounts, top, method, path, body)
        assert status == "Status: 503 Service Unavailable" and "Not now" in page, (status, err)
        assert fix in err and "Traceback" not in err, err
    assert owned(top) == before                                  # nothing written, nothing changed
    # mail goes on: the pipe and cron's send as the list user
    r = accounts.run([*rs, "queue", "--recipient", LIST, "--sender", "you@example.org"],
                     input=post(sender="you@example.org", to=LIST, subject="still here"), user="redsky")
    assert r.returncode == 0, r.err
    assert accounts.run([*rs, "send"], user="redsky").returncode == 0
    # doctor's word on the pages is what www-data meets
    page = data / "pages" / LIST / "index.html"
    readable = accounts.run(["cat", str(page)], user="www-data").returncode == 0
    doctor = accounts.run([*rs, "doctor"])
    assert ("OK    www-data can read the archive pages" in doctor.out) == readable, doctor.out
    assert ("FAIL  www-data cannot read the archive pages" in doctor.out) == (not readable), doctor.out
    # the fix named, then the script works
    if mistake == "no adduser":
        accounts.join("www-data", "redsky")
    elif mistake == "umask 077":
        config.write_text(config.read_text().replace("umask = 077\n", ""))
        if not readable:                       # the pages written meanwhile, as doctor says
            assert f"run: redsky.py archive html {LIST}" in doctor.out
            assert accounts.run([*rs, "archive", "html", LIST]).returncode == 0
    else:
        assert accounts.run([*rs, "init"]).returncode == 0
    assert cgi_as(accounts, top, "GET", f"/{LIST}/")[0] == "Status: 200 OK"
    assert "FAIL" not in "".join(line for line in accounts.run([*rs, "doctor"]).out.splitlines(True)
                                 if "www-data" in line or "umask" in line)
