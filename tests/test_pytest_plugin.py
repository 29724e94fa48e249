"""The pytest plugin, used the way a user's own suite would use it."""

from __future__ import annotations

pytest_plugins = ["pytester"]


def test_users_suite_gets_a_running_server_and_a_clean_prefix(pytester, monkeypatch):
    monkeypatch.delenv("CONSUL_HTTP_ADDR", raising=False)
    pytester.makepyfile("""
        import requests

        def test_put_and_get(consul_server, consul_prefix):
            url = f"{consul_server.url}/v1/kv/{consul_prefix}k"
            assert requests.put(url, data=b"v").json() is True
            assert requests.get(url).json()[0]["Key"] == consul_prefix + "k"

        def test_faults(consul_server):
            consul_server.faults.fail_next(1)
            assert requests.get(f"{consul_server.url}/v1/status/leader").status_code == 500

        def test_faults_cleared_between_tests(consul_server):
            assert requests.get(f"{consul_server.url}/v1/status/leader").status_code == 200
    """)
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)


def test_real_agent_mode_skips_dev_server_features_with_the_reason(
    pytester, consul_server, monkeypatch
):
    monkeypatch.setenv("CONSUL_HTTP_ADDR", consul_server.address)
    pytester.makepyfile("""
        def test_uses_faults(consul_server):
            consul_server.faults.fail_next(1)

        def test_talks_http(consul_server, consul_prefix):
            assert consul_server.is_dev_server is False
            assert consul_prefix.startswith("test-")
    """)
    result = pytester.runpytest_subprocess("-q", "-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*CONSUL_HTTP_ADDR points at a real agent*"])
