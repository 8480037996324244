"""POST /token has a per-address in-flight cap at the edge (issue 17, finding 1).

The API reserves every login attempt in Redis before it hashes; Traefik's inFlightReq keeps
one address from occupying the hash workers with slow, concurrent logins in the first place.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_traefik_config import _merged_http, _middlewares_of, _render


@pytest.fixture(scope="module")
def defaults(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Schema checks of every variant are in test_traefik_config.py; one rendering suffices here.
    return _render(tmp_path_factory.mktemp("traefik-login"), "defaults", {})


def test_login_route_caps_logins_in_flight_per_client_address(defaults: Path) -> None:
    http = _merged_http(defaults)
    token, api = http["routers"]["api-token"], http["routers"]["api"]
    assert token["rule"] == "Host(`api.localhost`) && Path(`/token`)"
    # Longer rule = higher default priority in Traefik: /token never falls to the plain route.
    assert len(token["rule"]) > len(api["rule"]) and "priority" not in api
    assert token["service"] == api["service"] == "ml-api"
    chain = _middlewares_of(http, "api-token")
    caps = [m["inFlightReq"] for m in chain if "inFlightReq" in m]
    assert len(caps) == 1 and next(iter(chain[0])) == "inFlightReq", chain
    assert caps[0]["amount"] == 4
    # By the connection's address: depth 0, never a client-chosen header.
    assert caps[0]["sourceCriterion"] == {"ipStrategy": {"depth": 0}}
