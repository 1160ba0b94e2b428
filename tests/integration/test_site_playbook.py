"""playbooks/site.yml on the example inventory, without touching any host: the router config each
host derives from what it runs, the tags, and a missing key stopping the run before the rollout."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / 'inventories' / 'example'
PASSWORD = EXAMPLE / 'DEMO-vault-password.txt'
# The venv's ansible-playbook, also when the venv is not on PATH.
ANSIBLE_PLAYBOOK = shutil.which('ansible-playbook', path=str(Path(sys.executable).parent)) or 'ansible-playbook'

# What the llm_router role derives when the inventory names no backends (roles/llm_router/vars/main.yml)
# and the summary site.yml ends with, from the one description of each host's services.
DERIVED = """
- name: Show what site.yml derives
  hosts: all
  gather_facts: false
  tasks:
    - name: Derived router config and summary
      ansible.builtin.debug:
        msg: >-
          {{{{ {{'router': vars | gpufleet.llm.backends(role='llm_router') | gpufleet.llm.router_defaults,
                'services': vars | gpufleet.llm.backends,
                'summary': vars | gpufleet.llm.backends
                           | gpufleet.llm.services_summary(ansible_check_mode, ansible_run_tags, ansible_skip_tags)}}
              | to_json }}}}
"""


def env():
    e = dict(os.environ)
    e['ANSIBLE_COLLECTIONS_PATH'] = str(REPO / 'build' / 'collections')
    e['ANSIBLE_CONFIG'] = str(REPO / 'ansible.cfg')
    e['ANSIBLE_VAULT_PASSWORD_FILE'] = str(PASSWORD)
    e['ANSIBLE_FORCE_COLOR'] = '0'
    return e


def run_playbook(*args, extra_env=None):
    e = env()
    e.update(extra_env or {})
    return subprocess.run([ANSIBLE_PLAYBOOK, *args], cwd=REPO, env=e, capture_output=True, text=True,
                          timeout=300, check=False)


def playbook(*args, extra_env=None):
    """Return code and everything the run printed, for assertions on text."""
    run = run_playbook(*args, extra_env=extra_env)
    return run.returncode, run.stdout + run.stderr


def derive(inventory, tmp_path):
    play = tmp_path / 'derived.yml'
    play.write_text(DERIVED.format())
    run = run_playbook('-i', str(inventory), str(play), extra_env={'ANSIBLE_STDOUT_CALLBACK': 'ansible.posix.json'})
    assert run.returncode == 0, run.stdout + run.stderr
    # The JSON callback's document is the whole of stdout; stderr (warnings of any library) is not data.
    result = json.loads(run.stdout)
    hosts = result['plays'][0]['tasks'][0]['hosts']
    return {name: json.loads(h['msg']) for name, h in hosts.items()}


@pytest.fixture(scope='module')
def derived(tmp_path_factory):
    return derive(EXAMPLE, tmp_path_factory.mktemp('site'))


def test_ipv6_listen_addresses_reach_the_router_in_brackets(tmp_path):
    """tabbyapi_host '::1' gave the router http://::1:5000 (playbooks/vars/site_router.yml, before
    gpufleet.llm.backends)."""
    inventory = tmp_path / 'inv'
    shutil.copytree(EXAMPLE, inventory)
    (inventory / 'host_vars' / 'gpu-4090-01.yml').write_text("---\ntabbyapi_host: '::1'\nllm_router_host: '::'\n")
    (inventory / 'host_vars' / 'gpu-a100-01.yml').write_text("---\nsglang_host: 'fd00::7'\n")
    hosts = derive(inventory, tmp_path)
    assert hosts['gpu-4090-01']['router']['backends']['tabbyapi']['url'] == 'http://[::1]:5000'
    router = [s for s in hosts['gpu-4090-01']['services'] if s['name'] == 'router'][0]
    assert router['url'] == 'http://127.0.0.1:4000'
    assert hosts['gpu-a100-01']['router']['backends']['sglang-chat']['url'] == 'http://[fd00::7]:30000'
    # the other hosts are unchanged
    assert hosts['gpu-4090-02']['router']['backends']['tabbyapi']['url'] == 'http://127.0.0.1:5000'


def test_router_serves_the_backends_of_its_own_host(derived):
    l40s = derived['gpu-l40s-01']['router']
    assert l40s['backends'] == {
        'tabbyapi': {'kind': 'tabbyapi', 'url': 'http://127.0.0.1:5000', 'unit': 'tabbyapi.service'},
        'llamacpp-coder': {'kind': 'llamacpp', 'url': 'http://127.0.0.1:8080', 'unit': 'llamacpp@coder.service'},
    }
    assert l40s['models'] == {
        'Mistral-Small-24B-exl3-6.0bpw': {'backend': 'tabbyapi', 'model': 'Mistral-Small-24B-exl3-6.0bpw'},
        'qwen2.5-coder-7b-instruct-q8_0': {'backend': 'llamacpp-coder', 'model': 'qwen2.5-coder-7b-instruct-q8_0'},
    }
    a100 = derived['gpu-a100-01']['router']
    assert list(a100['backends']) == ['sglang-chat']
    assert a100['backends']['sglang-chat']['url'] == 'http://127.0.0.1:30000'
    assert a100['models'] == {'Llama-3.3-70B-Instruct': {
        'backend': 'sglang-chat', 'model': '/srv/models/hf/Llama-3.3-70B-Instruct'}}
    # The group default model, not the L40S host's own.
    assert list(derived['gpu-4090-01']['router']['models']) == ['Qwen2.5-32B-Instruct-exl2-4.0bpw']
    assert list(derived['cpu-edge-01']['router']['backends']) == ['llamacpp-small']


def test_summary_names_each_role_a_host_runs(derived):
    assert derived['gpu-a100-02']['summary'] == [
        'SGLang: running, passed its readiness gate', 'router: running, passed its readiness gate']
    assert len(derived['gpu-l40s-01']['summary']) == 3


def test_syntax_and_one_tag_per_role():
    rc, out = playbook('-i', str(EXAMPLE), 'gpufleet.llm.site', '--list-tags')
    assert rc == 0, out
    for tag in ('tabbyapi', 'llamacpp', 'sglang', 'llm_router', 'always'):
        assert tag in out


def test_a_missing_key_stops_the_run_before_any_host_is_touched(tmp_path):
    inventory = tmp_path / 'inv'
    shutil.copytree(EXAMPLE, inventory)
    (inventory / 'host_vars' / 'gpu-a100-02.yml').write_text('---\nsglang_api_key: ""\n')
    # --check and a local connection: nothing could be changed even if the run went on.
    rc, out = playbook('-i', str(inventory), 'gpufleet.llm.site', '--check',
                       '-e', 'ansible_connection=local', '-e', 'ansible_become=false')
    assert rc == 2, out
    assert 'sglang_api_key is not set for gpu-a100-02' in out
    assert 'PLAY [Rolling rollout' not in out
    assert 'gpu-a100-02                : ok=' in out and 'failed=1' in out


def test_a_file_to_copy_that_is_missing_on_the_controller_is_named_before_the_host_is_touched(tmp_path):
    # llama-server to copy is a directory, the model to copy does not exist: both named, nothing run on the host.
    model = tmp_path / 'absent.gguf'
    rc, out = playbook('-i', str(EXAMPLE), 'gpufleet.llm.site', '--check', '--limit', 'cpu-edge-01',
                       '--tags', 'llamacpp', '-e', 'ansible_connection=local', '-e', 'ansible_become=false',
                       '-e', 'llamacpp_install_method=copy', '-e', 'llamacpp_binary_src=%s' % tmp_path,
                       '-e', json.dumps({'llamacpp_instances': [{'name': 'edge', 'model_src': str(model)}]}))
    assert rc == 2, out
    assert '%s is not a file on the controller' % tmp_path in out
    assert '%s is not a file on the controller' % model in out
    assert 'Create the service user' not in out
