"""Host patterns a secret may be sent to: exact names and `*.example.com` wildcards.

Pure functions (no models), so settings can validate the operator's grants at start-up.
"""

import ipaddress
import re
from urllib.parse import urlsplit

from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
MAX_HOSTS = 50


def host_pattern_normalize(raw: str) -> str:
    """The canonical form of one pattern, or ValueError saying what is wrong with it."""
    if not isinstance(raw, str):
        raise ValueError("a host must be a string")
    pattern = raw.strip().lower().rstrip(".")
    if pattern.startswith("[") and pattern.endswith("]"):
        pattern = pattern[1:-1]
    try:
        return str(ipaddress.ip_address(pattern))
    except ValueError:
        pass
    wildcard = pattern.startswith("*.")
    labels = (pattern[2:] if wildcard else pattern).split(".")
    if not pattern or not all(LABEL.match(label) for label in labels):
        raise ValueError(f"{raw!r} is not a host name (letters, digits, hyphens and dots; "
                         "a wildcard only as a leading '*.'; no scheme, port or path)")
    if wildcard and len(labels) < 2:
        raise ValueError(f"{raw!r} is too broad: a wildcard needs a domain such as "
                         "'*.example.com'")
    return pattern


def host_patterns_normalize(raw: list[str]) -> list[str]:
    """Canonical, de-duplicated patterns in their given order; ValueError if any is bad."""
    if not isinstance(raw, list | tuple):
        raise ValueError("allowed hosts must be a list of host names")
    patterns = list(dict.fromkeys(host_pattern_normalize(item) for item in raw))
    if not patterns:
        raise ValueError("at least one allowed host is required")
    if len(patterns) > MAX_HOSTS:
        raise ValueError(f"at most {MAX_HOSTS} allowed hosts")
    return patterns


def host_allowed(host: str, patterns: list[str]) -> bool:
    for pattern in patterns:
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]):
                return True
        elif host == pattern:
            return True
    return False


def url_host(url: str) -> str | None:
    """The host a request to `url` goes to, or None when it cannot be told for sure.

    Two parsers must agree (the standard library's and urllib3's, which `requests` uses),
    and user info or backslashes are refused: such URLs are how a check is fooled into
    approving one host while the request goes to another.
    """
    if not isinstance(url, str) or "\\" in url or not url.isprintable():
        return None
    try:
        split, parsed = urlsplit(url), parse_url(url)
    except (ValueError, LocationParseError):
        return None
    ours, theirs = split.hostname, parsed.host
    if not ours or not theirs or "@" in split.netloc or parsed.auth is not None:
        return None
    ours, theirs = ours.lower().rstrip("."), theirs.lower().strip("[]").rstrip(".")
    if ours != theirs:
        return None
    try:
        return str(ipaddress.ip_address(ours))
    except ValueError:
        return ours
