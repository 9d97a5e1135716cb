"""A private Postfix instance for the end-to-end tests (root only, loopback only).

It lives in its own directory under /tmp (every parent must be searchable by
the postfix and nobody users, so not pytest's 0700 tmp_path), with its own
queue, log and config; it never binds port 25 and cannot send anything off
the machine (every non-local destination is an error: transport).  The
redsky parts of main.cf and master.cf are exactly what
`redsky.py postfix-config` prints, so the README's set-up is what is tested.
"""

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from smtpsink import free_port

# An admin's `redsky.py ARGS`, but from cached bytecode (a script is compiled
# afresh on every run, 0.1 s of CPU); the MTA's pipe runs the script itself.
# conftest's FILE_MAIN, repeated: bench.py uses this module without pytest.
MAIN = ("import importlib.util, sys; spec = importlib.util.spec_from_file_location('redsky', sys.argv.pop(1)); "
        "redsky = sys.modules['redsky'] = importlib.util.module_from_spec(spec); spec.loader.exec_module(redsky); "
        "sys.exit(redsky.main(sys.argv[1:]))")

ROOT = Path(__file__).resolve().parent.parent
LISTS, USERS = "lists.test", "users.test"
BINARIES = ("/usr/sbin/postfix", "/usr/sbin/postconf", "/usr/sbin/postqueue", "/usr/sbin/sendmail",
            "/usr/sbin/postdrop", "/usr/lib/postfix/sbin/master", "/usr/lib/postfix/sbin/pipe")

BASE_MAIN = """\
compatibility_level = 3.6
queue_directory = {dir}/spool
data_directory = {dir}/data
maillog_file = {dir}/maillog
maillog_file_prefixes = {dir}
mail_owner = postfix
setgid_group = postdrop
myhostname = mail.{lists}
mydomain = {lists}
myorigin = {users}
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost =
default_transport = error:outbound mail disabled in test instance
relay_transport = $default_transport
smtpd_peername_lookup = no
alias_maps =
alias_database =
virtual_mailbox_domains = {users}
virtual_mailbox_base = {dir}/mail
virtual_mailbox_maps = sqlite:{dir}/etc/mailboxes.cf
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
# test speed only
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
in_flow_delay = 0
smtpd_error_sleep_time = 0
service_throttle_time = 1s
"""

BASE_MASTER = """\
127.0.0.1:{port} inet n  -       n       -       -       smtpd
127.0.0.1:{send_port} inet n  -     n       -       -       smtpd
  -o smtpd_reject_unlisted_recipient=no
pickup    unix  n       -       n       1       1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
flush     unix  n       -       n       1000?   0       flush
showq     unix  n       -       n       -       -       showq
proxymap  unix  -       -       n       -       -       proxymap
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
postlog   unix-dgram n  -       n       -       1       postlogd
"""

# Every user@users.test has a Maildir, except local parts starting with
# "unknown" (those bounce with 5.1.1, so Postfix writes a DSN).
MAILBOXES = """\
dbpath = :memory:
query = SELECT '%u/' WHERE '%d' = '{users}' AND '%u' GLOB '[a-z0-9]*' AND '%u' NOT GLOB '*[^a-z0-9._-]*' AND '%u' NOT LIKE 'unknown%%'
"""


def missing():
    """Why a private Postfix cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (a private Postfix instance runs its daemons as postfix and nobody)"
    for binary in BINARIES:
        if not os.access(binary, os.X_OK):
            return f"Postfix is not installed ({binary} missing)"
    maps = ""
    for f in [Path("/etc/postfix/dynamicmaps.cf"), *Path("/etc/postfix/dynamicmaps.cf.d").glob("*")]:
        if f.is_file():
            maps += f.read_text()
    if not any(line.split()[:1] == ["sqlite"] for line in maps.splitlines()):
        return "postfix-sqlite is not installed"
    try:
        pwd.getpwnam("postfix")
    except KeyError:
        return "no postfix user"
    if not os.access("/usr/bin/python3", os.X_OK):
        return "/usr/bin/python3 missing (the pipe runs as nobody and needs a python it can read)"
    return None


def readme_setup_block():
    """The README's set-up commands (between <!-- setup --> and <!-- /setup -->)."""
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- setup -->\n```sh\n")[1].split("```\n<!-- /setup -->")[0]
    return block


