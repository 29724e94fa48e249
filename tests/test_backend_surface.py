"""The surface Celery's built-in ``ConsulBackend`` documents, on ours (it is sold as a drop-in
replacement): one test per member, against the dev server or a real agent."""

from __future__ import annotations

from datetime import timedelta

import consul
import pytest
from celery import Celery, states
from conftest import backend_url

from consulresults.backend import ConsulBackend


def test_consul_is_the_python_consul2_module(make_app):
    assert ConsulBackend.consul is consul
    assert make_app().backend.consul is consul


def test_celery_default_expiry_is_automatic(make_app, consul_server, consul_prefix, api):
    """Celery's default result_expires (one day) is held by a session: no beat needed."""
    default = Celery("d", set_as_current=False).conf.result_expires
    assert default == timedelta(days=1)
    backend = make_app(result_expires=default).backend
    assert backend.supports_autoexpire is True
    backend.store_result("auto", 1, states.SUCCESS)
    entry = api.entry(consul_prefix + "celery-task-meta-auto")
    session = api.get(f"/v1/session/info/{entry['Session']}").json()[0]
    assert (session["TTL"], session["Behavior"]) == ("86400s", "delete")


def test_longer_expiry_needs_a_cleanup_and_says_so(make_app):
    with pytest.warns(UserWarning, match="celery beat"):
        assert make_app(result_expires=2 * 86_400).backend.supports_autoexpire is False
    assert make_app(result_expires=None).backend.supports_autoexpire is True  # never expire
    with pytest.warns(UserWarning, match="result_chord_expires=172800s"):
        chords = make_app(result_chord_expires=2 * 86_400).backend
    assert chords.supports_autoexpire is False  # chord keys and header groups need a cleanup


def test_reads_are_consistent_by_default(make_app, consul_server, consul_prefix):
    backend = make_app().backend
    assert backend.consistency == "consistent"
    assert backend.client().consistency == "consistent"
    url = backend_url(consul_server, consul_prefix) + "?consistency=stale"
    assert make_app(url).backend.consistency == "stale"


def test_path_is_the_prefix(make_app, consul_server, consul_prefix):
    assert make_app().backend.path == consul_prefix.rstrip("/")
    root = f"consulresults://{consul_server.host}:{consul_server.port}/"
    assert make_app(root).backend.path is None


def test_client_is_a_configured_python_consul2_client(make_app, consul_prefix):
    backend = make_app().backend
    client = backend.client()
    assert isinstance(client, consul.Consul)
    assert backend.client() is client  # the same keep-alive connection
    backend.set("via-backend", b"v")
    _, entry = client.kv.get(consul_prefix + "via-backend")  # token and address included
    assert entry["Value"] == b"v"
    assert client.status.leader()  # and the rest of python-consul2's API
    for endpoint in ("catalog", "health", "acl", "event", "agent", "session", "txn"):
        assert hasattr(client, endpoint), endpoint


def test_get_mget_set_delete_return_what_the_specification_says(make_app):
    backend = make_app().backend
    assert backend.set("k1", b"one") is True
    assert backend.set("k2", "two") is True
    assert backend.get("k1") == b"one"
    assert backend.get("missing") is None
    assert list(backend.mget(["k2", "missing", "k1"])) == [b"two", None, b"one"]
    assert backend.delete("k1") is True
    assert backend.get("k1") is None
    assert backend.delete("k1") is True  # Consul acknowledges deleting what is gone
