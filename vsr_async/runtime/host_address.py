"""This host's LAN address for the snapshot's `local_ip_address` (the predecessor showed it so
another machine could open the panel). Blocking socket calls: run it off the event loop, once.
"""

from __future__ import annotations

import ipaddress
import socket

LOOPBACK = "127.0.0.1"
_PROBE = ("192.0.2.1", 9)  # TEST-NET-1 (RFC 5737): routed like any address, never reached


def local_ip_address() -> str:
    """The address the host would send from to another network: a UDP socket's `connect` only
    picks the route and sends nothing. No route (offline, sandbox) → 127.0.0.1."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(_PROBE)
            address = str(probe.getsockname()[0])
    except OSError:
        return LOOPBACK
    try:
        if ipaddress.ip_address(address).is_unspecified:
            return LOOPBACK
    except ValueError:
        return LOOPBACK
    return address
