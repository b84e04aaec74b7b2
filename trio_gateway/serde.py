"""The only cattrs module: every wire format of the configuration model, and its validation.

Two converters, built by ``make_*`` functions:

* :data:`API` structures what clients send (admin API, configuration file) strictly:
  a string is a string (``"models": "gpt-4"`` is an error, not four one-letter
  models), unknown fields are errors, constrained types (``Weight``, ``HeaderName``…)
  are checked. It unstructures for clients: secrets masked (see
  :mod:`trio_gateway.config.secrets`), key hashes left out.
* :data:`STORE` round-trips everything, secrets and hashes included, for the store.
  It checks types but not values: what a store holds was valid when it was
  written, and a limit tightened since (or a row edited by hand) must not stop the
  gateway from starting. The runtime reports an entity it cannot serve instead.

:func:`structure` turns cattrs' exception groups into one
:class:`~trio_gateway.errors.ValidationFailed` naming each problem by path
(``targets[1].weight``).
"""

from __future__ import annotations

import enum
import functools
import math
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar, get_args, get_origin
from urllib.parse import urlsplit

import attrs
import cattrs
import httpx2
from cattrs.cols import homogenous_tuple_structure_factory, is_mapping
from cattrs.errors import (
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
)
from cattrs.gen import make_dict_unstructure_fn, make_mapping_structure_fn

from trio_gateway.config import secrets
from trio_gateway.config.faults import Fault, compact
from trio_gateway.config.models import (
    ALGORITHM_ALIASES,
    Algorithm,
    ApiKey,
    Credentials,
    HealthChecks,
    Target,
)
from trio_gateway.config.types import (
    BaseUrlT,
    Between,
    HeaderNameT,
    HeaderValueT,
    SecretT,
    Text,
    UrlPathT,
)
from trio_gateway.errors import Problem, ValidationFailed

T = TypeVar("T")

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_CONTROL_OR_SPACE = re.compile(r"[\x00-\x20\x7f]")
_NOT_FIELD_TEXT = re.compile("[^\t\x20-\x7e\u2026]")
_SURROGATE = re.compile("[\ud800-\udfff]")
#: Longest ``base_url``: with a path, far below the HTTP client's own limit (64 KiB).
MAX_BASE_URL = 2048


# --- strict scalars ------------------------------------------------------------


def _str(value: Any, _: type) -> str:
    if type(value) is not str:
        raise TypeError(f"must be a string, not {_json_type(value)}")
    if not value.isascii() and _SURROGATE.search(value):
        raise ValueError("must be valid Unicode text (it holds a lone surrogate such as \\ud800)")
    return value


def _any_str(value: Any, _: type) -> str:
    """The store's strings: a type check only."""
    if type(value) is not str:
        raise TypeError(f"must be a string, not {_json_type(value)}")
    return value


def _int(value: Any, _: type) -> int:
    if type(value) is not int:
        if type(value) is float and value.is_integer():
            return int(value)
        raise TypeError(f"must be an integer, not {_json_type(value)}")
    return value


def _float(value: Any, _: type) -> float:
    if type(value) not in (int, float):
        raise TypeError(f"must be a number, not {_json_type(value)}")
    try:
        result = float(value)
    except OverflowError:  # an integer beyond a double's range
        raise ValueError("must be a number of a sensible size") from None
    if not math.isfinite(result):
        raise ValueError("must be a finite number")
    return result


def _bool(value: Any, _: type) -> bool:
    if type(value) is not bool:
        raise TypeError(f"must be true or false, not {_json_type(value)}")
    return value


def _datetime(value: Any, _: type) -> datetime:
    if isinstance(value, datetime):  # YAML parses timestamps itself
        parsed = value
    else:
        try:
            parsed = datetime.fromisoformat(_str(value, str))
        except ValueError:
            raise ValueError("must be an ISO 8601 date-time, e.g. 2027-01-31T00:00:00Z") from None
    if parsed.tzinfo is None:
        raise ValueError("must include a time zone, e.g. 2027-01-31T00:00:00Z")
    return parsed.astimezone(UTC)


def _json_type(value: Any) -> str:
    match value:
        case None:
            return "null"
        case bool():
            return "a boolean"
        case int() | float():
            return "a number"
        case str():
            return "a string"
        case list() | tuple():
            return "a list"
        case dict():
            return "an object"
    return type(value).__name__


