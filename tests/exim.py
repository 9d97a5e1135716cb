"""A private Exim for the end-to-end tests (root only, loopback only).

Debian's exim4 and postfix packages conflict, so Exim is not installed: .ci/run
extracts exim4-daemon-light and exim4-base with `dpkg-deb -x` into
$REDSKY_EXIM_ROOT (default /tmp/redsky-exim), adds the Debian-exim user the
binary was built for, and lists this instance's configuration file
(INSTANCE/exim.conf) in /etc/exim4/trusted_configs: without that Exim gives up
root when it re-executes itself with -C, and cannot run the pipe as the list
user.  Each instance has its own configuration, spool and log
under /tmp, listens on a free loopback port, and cannot send anything off the
machine (no remote transport: other domains are unroutable).  Its routers and
transports for the lists are the README's, word for word, with this
instance's paths.
"""

import os
import pwd
import shutil
import smtplib
import subprocess
import time
from pathlib import Path

from conftest import FILE_MAIN
from smtpsink import free_port

ROOT = Path(__file__).resolve().parent.parent
EXIM_ROOT = Path(os.environ.get("REDSKY_EXIM_ROOT", "/tmp/redsky-exim"))
BINARY = EXIM_ROOT / "usr" / "sbin" / "exim4"
INSTANCE = Path("/tmp/redsky-exim-instance")
TRUSTED = Path("/etc/exim4/trusted_configs")
LISTS, USERS = "lists.test", "users.test"

CONFIG = """\
exim_path = {binary}
primary_hostname = mail.{lists}
qualify_domain = {users}
spool_directory = {dir}/spool
log_file_path = {dir}/log/%slog
pid_file_path = {dir}/exim.pid
daemon_smtp_ports = {port}
local_interfaces = 127.0.0.1
domainlist local_domains = {users} : lsearch;{data}/list-domains
acl_smtp_rcpt = acl_check_rcpt
never_users = root
host_lookup =
rfc1413_hosts =
queue_run_in_order = false
keep_environment =

begin acl
acl_check_rcpt:
  accept domains = {users}
  require verify = recipient
  accept

begin routers
{router}
local_users:
  driver = accept
  domains = {users}
  local_parts = ann : ben : carl : dora : eve
  transport = maildir_home

begin transports
{transport}
maildir_home:
  driver = appendfile
  directory = {dir}/mail/$local_part_data
  maildir_format
  create_directory
  user = nobody
  mode = 0600

begin retry
*  *  F,10m,2s
"""


def readme_block(marker):
    text = (ROOT / "README.md").read_text()
    return text.split(f"<!-- {marker} -->\n```\n")[1].split("```\n<!-- /")[0]


def missing():
    """Why a private Exim cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (a private Exim runs its daemon as root and delivers as nobody)"
    if not os.access(BINARY, os.X_OK):
        return f"Exim is not extracted at {EXIM_ROOT} (.ci/run does it: apt-get download + dpkg-deb -x)"
    try:
        pwd.getpwnam("Debian-exim")
    except KeyError:
        return "no Debian-exim user (the extracted binary was built for it)"
    if not os.access("/usr/bin/python3", os.X_OK):
        return "/usr/bin/python3 missing (the pipe runs as nobody and needs a python it can read)"
    if not TRUSTED.exists() or f"{INSTANCE}/exim.conf" not in TRUSTED.read_text().split():
        return f"{TRUSTED} does not list {INSTANCE}/exim.conf (.ci/run writes it)"
    r = subprocess.run([str(BINARY), "-bV"], capture_output=True, text=True)
    if "Exim version" not in r.stdout:
        return f"the extracted Exim does not run: {(r.stderr or r.stdout).strip()[:200]}"
    return None


class PrivateExim:
    def __init__(self):
        self.dir = INSTANCE
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(mode=0o755)
        exim_user, nobody = pwd.getpwnam("Debian-exim"), pwd.getpwnam("nobody")
        for name in ("spool", "log", "mail", "site"):
            (self.dir / name).mkdir()
        for name in ("spool", "log"):
            os.chown(self.dir / name, exim_user.pw_uid, exim_user.pw_gid)
        os.chown(self.dir / "mail", nobody.pw_uid, nobody.pw_gid)
        site = self.dir / "site"
        site.chmod(0o755)
        self.redsky_py = site / "redsky.py"
        shutil.copy(ROOT / "redsky.py", self.redsky_py)
        self.redsky_py.chmod(0o755)
        self.port = free_port()
        self.config = site / "redsky.ini"
        self.data = site / "data"
        self.config.write_text("[redsky]\ndata_dir = data\nlog = redsky.log\nbusy_timeout = 1s\n"
                               "[postfix]\nuser = nobody\n"
                               f"[send]\ntransport = smtp\nsmtp_host = 127.0.0.1\nsmtp_port = {self.port}\n"
                               "retry_delay = 0\n")
        self.redsky("init", check=True)
        router = readme_block("exim-router").replace("/var/lib/redsky", str(self.data))
        transport = (readme_block("exim-transport")        # the pipe imports redsky from site/ (its bytecode)
                     .replace(" /opt/redsky -c /etc/redsky/redsky.ini ", f" {site} -c {self.config} ")
                     .replace("user = redsky", "user = nobody"))
        assert f"import redsky; sys.exit(redsky.main())' {site} -c {self.config} queue" in transport
        self.conf = self.dir / "exim.conf"
        self.conf.write_text(CONFIG.format(binary=BINARY, lists=LISTS, users=USERS, dir=self.dir, port=self.port,
                                           data=self.data, router=router, transport=transport))
        self.conf.chmod(0o644)
        self.exim("-bd", "-q2s")
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                smtplib.SMTP("127.0.0.1", self.port, timeout=2).quit()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"Exim did not start: {self.log()[-1500:]}")

    def exim(self, *args, input=None):
        return subprocess.run([str(BINARY), "-C", str(self.conf), *args], input=input, capture_output=True,
                              timeout=60)

    def redsky(self, *args, input=b"", check=False):
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        r = subprocess.run(["/usr/bin/python3", "-c", FILE_MAIN, str(self.redsky_py), "-c", str(self.config), *args],
                           input=input, capture_output=True, env=env, timeout=60)
        if check and r.returncode != 0:
            raise AssertionError(f"redsky {' '.join(args)}: exit {r.returncode}: {r.stderr.decode()}")
        return r

    def submit(self, data, *recipients, sender):
        with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as smtp:
            smtp.sendmail(sender, list(recipients), data)

    def wait_idle(self, timeout=30):
        """Until Exim's queue is empty: everything delivered, piped or bounced."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            count = self.exim("-bpc").stdout.strip()
            if count == b"0":
                time.sleep(0.3)                   # a delivery process may still be finishing
                if self.exim("-bpc").stdout.strip() == b"0":
                    return
            self.exim("-qf")
            time.sleep(0.2)
        raise AssertionError(f"Exim's queue not empty after {timeout} s:\n{self.exim('-bp').stdout.decode()}"
                             f"\n{self.log()[-2000:]}")

    def maildir(self, user):
        new = self.dir / "mail" / user / "new"
        return sorted(p.read_bytes() for p in new.iterdir()) if new.is_dir() else []

    def log(self):
        try:
            return (self.dir / "log" / "mainlog").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self):
        try:
            pid = int((self.dir / "exim.pid").read_text().strip())
            os.kill(pid, 15)
        except (OSError, ValueError):
            pass
        time.sleep(0.3)
        shutil.rmtree(self.dir, ignore_errors=True)
