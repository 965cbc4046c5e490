"""`r1lab serve`: an OpenAI-compatible HTTP server over the engine (issue 14, SPEC §8, §10).

A leaf: nothing else in the package imports it (the CLI imports it lazily).

* ``protocol.py`` — request models (OpenAI's fields, our thinking budget) and their bounds;
* ``errors.py`` — OpenAI-shaped error objects and the exception handlers;
* ``loop.py`` — the one background thread that owns the ``Engine``;
* ``metrics.py`` — Prometheus metrics named like vLLM's (``r1lab:…``);
* ``app.py`` — the FastAPI routes, API keys, body limit, SSE streaming, draining;
* ``server.py`` — loading the model, uvicorn, the ready line and SIGTERM draining;
* ``static/`` — the web chat served at ``/``.

Python use: ``r1lab.serve.app.create_app(ServeConfig(...))`` builds the app alone;
``r1lab.serve.server.run_server(ServeOptions(model=...))`` runs the whole server.
"""
