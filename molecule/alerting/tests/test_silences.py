"""Silences live in the volume alertmanager-data: one made with amtool survives a restart."""

from __future__ import annotations

from alert_notifications import wait_for


def test_silence_survives_a_restart(amtool, as_service):
    made = amtool(
        "silence add --author=scenario --comment='survives a restart' --duration=1h "
        "alertname=ScenarioSilenceProbe"
    )
    assert made.rc == 0, made.stderr
    silence_id = made.stdout.strip()
    assert silence_id
    try:
        restart = as_service("systemctl --user restart alertmanager.service")
        assert restart.rc == 0, restart.stderr
        # Notify=healthy: the restart returns once the new container answers amtool.
        assert (
            as_service("systemctl --user is-active alertmanager.service").stdout.strip() == "active"
        )
        kept = wait_for(lambda: silence_id in amtool("silence query --quiet").stdout, 30)
        assert kept, amtool("silence query").stdout
        volume = as_service("podman volume inspect --format '{{.Mountpoint}}' alertmanager-data")
        assert volume.rc == 0, volume.stderr
    finally:
        amtool(f"silence expire {silence_id}")
