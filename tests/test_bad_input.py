"""Bad input, property-based: hostile task ids and prefixes never leave the prefix (issue 5)."""

from __future__ import annotations

import pytest
from celery import states
from hypothesis import HealthCheck, given, settings
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
    assert backend.fetch(task_id).id == task_id


@pytest.mark.parametrize("size", [524_288 + 1, 50 * 1024 * 1024])
def test_oversized_results_fail_clearly_and_write_nothing(
    make_app, api, consul_prefix, size, consul_server
):
    from celery.exceptions import BackendStoreError

    backend = make_app().backend
    with pytest.raises(BackendStoreError, match=r"bytes, over Consul's 524288-byte value limit"):
        backend.set(backend.get_key_for_task("big"), b"x" * size)
    assert api.get(f"/v1/kv/{consul_prefix}?keys").status_code == 404
