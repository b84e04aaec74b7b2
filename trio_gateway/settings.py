"""Process settings: where to listen, where to keep data, how to log.

Precedence, highest first: command-line flags, the environment
(``TRIO_GATEWAY_ADMIN_TOKEN``, ``TRIO_GATEWAY_STORE``), the configuration file's
``server`` section, the defaults below.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from trio_gateway.store.base import is_postgres_url

DEFAULT_ADMIN_LISTEN = "127.0.0.1:8080"
DEFAULT_PROXY_LISTEN = "127.0.0.1:8081"
TOKEN_ENV = "TRIO_GATEWAY_ADMIN_TOKEN"
STORE_ENV = "TRIO_GATEWAY_STORE"


class SettingsError(Exception):
    """A setting that cannot work; the message says which and why."""


@attrs.frozen(kw_only=True)
class Settings:
    admin_listen: str = DEFAULT_ADMIN_LISTEN
    proxy_listen: str = DEFAULT_PROXY_LISTEN
    #: ``None`` keeps the configuration in memory only (tests, throw-away runs).
    data_dir: Path | None = Path("data")
    #: A PostgreSQL URL (``postgresql://...``): the shared store. Wins over ``data_dir``.
    store: str | None = attrs.field(default=None, repr=False)
    config_file: Path | None = None
    admin_token: str | None = attrs.field(default=None, repr=False)
    log_format: str = "text"
    log_level: str = "INFO"
    admin_max_body: int = 1 << 20
    proxy_max_body: int = 32 << 20
    #: How long in-flight requests get to finish on SIGINT/SIGTERM.
    graceful_timeout: float = 10.0
    #: How long a request body may take to arrive, from the end of its head (docs/http.md).
    body_timeout: float = 60.0
    #: How long an idle connection (and a request head) may take (docs/http.md).
    keep_alive_timeout: float = 75.0
    #: Proxy processes. With more than one, this process also starts ``workers - 1``
    #: children that share its proxy socket and follow the store for changes.
    workers: int = 1
    #: Serve the proxy on this already-listening socket (shared with the workers).
    proxy_fd: int | None = None
    #: A worker child: proxy only (on ``proxy_fd``), no admin API, follow the store
    #: (the parent applies the file and takes the admin writes).
    worker: bool = False
    #: Host names (``name`` or ``name:port``) the admin API answers to besides its own
    #: address; their ``http(s)://`` origins are allowed too. See docs/admin-api.md.
    admin_hosts: tuple[str, ...] = ()
    #: Prometheus metrics (``GET /metrics`` on the admin listener) and their counting.
    metrics: bool = True
    #: One access log line per proxied request (docs/operations.md).
    access_log: bool = True
    #: Stand-ins for targets' base URLs: ``{"https://api.openai.com": "http://127.0.0.1:9101"}``.
    #: A stand-in may name a fake provider of the configuration file. For offline
    #: demos (``make run``): never set unless asked.
    base_urls: Mapping[str, str] = attrs.field(factory=dict)

    def check(self) -> None:
        """Refuse what would be unsafe or cannot bind; see :class:`SettingsError`."""
        if self.workers < 1:
            raise SettingsError("--workers must be at least 1")
        for flag, value in (
            ("--body-timeout", self.body_timeout),
            ("--keep-alive-timeout", self.keep_alive_timeout),
        ):
            if not 0.1 <= value <= 3600:
                raise SettingsError(f"{flag} must be between 0.1 and 3600 seconds, got {value:g}")
        if self.store is not None and not is_postgres_url(self.store):
            raise SettingsError(
                f"store: expected a PostgreSQL URL such as postgresql://user@host/db, got "
                f"{self.store.split('://')[0]!r}..."
            )
        if (self.workers > 1 or self.worker) and self.data_dir is None and self.store is None:
            raise SettingsError(
                "several workers share their configuration through a store: "
                "use --data-dir or --store, not --memory"
            )
        for name in ("admin_listen", "proxy_listen"):
            split_listen(getattr(self, name), name)
        host, _ = split_listen(self.admin_listen, "admin_listen")
        if not self.admin_token and not is_loopback(host):
            raise SettingsError(
                f"the admin API would listen on {self.admin_listen} without a token: set "
                f"{TOKEN_ENV} (or server.admin_token in the config file), or listen on a "
                "loopback address such as 127.0.0.1"
            )

    def with_file(self, server: Mapping[str, Any], explicit: set[str]) -> Settings:
        """Fill what the command line did not set (``explicit``) from the file's ``server``."""
        fields = {FILE_FIELDS.get(k, k): v for k, v in server.items()}
        if "admin_hosts" in fields:
            fields["admin_hosts"] = tuple(fields["admin_hosts"])
        return attrs.evolve(self, **{k: v for k, v in fields.items() if k not in explicit})


#: ``server`` fields of the configuration file whose setting has another name.
FILE_FIELDS = {"base_url_overrides": "base_urls"}


def split_listen(listen: str, what: str = "listen") -> tuple[str, int]:
    """``"127.0.0.1:8080"`` / ``"[::1]:0"`` -> host and port."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise SettingsError(f"{what}: expected HOST:PORT such as 127.0.0.1:8080, got {listen!r}")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
