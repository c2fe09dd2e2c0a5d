"""What stands in for a secret in everything viworks stores, shows, sends again or logs.

Two redactions, with two markers, because they know different things:

* **Arguments** (``redact_args``) are redacted *by schema*: a verb's ``secret``-typed
  parameters (and any key the schema does not know: a misspelt secret must not leak)
  become ``REDACTED`` (``"***"``). The gateway uses the same marker for a secret echoed
  in a verb's output (``viworks.gateway.verbs.redaction``). This marker is part of the
  contracts: API answers show it in ``args``, and a command redelivered after a
  backend restart carries it in place of its secrets (the agent refuses such a
  command; docs/protocol.md), inside the signed envelope.
* **Audit details** (``redact_detail``) are free-form, with no schema: values under
  secret-looking *keys* (``password``, ``token``, ``authorization`` ...) become
  ``REDACTED_DETAIL`` (``"[redacted]"``), at any depth. The marker is stored in the
  hash-chained audit log, so records written before and after a change would disagree.

They never meet on one field: audit records carry argument *names* (``arg_names``),
never argument values, so no value is redacted by both. Each marker keeps the value it
has always had (both are contracts); a single marker would buy nothing but a change to
one of them.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Collection, Mapping
from typing import Any

__all__ = ["REDACTED", "REDACTED_DETAIL", "redact_args", "redact_detail"]

#: A secret argument (by schema), or a secret echoed in a verb's output.
REDACTED = "***"
#: A value under a secret-looking key in an audit record's detail.
REDACTED_DETAIL = "[redacted]"

_SECRET_KEY = re.compile(
    r"pass|secret|token|authorization|cookie|credential|private|api_?key", re.IGNORECASE
)


def redact_args(
    params: Mapping[str, Any], args: Mapping[str, Any], also_secret: Collection[str] = ()
) -> dict[str, Any]:
    """A copy of ``args`` safe to store, log or show.

    Values become ``REDACTED`` when ``params`` (a verb's parameter schema) types them
    ``secret``, when ``params`` does not know their key (a misspelt secret parameter must
    not leak), or when their key is in ``also_secret`` (secret by another account: the
    backend's view of every agent's announcements). Anything else is deep-copied.
    """
    if not isinstance(args, Mapping):
        return {}
    out: dict[str, Any] = {}
    for key, value in args.items():
        spec = params.get(key)
        if not isinstance(spec, Mapping) or spec.get("type") == "secret" or key in also_secret:
            out[key] = REDACTED
        else:
            out[key] = copy.deepcopy(value)
    return out


def redact_detail(value: Any) -> Any:
    """A copy of ``value`` whose values under secret-looking keys are ``REDACTED_DETAIL``."""
    if isinstance(value, Mapping):
        return {
            str(k): REDACTED_DETAIL if _SECRET_KEY.search(str(k)) else redact_detail(v)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [redact_detail(v) for v in value]
    return value
