"""Put this folder on PYTHONPATH and the process can reach loopback only.

For end-to-end tests that must prove nothing leaves the machine: a name that is not a
loopback name or address fails to resolve, and a connect to any other address is refused.
Every refusal is appended to the file named by LOOPBACK_ONLY_LOG.
"""

import ipaddress
import os
import socket

_LOG = os.environ.get("LOOPBACK_ONLY_LOG", "")
_getaddrinfo = socket.getaddrinfo
_connect = socket.socket.connect
_connect_ex = socket.socket.connect_ex


def _refuse(what: str) -> None:
    if _LOG:
        with open(_LOG, "a") as log:
            log.write(f"{os.getpid()} {what}\n")


def _loopback(host) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(str(host).strip("[]").split("%")[0]).is_loopback
    except ValueError:
        return False


def getaddrinfo(host, *args, **kwargs):
    if host is not None and not _loopback(host):
        _refuse(f"resolve {host}")
        raise socket.gaierror(socket.EAI_NONAME, f"loopback only: {host} refused")
    return _getaddrinfo(host, *args, **kwargs)


def _checked(address) -> None:
    if isinstance(address, tuple) and not _loopback(address[0]):
        _refuse(f"connect {address[0]}")
        raise ConnectionRefusedError(f"loopback only: {address[0]} refused")


def connect(self, address):
    _checked(address)
    return _connect(self, address)


def connect_ex(self, address):
    _checked(address)
    return _connect_ex(self, address)


socket.getaddrinfo = getaddrinfo
socket.socket.connect = connect
socket.socket.connect_ex = connect_ex
