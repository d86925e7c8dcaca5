"""Every piece of shared state of the web application, as typed `web.AppKey`s (no globals).

The modules named here never import this one; only the factory and the handlers read the keys.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from vsr_async.files.logs import RunLogging
from vsr_async.runtime.supervisor import Supervisor
from vsr_async.settings import Config
from web.events import EventHub
from web.images import StripImages
from web.security import SecurityPolicy

SUPERVISOR = web.AppKey("supervisor", Supervisor)
CONFIG = web.AppKey("config", Config)  # the start config (the live one is supervisor.config)
RUN_LOGGING = web.AppKey("run_logging", RunLogging)  # absent when the app runs without one
SECURITY = web.AppKey("security", SecurityPolicy)
EVENTS = web.AppKey("events", EventHub)
IMAGES = web.AppKey("images", StripImages)
OPENAPI = web.AppKey("openapi", dict)  # the document, built once per app
LEGACY_PANEL = web.AppKey("legacy_panel", dict)  # the predecessor's refresh setting
REGISTRY = web.AppKey("metrics_registry", CollectorRegistry)
REQUEST_COUNTER = web.AppKey("request_counter", Counter)