# --- constrained types (Annotated metadata from config.models) -------------------


def _check_text(rule: Text) -> Callable[[Any, type], str]:
    def structure(value: Any, _: type) -> str:
        text = _str(value, str)
        if not rule.min_len <= len(text) <= rule.max_len:
            if rule.min_len and not text:
                raise ValueError("must not be empty")
            raise ValueError(f"must be {rule.min_len} to {rule.max_len} characters long")
        if _CONTROL.search(text):
            raise ValueError("must not contain control characters")
        return text

    return structure


def _check_between(rule: Between, base: type) -> Callable[[Any, type], float]:
    number = _int if base is int else _float
    lo = int(rule.lo) if base is int else rule.lo
    hi = int(rule.hi) if base is int else rule.hi

    def structure(value: Any, _: type) -> float:
        result = number(value, base)
        too_low = result <= lo if rule.lo_open else result < lo
        if too_low or result > hi:
            if rule.lo_open:
                raise ValueError(f"must be greater than {lo} and at most {hi}")
            raise ValueError(f"must be between {lo} and {hi}")
        return result

    return structure


def _header_name(value: Any, _: type) -> str:
    name = _str(value, str)
    if not _TOKEN.match(name):
        raise ValueError("must be a valid HTTP header name (letters, digits and !#$%&'*+-.^_`|~)")
    return name


def _secret(value: Any, _: type) -> str:
    text = _header_value(value, _)
    if not text:
        raise ValueError("must not be empty")
    return text


def _header_value(value: Any, _: type) -> str:
    """An RFC 9110 field value that every HTTP client can send.

    Printable ASCII, spaces and tabs inside. The ellipsis of a masked secret is let
    through here; the catalog swaps a mask for the secret it stands for, or refuses it.
    """
    text = _str(value, str)
    if _CONTROL.search(text):
        raise ValueError("must not contain control characters (CR, LF, NUL…)")
    if _NOT_FIELD_TEXT.search(text):
        raise ValueError("must be printable ASCII (HTTP header values cannot carry other text)")
    if text != text.strip(" \t"):
        raise ValueError(
            "must not start or end with whitespace (a pasted key with a trailing space?)"
        )
    if len(text) > 8192:
        raise ValueError("must be at most 8192 characters long")
    return text


def _url_path(value: Any, _: type) -> str:
    path = _str(value, str)
    if not path.startswith("/"):
        raise ValueError("must start with '/'")
    if _CONTROL_OR_SPACE.search(path) or len(path) > 2048:
        raise ValueError("must be a URL path without spaces or control characters")
    return path


def _base_url(value: Any, _: type) -> str:
    url = _str(value, str)
    if len(url) > MAX_BASE_URL:
        raise ValueError(f"must be at most {MAX_BASE_URL} characters long")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError:
        raise ValueError("must be an http(s) URL such as https://api.openai.com") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or _CONTROL_OR_SPACE.search(url):
        raise ValueError("must be an http(s) URL such as https://api.openai.com")
    if parts.query or parts.fragment:
        raise ValueError("must not have a query or a fragment")
    if (problem := url_problem(url)) is not None:
        raise ValueError(problem)
    return url.rstrip("/")


def url_problem(url: str) -> str | None:
    """Why the runtime's HTTP client would refuse ``url``, or ``None``.

    The same parser, and so the same rules and limits, as every request sent to a
    target: what the admin API accepts can be served.
    """
    try:
        parsed = httpx2.URL(url)
    except httpx2.InvalidURL as exc:
        reason = str(exc)
        userinfo = urlsplit(url).netloc.rpartition("@")[0]
        if userinfo and userinfo in reason:
            reason = "invalid URL"  # never echo a credential
        return f"is not a URL the gateway's HTTP client accepts: {reason}"
    if not parsed.host:
        return "must name a host"
    return None


_MARKER_HOOKS: dict[type, Callable[[Any, type], str]] = {
    HeaderNameT: _header_name,
    HeaderValueT: _header_value,
    SecretT: _secret,
    UrlPathT: _url_path,
    BaseUrlT: _base_url,
}


