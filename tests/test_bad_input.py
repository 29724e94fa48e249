"""Bad input, property-based: hostile task ids and prefixes never leave the prefix (issue 5)."""

from __future__ import annotations

import json

import pytest
from celery import states
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from consulresults import layout
from consulresults.settings import SettingsError, normalize_prefix

FRAGMENTS = [
    "/",
    "..",
    ".",
    "%",
    " ",
    "\x00",
    "\n",
    "\t",
    "\x7f",
    "é",
    "☃",
    "𝄞",
    "%2F",
    "%2e%2e",
    "\\",
    "?",
    "#",
]
HOSTILE = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS), st.characters()), min_size=1, max_size=20
).map("".join)


@given(task_id=HOSTILE)
@example(task_id="\ud800")  # a lone surrogate: no UTF-8 for it (found by this test)
def test_escaped_keys_stay_under_the_prefix_and_round_trip(task_id):
    key = layout.full_key("apps/billing", layout.TASK_PREFIX + task_id)
    assert key.startswith("apps/billing/celery-task-meta-")
    name = key[len("apps/billing/") :]
    assert "/" not in name and ".." not in name
    assert name.isprintable() and name.isascii()
    parsed = layout.parse_key("apps/billing", key)
    assert (parsed.kind, parsed.id) == ("task", task_id)


@given(prefix=HOSTILE)
def test_prefixes_are_normalised_or_refused(prefix):
    try:
        normalized = normalize_prefix(prefix)
    except SettingsError as exc:
        assert "\n" not in str(exc)
        return
    assert not normalized.startswith("/") and not normalized.endswith("/")
    assert ".." not in normalized.split("/") and "" not in normalized.split("/")[1:]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(task_id=HOSTILE)
@example(task_id="\ud800")
def test_hostile_ids_round_trip_through_consul(make_app, api, consul_prefix, task_id):
    backend = make_app().backend
    backend.store_result(task_id, task_id, states.SUCCESS)
    assert backend.get_task_meta(task_id, cache=False)["result"] == task_id
    for key in api.get(f"/v1/kv/{consul_prefix}?keys").json():
        assert key.startswith(consul_prefix + "celery-task-meta-")
        assert "/" not in key[len(consul_prefix) :]
    backend.forget(task_id)


def test_ten_kilobyte_task_id(make_app):
    backend = make_app().backend
    task_id = "ü/.." * 2_500
    backend.store_result(task_id, 1, states.SUCCESS)
    assert backend.operations().fetch(task_id).id == task_id


@pytest.mark.parametrize("size", [524_288 + 1, 50 * 1024 * 1024])
def test_oversized_results_fail_clearly_and_write_nothing(
    make_app, api, consul_prefix, size, consul_server
):
    from celery.exceptions import BackendStoreError

    backend = make_app().backend
    with pytest.raises(BackendStoreError, match=r"bytes, over Consul's 524288-byte value limit"):
        backend.set(backend.get_key_for_task("big"), b"x" * size)
    assert api.get(f"/v1/kv/{consul_prefix}?keys").status_code == 404


GARBAGE = {  # name under the prefix -> value: none of them is a result this backend wrote
    "celery-task-meta-binary": b"\x00\xff not json",
    "celery-task-meta-empty": b"",
    "celery-task-meta-list": b"[1, 2]",
    "celery-task-meta-number": b"42",
    "celery-task-meta-nostatus": b'{"result": 1}',
    "celery-task-meta-": b"{}",
    "celery-task-meta-a/b": b'{"status": "SUCCESS", "result": 1}',
    "celery-taskset-meta-junk": b"nope",
    "chord-unlock-junk": b"nope",
    "config/db": b"postgres://",
    "sub/": None,
}
UNREADABLE = ["binary", "empty", "list", "nostatus", "number"]


def test_garbage_and_foreign_keys_are_shown_or_skipped_never_purged(
    cli, api, consul_prefix, builtin_backend
):
    """ls, get, inspect, stats and purge on a prefix full of things that are not our results:
    values that do not decode are shown as UNREADABLE, keys that are not results are skipped,
    a result of Celery's built-in backend is read like ours; nothing crashes, and purge deletes
    only what it can identify as a result."""
    for name, value in GARBAGE.items():
        assert api.put(f"/v1/kv/{consul_prefix}{name}", value).status_code == 200
    builtin_backend.store_result("builtin-1", {"v": 1}, states.SUCCESS)

    listed = json.loads(cli("ls", "-o", "json").stdout)
    assert {r["id"]: r["state"] for r in listed} == {
        "builtin-1": states.SUCCESS,
        **dict.fromkeys(UNREADABLE, "UNREADABLE"),
    }
    for task_id in UNREADABLE:
        shown = cli("get", task_id, "-o", "json")
        assert shown.exit_code == 0, shown.output
        [meta] = json.loads(shown.stdout)
        assert meta["state"] == "UNREADABLE" and meta["error"]
        assert cli("inspect", task_id).exit_code == 0
    [builtin] = json.loads(cli("get", "builtin-1", "-o", "json").stdout)
    assert builtin["result"] == {"v": 1}
    assert cli("get", "a/b").exit_code == 3  # the built-in wrote it as a path: not a result here
    empty = cli("get", "")
    assert (empty.exit_code, empty.stderr.strip()) == (
        2,
        "consul-results: a task id is empty: give the id, or - to read ids from stdin",
    )

    stats = json.loads(cli("stats", "-o", "json").stdout)
    assert stats["results"] == 6
    assert stats["by_state"] == {"SUCCESS": 1, "UNREADABLE": 5}

    purged = cli("purge", "--yes", "--json")
    assert json.loads(purged.stdout)["deleted"] == 1  # the built-in's result, nothing else
    left = api.get(f"/v1/kv/{consul_prefix}?keys").json()
    assert sorted(k[len(consul_prefix) :] for k in left) == sorted(GARBAGE)
