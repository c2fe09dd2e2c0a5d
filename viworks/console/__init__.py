"""The operators' web console: static files served by the backend at ``/ui/``.

``static/`` holds the page (Preact + htm + signals as ES modules, no build step) and
the vendored libraries with their licences (``make console-vendor``); ``files``
serves them from memory with a strict Content-Security-Policy.
"""
