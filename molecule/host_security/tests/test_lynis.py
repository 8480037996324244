"""Runs Lynis on the converged machine and records its hardening index and suggestions."""

import json
import os
from pathlib import Path

MIN_HARDENING_INDEX = 60


def test_lynis_hardening_index(host):
    # Private archive directory: the test machines share /var/cache/apt/archives and its lock.
    install = host.run(
        "sudo install -d -o _apt /var/tmp/lynis-archives/partial && "
        "sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
        "-o Dir::Cache::Archives=/var/tmp/lynis-archives/ lynis"
    )
    assert install.rc == 0, install.stderr
    audit = host.run(
        "sudo lynis audit system --quick --no-colors --report-file /tmp/lynis-report.dat"
    )
    assert audit.rc == 0, audit.stderr
    report = host.check_output("sudo cat /tmp/lynis-report.dat")
    fields: dict[str, list[str]] = {}
    for line in report.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields.setdefault(key, []).append(value)
    index = int(fields["hardening_index"][0])
    summary = {
        "hardening_index": index,
        "tests_performed": fields.get("lynis_tests_done", ["?"])[0],
        "warnings": fields.get("warning[]", []),
        "suggestions": fields.get("suggestion[]", []),
    }
    out = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "lynis-summary.json"
    out.write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    assert index >= MIN_HARDENING_INDEX, summary
