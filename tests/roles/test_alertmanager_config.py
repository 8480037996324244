"""Render the alertmanager role's configuration with Ansible and check its receivers and routes.

amtool itself checks the rendered file on the test machine (molecule/alerting) and before every
write; here, on the controller: which receivers and routes each combination of variables gives,
and that no secret ends up in the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from local_playbook import role_playbook, run_local_playbook

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "roles" / "alertmanager"
WEBHOOK = "https://ntfy.example.org/topic-with-a-secret-token"
PASSWORD = "smtp-password-not-in-the-file"
EMAIL = {
    "alertmanager_email_to": ["ops@example.org", "oncall@example.org"],
    "alertmanager_smtp_smarthost": "smtp.example.org:587",
    "alertmanager_smtp_from": "appliance@example.org",
    "alertmanager_smtp_username": "appliance@example.org",
    "alertmanager_smtp_password": PASSWORD,
}
VARIANTS: dict[str, dict[str, Any]] = {
    "none": {},
    "webhook": {"alertmanager_webhook_url": WEBHOOK},
    "email": EMAIL,
    "both": {**EMAIL, "alertmanager_webhook_url": WEBHOOK},
}

# The play after its header (local_playbook.role_playbook).
PLAYBOOK = """
  tasks:
    - name: Render alertmanager.yml
      ansible.builtin.template:
        src: {role}/templates/alertmanager.yml.j2
        dest: "{{{{ out }}}}"
        mode: "0644"
"""


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, dict[str, Any]]]:
    work = tmp_path_factory.mktemp("alertmanager")
    playbook = work / "render.yml"
    playbook.write_text(
        role_playbook(
            ROLE, "Render the alertmanager role's configuration", PLAYBOOK.format(role=ROLE)
        ),
        encoding="utf-8",
    )
    out = {}
    for name, extra in VARIANTS.items():
        dest = work / f"{name}.yml"
        result = run_local_playbook(playbook, {**extra, "out": str(dest)})
        assert result.returncode == 0, result.stdout + result.stderr
        text = dest.read_text(encoding="utf-8")
        out[name] = (text, yaml.safe_load(text))
    return out


def _receivers(config: dict[str, Any]) -> dict[str, set[str]]:
    return {
        r["name"]: {k.removesuffix("_configs") for k in r if k.endswith("_configs")}
        for r in config["receivers"]
    }


def _routes(config: dict[str, Any]) -> dict[str, str]:
    return {r["matchers"][0]: r["receiver"] for r in config["route"]["routes"]}


def test_no_receiver_sends_everything_to_none(rendered) -> None:
    config = rendered["none"][1]
    assert config["route"]["receiver"] == "none"
    assert _receivers(config) == {"none": set()}
    assert _routes(config) == {}


def test_webhook_only_gets_both_severities(rendered) -> None:
    config = rendered["webhook"][1]
    assert config["route"]["receiver"] == "all"
    assert _routes(config) == {
        'severity="critical"': "severity-critical",
        'severity="warning"': "severity-warning",
    }
    assert all(kinds == {"webhook"} for kinds in _receivers(config).values())


def test_email_only_keeps_warnings_on_the_default_receiver(rendered) -> None:
    # the warning route names only the webhook: left out, its alerts fall back to "all"
    config = rendered["email"][1]
    assert _routes(config) == {'severity="critical"': "severity-critical"}
    assert _receivers(config) == {"all": {"email"}, "severity-critical": {"email"}}
    assert config["global"]["smtp_require_tls"] is True
    assert config["global"]["smtp_auth_password_file"] == "/run/secrets/alertmanager-smtp-password"
    email = config["receivers"][0]["email_configs"][0]
    assert email["to"] == "ops@example.org, oncall@example.org"


def test_both_split_by_severity(rendered) -> None:
    config = rendered["both"][1]
    assert _receivers(config) == {
        "all": {"email", "webhook"},
        "severity-critical": {"email", "webhook"},
        "severity-warning": {"webhook"},
    }


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_no_secret_in_the_file_and_inhibition_everywhere(rendered, variant: str) -> None:
    text, config = rendered[variant]
    assert WEBHOOK not in text and PASSWORD not in text
    assert len(config["inhibit_rules"]) == 3
    assert config["route"]["group_by"] == ["alertname", "job", "instance"]
