"""Shared fixtures: the project's tests run on the dev server, or on a real agent when
CONSUL_HTTP_ADDR is set (see consulresults.pytest_plugin)."""

from __future__ import annotations

import os

import pytest
import requests

# TTL tests need short sessions; a real agent can be configured the same way
# (session_ttl_min), and CONSUL_SESSION_TTL_MIN tells the tests what it allows.
SESSION_TTL_MIN_S = float(os.environ.get("CONSUL_SESSION_TTL_MIN", "1"))


@pytest.fixture(scope="session")
def consul_dev_server_options() -> dict:
    return {"session_ttl_min": f"{SESSION_TTL_MIN_S:g}s"}


class Api:
    """Plain HTTP to Consul, without client-library conveniences, to see the wire as it is."""

    def __init__(self, url: str, token: str | None = None) -> None:
        self.url = url
        self.http = requests.Session()
        if token:
            self.http.headers["X-Consul-Token"] = token

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("allow_redirects", False)
        kwargs.setdefault("timeout", 30)
        return self.http.request(method, self.url + path, **kwargs)

    def get(self, path: str, **kwargs) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def put(self, path: str, data: bytes | str | None = None, **kwargs) -> requests.Response:
        return self.request("PUT", path, data=data, **kwargs)

    def delete(self, path: str, **kwargs) -> requests.Response:
        return self.request("DELETE", path, **kwargs)

    def entry(self, key: str) -> dict | None:
        response = self.get(f"/v1/kv/{key}")
        return response.json()[0] if response.status_code == 200 else None

    def session(self, **body) -> str:
        response = self.put("/v1/session/create", json=body)
        assert response.status_code == 200, response.text
        return response.json()["ID"]


@pytest.fixture
def api(consul_server) -> Api:
    return Api(consul_server.url, consul_server.token)
