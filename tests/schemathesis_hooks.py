"""Schemathesis hooks for tests/schemathesis.sh, loaded via SCHEMATHESIS_HOOKS.

1. A value is stored and served back with any content type, so
`GET /v1/kv/{key}` can answer `text/yaml` with bytes that are not YAML.
Schemathesis 4.32.5 parses successful answers to reuse their data, and lets
a YAML parse error escape (it only expects ValueError and the like): the
worker thread dies and the operations it had left go untested while the
run still passes. This turns the parse error into a ValueError, which it
handles by skipping that answer.

2. A blocking read (`GET`/`HEAD /v1/kv/{key}?min_version=...`) on a key
that does not reach the version waits `wait_ms` (10 s when absent, up to
600 s) before its 504. Generated keys are mostly absent, so `before_call`
shortens each such wait to 20 ms, a value as valid as the one drawn: the
case stays what it was (valid or not), and the run stays short.
"""

import schemathesis
import yaml
from schemathesis.core import deserialization, media_types

_builtin_yaml = deserialization._DESERIALIZERS["text/yaml"]


@schemathesis.deserializer(*media_types.YAML_MEDIA_TYPES)
def yaml_or_value_error(ctx, response):
    try:
        return _builtin_yaml(ctx, response)
    except yaml.YAMLError as exc:
        raise ValueError(f"not YAML: {exc}") from exc


# The wait a blocking read is given in this run, and the range the spec
# allows: values inside it are shortened, values outside are left alone so
# that invalid cases stay invalid.
SHORT_WAIT_MS = 20
MAX_WAIT_MS = 600_000


@schemathesis.hook
def before_call(ctx, case, kwargs):
    query = case.query
    if not isinstance(query, dict) or "min_version" not in query:
        return
    wait = query.get("wait_ms")
    if wait is None:
        query["wait_ms"] = SHORT_WAIT_MS
        return
    if isinstance(wait, bool):
        return
    if isinstance(wait, str) and wait.isascii() and wait.isdigit():
        wait = int(wait)
    if isinstance(wait, int) and SHORT_WAIT_MS < wait <= MAX_WAIT_MS:
        query["wait_ms"] = SHORT_WAIT_MS