def _constraint(tp: Any) -> Any | None:
    if get_origin(tp) is not Annotated:
        return None
    for meta in get_args(tp)[1:]:
        if isinstance(meta, Text | Between) or type(meta) in _MARKER_HOOKS:
            return meta
    return None


def _constrained_hook(tp: Any) -> Callable[[Any, type], Any]:
    meta = _constraint(tp)
    if isinstance(meta, Text):
        return _check_text(meta)
    if isinstance(meta, Between):
        return _check_between(meta, get_args(tp)[0])
    return _MARKER_HOOKS[type(meta)]


def _unconstrained_hook(tp: Any) -> Callable[[Any, type], Any]:
    """The store's view of a constrained type: its base type, unchecked."""
    base = get_args(tp)[0]
    return {int: _int, float: _float}.get(base, _any_str)


# --- containers and enums ------------------------------------------------------


def _strict_attrs(cl: type, converter: cattrs.Converter) -> Callable[[Any, type], Any]:
    """An attrs class from a JSON object, and only from one."""
    inner = converter.gen_structure_attrs_fromdict(cl)

    def structure(value: Any, _: type) -> Any:
        if type(value) is not dict:
            raise TypeError(f"must be an object, not {_json_type(value)}")
        return inner(value)

    return structure


def _fault(cl: type, converter: cattrs.Converter) -> Callable[[Any, type], Any]:
    """A fault from an object, or from its bare kind name (``"hang"``)."""
    inner = _strict_attrs(cl, converter)

    def structure(value: Any, _: type) -> Any:
        return inner({"kind": value} if type(value) is str else value, cl)

    return structure


def _is_fault(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, Fault)


def _is_homogeneous_tuple(tp: Any) -> bool:
    args = get_args(tp)
    return get_origin(tp) is tuple and len(args) == 2 and args[1] is Ellipsis


def _strict_tuple(tp: Any, converter: cattrs.Converter) -> Callable[[Any, type], tuple]:
    inner = homogenous_tuple_structure_factory(tp, converter)

    def structure(value: Any, cl: type) -> tuple:
        if type(value) is not list:
            raise TypeError(f"must be a list, not {_json_type(value)}")
        return inner(value, cl)

    return structure


def _strict_mapping(tp: Any, converter: cattrs.Converter) -> Callable[[Any, type], dict]:
    inner = make_mapping_structure_fn(tp, converter, dict)

    def structure(value: Any, cl: type) -> dict:
        if type(value) is not dict:
            raise TypeError(f"must be an object, not {_json_type(value)}")
        return inner(value, cl)

    return structure


def _enum(value: Any, cl: type[enum.Enum]) -> enum.Enum:
    by_value = _enum_values(cl)
    try:
        return by_value[value]
    except (KeyError, TypeError):
        expected = ", ".join(repr(member.value) for member in cl)
        raise ValueError(f"must be one of {expected}") from None


@functools.cache
def _enum_values(cl: type[enum.Enum]) -> dict[Any, enum.Enum]:
    by_value: dict[Any, enum.Enum] = {member.value: member for member in cl}
    if cl is Algorithm:
        by_value.update(ALGORITHM_ALIASES)
    return by_value


# --- unstructuring -------------------------------------------------------------


def _timestamp(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _number(value: float) -> float | int:
    """Seconds were given as ``60``: echo ``60``, not ``60.0``."""
    return int(value) if float(value).is_integer() else value


def _make_base(*, check_values: bool = True) -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True, omit_if_default=False)
    strings = _str if check_values else _any_str
    for tp, hook in ((str, strings), (int, _int), (float, _float), (bool, _bool)):
        converter.register_structure_hook(tp, hook)
    # cattrs dispatches on classes first, along the MRO: StrEnum comes before str
    # in a StrEnum's MRO, so these two catch every enum before the ``str`` hook does.
    converter.register_structure_hook(enum.StrEnum, _enum)
    converter.register_structure_hook(enum.Enum, _enum)
    converter.register_structure_hook_factory(attrs.has, _strict_attrs)
    converter.register_structure_hook_factory(_is_fault, _fault)
    converter.register_structure_hook(datetime, _datetime)
    converter.register_structure_hook_factory(
        lambda tp: _constraint(tp) is not None,
        _constrained_hook if check_values else _unconstrained_hook,
    )
    converter.register_structure_hook_factory(_is_homogeneous_tuple, _strict_tuple)
    converter.register_structure_hook_factory(is_mapping, _strict_mapping)
    converter.register_unstructure_hook(datetime, _timestamp)
    converter.register_unstructure_hook(float, _number)
    return converter


