"""The README's OpenSMTPD configuration, checked by the real `smtpd -n`
(Debian's opensmtpd, extracted by .ci/run: it conflicts with Postfix).
Not end to end: see the README's OpenSMTPD section for why."""

import os
import subprocess
from pathlib import Path

import pytest

from conftest import readme_block, require

pytestmark = pytest.mark.mta

SMTPD = Path(os.environ.get("REDSKY_OPENSMTPD_ROOT", "/tmp/redsky-opensmtpd")) / "usr" / "sbin" / "smtpd"


@pytest.fixture
def smtpd():
    if not os.access(SMTPD, os.X_OK):
        require(f"OpenSMTPD is not extracted at {SMTPD} (.ci/run does it)", "REDSKY_REQUIRE_OPENSMTPD")
    return SMTPD


def check(smtpd, text, tmp_path):
    conf = tmp_path / "smtpd.conf"
    conf.write_text(text)
    return subprocess.run([str(smtpd), "-n", "-f", str(conf)], capture_output=True, text=True, timeout=30)


def test_the_readme_configuration_passes_smtpd_n(smtpd, rs, tmp_path):
    rs.newlist("team@lists.example.org")          # writes list-domains beside the map
    assert (rs.home / "list-domains").read_text() == "lists.example.org\n"
    block = readme_block("opensmtpd")
    text = block.replace("/var/lib/redsky", str(rs.home))
    r = check(smtpd, text, tmp_path)
    assert r.returncode == 0 and "configuration OK" in r.stdout + r.stderr, r.stderr
    # the check can fail: a misspelt table name, or a table file that is not there
    assert check(smtpd, text.replace("<redsky-domains>", "<redsky-domain>"), tmp_path).returncode != 0
    assert check(smtpd, text.replace(str(rs.home), "/nonexistent"), tmp_path).returncode != 0
