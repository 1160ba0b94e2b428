"""docs/roles.md is rendered from roles/*/meta/argument_specs.yml and must not be stale."""
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / 'tests' / 'tools' / 'gen_role_docs.py'

spec = importlib.util.spec_from_file_location('gen_role_docs', TOOL)
gen = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gen)


def test_docs_roles_md_is_current():
    run = subprocess.run([sys.executable, str(TOOL), '--check'], cwd=REPO,
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr


def test_every_variable_of_every_role_is_documented():
    text = (REPO / 'docs' / 'roles.md').read_text()
    for spec_file in sorted(REPO.glob('roles/*/meta/argument_specs.yml')):
        role = spec_file.parents[1].name
        assert '## gpufleet.llm.%s' % role in text
        for entry in (yaml.safe_load(spec_file.read_text())['argument_specs'] or {}).values():
            for name in (entry or {}).get('options') or {}:
                assert '| `%s` |' % name in text, '%s (%s) missing from docs/roles.md' % (name, role)


def _fake_repo(tmp_path, options):
    role = tmp_path / 'roles' / 'demo'
    (role / 'meta').mkdir(parents=True)
    (role / 'meta' / 'argument_specs.yml').write_text(yaml.safe_dump({'argument_specs': {
        'main': {'short_description': 'A demo role', 'options': options},
        'extra': {'short_description': 'Second entry point', 'options': {}}}}))
    (tmp_path / 'docs').mkdir()
    return tmp_path


def test_check_fails_when_a_spec_changes_and_passes_after_regeneration(tmp_path, capsys):
    repo = _fake_repo(tmp_path, {'demo_port': {'type': 'int', 'default': 5000, 'description': 'Port.'}})
    assert gen.main(['--repo', str(repo)]) == 0
    assert gen.main(['--repo', str(repo), '--check']) == 0
    spec_file = repo / 'roles' / 'demo' / 'meta' / 'argument_specs.yml'
    data = yaml.safe_load(spec_file.read_text())
    data['argument_specs']['main']['options']['demo_port']['default'] = 5001
    spec_file.write_text(yaml.safe_dump(data))
    assert gen.main(['--repo', str(repo), '--check']) == 1
    err = capsys.readouterr().err
    assert 'stale' in err and '5001' in err
    assert gen.main(['--repo', str(repo)]) == 0
    assert gen.main(['--repo', str(repo), '--check']) == 0


def test_rendering_of_types_defaults_choices_required_and_suboptions(tmp_path):
    repo = _fake_repo(tmp_path, {
        'demo_key': {'type': 'str', 'required': True, 'no_log': True, 'description': ['Key', 'from a vault.']},
        'demo_mode': {'type': 'str', 'default': 'git', 'choices': ['git', 'archive'], 'description': 'How | what.'},
        'demo_list': {'type': 'list', 'elements': 'dict', 'default': [], 'description': 'Items.',
                      'options': {'name': {'type': 'str', 'required': True, 'description': 'Name.'}}},
        'demo_empty': {'type': 'str', 'default': '', 'description': 'Empty default.'},
    })
    text = gen.render(repo)
    assert '| `demo_key` | str | **required** |  | Key from a vault. |' in text
    assert '| `demo_mode` | str | `git` | `git`, `archive` | How \\| what. |' in text
    assert '| `demo_list` | list of dict | `[]` |' in text
    assert '| `demo_list[].name` | str | **required** |' in text
    assert '| `demo_empty` | str | `""` |' in text
    # main first, then the other entry points; an entry point without options says so.
    assert text.index('### main') < text.index('### tasks_from: extra')
    assert 'No variables.' in text


def test_missing_docs_file_is_stale(tmp_path):
    repo = _fake_repo(tmp_path, {})
    assert gen.main(['--repo', str(repo), '--check']) == 1
    shutil.rmtree(repo / 'docs')
    assert gen.main(['--repo', str(repo)]) == 0
    assert (repo / 'docs' / 'roles.md').is_file()