def make_store_converter() -> cattrs.Converter:
    """Everything, secrets and hashes included, types checked, values not: for the store only."""
    return _make_base(check_values=False)


def make_api_converter() -> cattrs.Converter:
    """Strict input; output with secrets masked and key hashes left out.

    Masked by value, not by the look of a name: a credential, the userinfo of a
    ``base_url`` and the value of every header a target or a probe adds, unless the
    header is on :data:`~trio_gateway.config.secrets.PUBLIC_HEADERS`.
    """
    converter = _make_base()

    def credentials(value: Credentials) -> dict[str, str | None]:
        return {"header_name": value.header_name, "header_value": secrets.mask(value.header_value)}

    converter.register_unstructure_hook(Credentials, credentials)
    # Generated after the Credentials hook, which they use.
    plain_target = make_dict_unstructure_fn(Target, converter)
    plain_checks = make_dict_unstructure_fn(HealthChecks, converter)

    def target(value: Target) -> dict[str, Any]:
        data = plain_target(value)
        data["headers"] = secrets.mask_headers(data["headers"])
        if data["base_url"] is not None:
            data["base_url"] = secrets.mask_url(data["base_url"])
        return data

    def health_checks(value: HealthChecks) -> dict[str, Any]:
        data = plain_checks(value)
        data["headers"] = secrets.mask_headers(data["headers"])
        return data

    api_key_fields = [a.name for a in attrs.fields(ApiKey) if a.name != "key_hash"]

    def api_key(value: ApiKey) -> dict[str, Any]:
        return {name: converter.unstructure(getattr(value, name)) for name in api_key_fields}

    converter.register_unstructure_hook(Target, target)
    converter.register_unstructure_hook(HealthChecks, health_checks)
    converter.register_unstructure_hook(ApiKey, api_key)

    def fault(cl: type[Fault]) -> Callable[[Fault], dict[str, Any]]:
        """Faults are shown as written: only what differs from the defaults."""
        plain = make_dict_unstructure_fn(cl, converter)
        return lambda value: compact(value, plain(value))

    converter.register_unstructure_hook_factory(_is_fault, fault)
    return converter


API = make_api_converter()
STORE = make_store_converter()


# --- entry points ----------------------------------------------------------------


def structure(data: Any, cls: type[T], *, converter: cattrs.Converter = API, loc: str = "") -> T:
    """``data`` as a ``cls``, or :class:`ValidationFailed` naming every problem."""
    if not isinstance(data, dict) and attrs.has(cls):
        raise ValidationFailed.single(loc or "$", f"must be an object, not {_json_type(data)}")
    try:
        return converter.structure(data, cls)
    except (ClassValidationError, IterableValidationError, ValueError, TypeError) as exc:
        raise ValidationFailed.of(problems(exc, loc)) from exc


def problems(exc: BaseException, loc: str = "") -> list[Problem]:
    """Flatten a cattrs error tree into problems with ``a.b[1].c`` locations."""
    if isinstance(exc, ClassValidationError):
        with_notes, without = exc.group_exceptions()
        found = [p for sub, note in with_notes for p in problems(sub, _join(loc, note.name))]
        return found + [p for sub in without for p in problems(sub, loc)]
    if isinstance(exc, IterableValidationError):
        with_notes, without = exc.group_exceptions()
        found = [p for sub, note in with_notes for p in problems(sub, f"{loc}[{note.index!r}]")]
        return found + [p for sub in without for p in problems(sub, loc)]
    if isinstance(exc, ForbiddenExtraKeysError):
        return [Problem(_join(loc, key), "unknown field") for key in sorted(exc.extra_fields)]
    if isinstance(exc, KeyError):
        return [Problem(loc or "$", "is required")]
    if isinstance(exc, ValueError | TypeError):
        return [Problem(loc or "$", str(exc))]
    raise exc


def _join(loc: str, name: str) -> str:
    return f"{loc}.{name}" if loc else name
