# Copyright (c) 2026, gpufleet.llm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The key a client presents and its constant-time check (llm_router/auth.py)."""

import pytest
from hypothesis import given, strategies as st

from llm_router import auth


class Headers(dict):
    """Case-insensitive enough for presented_key (the real router passes a dict of lower-case names)."""

    def get(self, key, default=None):
        for k, v in self.items():
            if k.lower() == key.lower():
                return v
        return default


@pytest.mark.parametrize('headers,key', [
    ({'Authorization': 'Bearer abc'}, 'abc'),
    ({'authorization': 'bearer  abc '}, 'abc'),
    ({'X-Api-Key': 'abc'}, 'abc'),
    ({'Authorization': 'Basic abc', 'x-api-key': 'def'}, 'def'),
    ({'Authorization': 'Bearer abc', 'x-api-key': 'def'}, 'abc'),
    ({}, ''),
])
def test_presented_key(headers, key):
    assert auth.presented_key(Headers(headers)) == key


@given(keys=st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=4), other=st.text(max_size=20))
def test_key_accepted_iff_configured(keys, other):
    for k in keys:
        assert auth.key_accepted(k, keys)
    assert auth.key_accepted(other, keys) == (other != '' and other in keys)
