"""web: the aiohttp panel and REST API of one run (DESIGN §7).

`server.WebPanel` is the supervisor service that serves `app.create_app(...)`; handlers read the
store and enqueue commands, never more. Imports `vsr_async`; `vsr_async` never imports `web`.
"""
