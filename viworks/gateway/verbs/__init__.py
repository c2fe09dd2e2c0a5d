"""The gateway's verbs: what may run on this host, and how.

- ``model``: :class:`Verb`, :class:`Invocation`, :class:`VerbOutcome`, :class:`VerbError`;
- ``catalog``: :class:`VerbCatalog` (validate, admit, run, map the outcome);
- ``admission``: the concurrency slots and the queue;
- ``redaction``: secrets echoed in output, replaced before anything leaves;
- ``declared``: verbs an operator declares in ``[verbs.NAME]``; ``template``: their
  argv/stdin templates;
- ``builtin``: the families every gateway ships (one module each).

This package imports nothing itself: the config loader imports ``builtin`` (its names)
and ``template``, and the modules here import the config.
"""
