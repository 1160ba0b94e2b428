"""The settings the tabbyapi role accepts in config.yml are the REAL TabbyAPI's (its config model in the
vendored snapshots, roles/tabbyapi/vars/config_schema.yml): the file is what the generator makes of
the snapshots, the role's own settings exist in both branches, and settings of the real model that
the role once refused are accepted."""
import subprocess
import sys
from pathlib import Path

import yaml

import test_bad_input as bad

REPO = Path(__file__).resolve().parents[2]
SCHEMA = yaml.safe_load((REPO / 'roles' / 'tabbyapi' / 'vars' / 'config_schema.yml').read_text())['_tabbyapi_schema']


def test_the_schema_is_what_the_snapshots_give():
    proc = subprocess.run([sys.executable, str(REPO / 'tests' / 'tools' / 'gen_tabbyapi_schema.py'), '--check'],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_the_settings_the_role_writes_exist_in_both_branches():
    written = {'network': ['host', 'port', 'disable_auth'],
               'model': ['model_dir', 'cache_mode', 'gpu_split_auto', 'model_name', 'max_seq_len'],
               'developer': ['unsafe_launch'], 'logging': ['log_prompt']}
    assert set(SCHEMA) == {'exl2-checkpoint', 'main'}
    for branch, sections in SCHEMA.items():
        for section, names in written.items():
            assert set(names) <= set(sections[section]), (branch, section)


def test_real_settings_are_accepted(tmp_path):
    """memory (both branches) was refused by the role's old hand-written section list."""
    base = {'tabbyapi_api_key': 'k1', 'tabbyapi_admin_key': 'k2', 'case_role': 'tabbyapi'}
    hosts = {
        'exl2': dict(base, tabbyapi_config_extra={'memory': {'cuda_malloc_async': True}, 'model': {'max_batch_size': 4}}),
        'main': dict(base, tabbyapi_branch='main',
                     tabbyapi_config_extra={'network': {'sse_ping_interval': 5}, 'memory': {'sysmem_kv_cache': 8}}),
    }
    play = [{'name': 'Accepted input', 'hosts': 'all', 'gather_facts': False,
             'tasks': [{'name': 'Validate tabbyapi',
                        'ansible.builtin.include_role': {'name': 'gpufleet.llm.tabbyapi', 'tasks_from': 'validate'}}]}]
    rc, results, stats, output = bad._run(tmp_path, hosts, play, '--check')  # pylint: disable=protected-access
    assert rc == 0, output[-3000:]
    for host in hosts:
        assert stats[host]['failures'] == 0 and results[host], host