def readme_block(first_line):
    """The README code block whose first line is ``first_line``."""
    text = (ROOT / "README.md").read_text()
    body = text[text.index("\n" + first_line + "\n") + 1:]
    return body[:body.index("```")]


# The README's Postfix content-filter example, with this instance's paths.
FILTER_ZONE = "bl.postfix.test"

# Stands in for the script's "/usr/sbin/sendmail -G -i", the one change the
# test makes to it: postdrop is set-gid and ignores a private MAIL_CONFIG for
# users other than root (unless the system main.cf lists it in
# alternate_config_directories, which a test must not edit), so the filtered
# message goes back over SMTP to this instance's unfiltered smtpd instead.
REINJECT = """\
#!/usr/bin/python3
import smtplib, sys
args = sys.argv[1:]
sender, recipients = args[args.index("-f") + 1], args[args.index("--") + 1:]
with smtplib.SMTP("127.0.0.1", {port}) as smtp:
    smtp.sendmail(sender, recipients, sys.stdin.buffer.read())
"""


class PrivatePostfix:
    def __init__(self, nameserver="127.0.0.1:9", bare=False):
        """``bare``: Postfix alone, without redsky's parts (the README's set-up adds them)."""
        self.dir = Path(tempfile.mkdtemp(prefix="redsky-pf-", dir="/tmp"))
        self.dir.chmod(0o755)
        self.etc, self.mail, self.home = self.dir / "etc", self.dir / "mail", self.dir / "redsky"
        for d in (self.etc, self.mail, self.dir / "spool", self.home):
            d.mkdir()
        nobody = pwd.getpwnam("nobody")
        os.chown(self.mail, nobody.pw_uid, nobody.pw_gid)
        self.env = {**os.environ, "MAIL_CONFIG": str(self.etc)}
        # `send` hands posts back over SMTP, as the list user: the set-gid postdrop
        # behind /usr/sbin/sendmail ignores a private MAIL_CONFIG for anyone but
        # root (alternate_config_directories is in the system main.cf, which a test
        # must not edit).  This port accepts any recipient, as sendmail would: an
        # unknown one bounces later, with a DSN to the VERP address.
        self.port, self.send_port = free_port(), free_port()
        self.send_settings = f"[send]\ntransport = smtp\nsmtp_host = 127.0.0.1\nsmtp_port = {self.send_port}\n"
        fill = dict(dir=self.dir, lists=LISTS, users=USERS, port=self.port, send_port=self.send_port,
                    uid=nobody.pw_uid, gid=nobody.pw_gid)
        if bare:
            (self.etc / "main.cf").write_text(BASE_MAIN.format(**fill))
            (self.etc / "master.cf").write_text(BASE_MASTER.format(**fill))
            (self.etc / "mailboxes.cf").write_text(MAILBOXES.format(**fill))
            self.start()
            return
        os.chown(self.home, nobody.pw_uid, nobody.pw_gid)
        self.home.chmod(0o777)
        # a copy nobody can read, wherever the checkout is
        self.redsky_py = self.dir / "redsky.py"
        shutil.copy(ROOT / "redsky.py", self.redsky_py)
        self.redsky_py.chmod(0o755)
        # the config where an admin keeps it: in a root-owned directory (redsky
        # refuses one that others could change), the data in nobody's
        self.config = self.dir / "redsky.ini"
        self.config.write_text("[redsky]\ndata_dir = redsky\nlog = redsky.log\numask = 000\nbusy_timeout = 1s\n"
                               + self.send_settings + "retry_delay = 0\n"
                               "[postfix]\nuser = nobody\n"
                               f"[dnsbl]\nzones = {FILTER_ZONE}\nnameserver = {nameserver}\ntimeout = 1s\n")
        self.filter_port = free_port()
        self.filter_script = self.dir / "redsky-filter"
        invocation = f"/usr/bin/python3 {self.redsky_py} -c {self.config}"
        reinject = self.dir / "reinject"
        reinject.write_text(REINJECT.format(port=self.port))
        reinject.chmod(0o755)
        self.filter_script.write_text(readme_block("# /usr/local/bin/redsky-filter: -f SENDER -- RECIPIENT...")
                                      .replace("/usr/bin/python3 /opt/redsky/redsky.py -c /etc/redsky/redsky.ini",
                                               invocation)
                                      .replace("/usr/sbin/sendmail -G -i", f"{reinject} -G -i"))
        self.filter_script.chmod(0o755)
        filter_master = readme_block("# master.cf: filter mail that arrives by SMTP")
        filter_master = (filter_master.replace("smtp      inet  n       -       n       -       -       smtpd",
                                               f"127.0.0.1:{self.filter_port} inet n - n - - smtpd")
                         .replace("user=redsky", "user=nobody")
                         .replace("/usr/local/bin/redsky-filter", str(self.filter_script)))
        self.redsky("init", check=True)
        self.redsky("postfix-config", "--dir", str(self.etc), "--write", "--python", "/usr/bin/python3", check=True)
        (self.etc / "main.cf").write_text(BASE_MAIN.format(**fill) + (self.etc / "redsky-main.cf").read_text())
        (self.etc / "master.cf").write_text(BASE_MASTER.format(**fill) + (self.etc / "redsky-master.cf").read_text()
                                            + filter_master)
        (self.etc / "mailboxes.cf").write_text(MAILBOXES.format(**fill))
        self.start()

    def start(self):
        past = time.time() - 10          # Postfix waits for a main.cf younger than ~1 s to "cool down"
        for f in self.etc.iterdir():
            os.utime(f, (past, past))
        self.postfix("check")
        self.postfix("start")

    def postfix(self, *args):
        r = subprocess.run(["postfix", "-c", str(self.etc), *args], capture_output=True, text=True, env=self.env)
        if r.returncode != 0:
            raise RuntimeError(f"postfix {' '.join(args)} failed: {r.stderr.strip()} {self.log()[-800:]}")

    def redsky(self, *args, input=b"", check=False):
        env = {k: v for k, v in self.env.items() if k != "PYTHONDONTWRITEBYTECODE"}
        r = subprocess.run(["/usr/bin/python3", "-c", MAIN, str(self.redsky_py), "-c", str(self.config), *args],
                           input=input, capture_output=True, env=env, timeout=60)
        if check and r.returncode != 0:
            raise AssertionError(f"redsky {' '.join(args)}: exit {r.returncode}: {r.stderr.decode()}")
        return r

    def sendmail(self, data, *recipients, sender):
        subprocess.run(["/usr/sbin/sendmail", "-oi", "-f", sender, "--", *recipients], input=data,
                       env=self.env, check=True, timeout=30)

    def wait_idle(self, timeout=30):
        """Until Postfix's queue is empty: everything delivered, piped or bounced."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            r = subprocess.run(["postqueue", "-c", str(self.etc), "-j"], capture_output=True, text=True,
                               env=self.env)
            if r.returncode == 0 and not r.stdout.strip():
                return
            time.sleep(0.05)
        raise AssertionError(f"Postfix queue not empty after {timeout} s:\n{r.stdout}\n{self.log()[-2000:]}")

    def queued(self):
        r = subprocess.run(["postqueue", "-c", str(self.etc), "-j"], capture_output=True, text=True, env=self.env)
        return [line for line in r.stdout.splitlines() if line.strip()]

    def flush(self):
        subprocess.run(["postqueue", "-c", str(self.etc), "-f"], env=self.env, check=True)

    def maildir(self, user):
        new = self.mail / user / "new"
        return sorted(p.read_bytes() for p in new.iterdir()) if new.is_dir() else []

    def log(self):
        try:
            return (self.dir / "maillog").read_text(errors="replace")
        except OSError:
            return ""

    def reset(self):
        """Between tests: empty Maildirs, a fresh redsky database (the list map stays: Postfix's
        daemons hold it open, and init empties it in place)."""
        self.wait_idle()
        for d in self.mail.iterdir():
            shutil.rmtree(d, ignore_errors=True)
        for f in self.home.iterdir():
            if f.name not in ("redsky.ini", "postfix-map.db"):
                if f.is_dir():
                    shutil.rmtree(f)
                else:
                    f.unlink()
        self.redsky("init", check=True)

    def stop(self):
        subprocess.run(["postfix", "-c", str(self.etc), "stop"], capture_output=True, env=self.env)
        pid_file = self.dir / "spool" / "pid" / "master.pid"
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            pid = None
        deadline = time.time() + 10
        while pid and time.time() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        shutil.rmtree(self.dir, ignore_errors=True)
