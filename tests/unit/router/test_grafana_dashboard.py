# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""docs/grafana/llm_router.json reads what the router exports: every PromQL expression of its
panels and variables names only metrics (and labels of those metrics) found in the router's
rendered /metrics text, so the two cannot drift apart."""

import json
import re
from pathlib import Path

from llm_router.metrics import FAMILIES
from test_metrics import one_of_each

ROOT = Path(__file__).resolve().parents[3]
BOARD = ROOT / 'docs/grafana/llm_router.json'
KEYWORDS = {'by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'bool', 'offset', 'and', 'or', 'unless'}


def exported():
    """{sample name: set of label names} of a router that saw one sample of every family."""
    out = {}
    for name, labels in re.findall(r'^([a-z_]+)(?:\{(.*)\})? \S+$', one_of_each().render(), re.M):
        out.setdefault(name, set()).update(re.findall(r'([a-z_]+)="', labels))
    return out


def expressions(board):
    """(where, PromQL) of every panel target and every query variable."""
    found = []

    def panels(items):
        for panel in items:
            for target in panel.get('targets', []):
                found.append((panel['title'], target['expr']))
            panels(panel.get('panels', []))
    panels(board['panels'])
    for var in board['templating']['list']:
        if var['type'] == 'query':
            found.append(('variable ' + var['name'], var['definition']))
            assert var['query']['query'] == var['definition']
    return found


def parse(expr):
    """(metric names, [(metric, selector label names)], grouping label names) of one expression."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)               # strings
    expr = re.sub(r'\[[^\]]*\]', '', expr)                          # range selectors
    selectors = [(m, set(re.findall(r'([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)', labels)))
                 for m, labels in re.findall(r'([a-zA-Z_:][\w:]*)\{([^}]*)\}', expr)]
    expr = re.sub(r'\{[^}]*\}', ' ', expr)
    grouping = set()
    for labels in re.findall(r'\b(?:by|without|on|ignoring)\s*\(([^)]*)\)', expr):
        grouping.update(x.strip() for x in labels.split(',') if x.strip())
    expr = re.sub(r'\b(?:by|without|on|ignoring)\s*\([^)]*\)', ' ', expr)
    if expr.startswith('label_values('):                          # Grafana's: label_values(metric, label)
        metric, label = [x.strip() for x in expr[len('label_values('):-1].split(',')]
        return {metric}, [(metric, {label})], set()
    names = {t for t, call in re.findall(r'(?<![\w$.])([a-zA-Z_:][\w:]*)(\s*\()?', expr)
             if not call and t not in KEYWORDS}                     # not functions, aggregations, keywords
    return names, selectors, grouping


def test_every_expression_reads_exported_metrics_and_their_labels():
    board = json.loads(BOARD.read_text())
    metrics = exported()
    found = expressions(board)
    assert len(found) >= 20
    used = set()
    for where, expr in found:
        names, selectors, grouping = parse(expr)
        assert names, (where, expr)
        for name in names:
            assert name in metrics, '%s: %s is not exported by the router' % (where, name)
        for metric, labels in selectors:
            assert labels <= metrics[metric], '%s: %s has no label %s' % (where, metric, labels - metrics[metric])
        have = set().union(*(metrics[n] for n in names))
        assert grouping <= have, '%s: no label %s on %s' % (where, grouping - have, names)
        used |= names
    # and every family the router exports is on the dashboard
    assert {n if n in FAMILIES else re.sub(r'_(bucket|sum|count)\Z', '', n) for n in used} == set(FAMILIES)


def test_parse_finds_metric_names_and_labels():
    assert parse('histogram_quantile(0.95, sum by (le, model) (rate(x_bucket{model=~"$model"}[5m])))') == (
        {'x_bucket'}, [('x_bucket', {'model'})], {'le', 'model'})
    assert parse('sum(rate(a{k="v",s=~"5.."}[$__rate_interval])) / sum(b)') == ({'a', 'b'}, [('a', {'k', 's'})], set())


def test_the_dashboard_is_grafana_json_with_its_datasource_a_variable():
    board = json.loads(BOARD.read_text())
    ids = []

    def panels(items):
        for panel in items:
            ids.append(panel['id'])
            if panel['type'] != 'row':
                assert panel['datasource'] == {'type': 'prometheus', 'uid': '${datasource}'}, panel['title']
                assert panel['targets'], panel['title']
            panels(panel.get('panels', []))
    panels(board['panels'])
    assert len(ids) == len(set(ids))
    assert [v['name'] for v in board['templating']['list']] == ['datasource', 'model', 'key']
    assert board['uid'] and board['title'] and board['schemaVersion'] >= 36
