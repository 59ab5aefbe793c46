"""Credentials known by their format, in free text: the one detector every check uses (a step's
config, a JSON Schema, a name or label in an admin form, secrets_check, the log formatters).

Pure text rules: no Django, no models, so the log formatters can use it while settings load.
"""

import base64
import binascii
import json
import re
from typing import Any

# --- credentials known by their format, in free text ------------------------------------
# A name (above) says a constant under it is a credential; these say it of a value itself,
# wherever an admin pasted it (a prompt, an approval's instructions, an expression's
# constant, a JSON Schema's `const` or `examples`): the formats that announce themselves
# with a fixed prefix, a fixed shape or a checksum. Each is anchored at both ends by a
# letter or digit, so it never matches inside a longer word (`task-…` holds no `sk-` key,
# a 17-character `AKIA…` is no AWS key ID), while any punctuation, a space or the text's
# end may touch it: a token joined to a word by a hyphen, an underscore, a dot or anything
# else (`run-ghp_…`, `ghp_…_old`, `AKIA…-prod`) is found, as it would be alone
# (tests/auxot/test_credential_formats.py tries every format by every ASCII punctuation
# character on each side). A format whose own alphabet holds `-` or `_` takes a neighbour
# of them as more of itself, within its length. Most formats also want their random part to
# look random (a digit in it, several distinct characters): ordinary prose, UUIDs, hex
# digests, base64 of ordinary data, URLs and placeholders (`ghp_xxxx…`) match none
# (tests/auxot/test_credential_formats.py keeps a list of them). Entropy and keyword
# guesses are not used: a false refusal leaves an admin no way to save a workflow.
_WORD_CHAR = r"A-Za-z0-9"  # what a format may not touch on either side
_AUXOT_KEY_CHECKSUM_DIGITS = 6  # apikeys/tokens.py: CRC32 of what comes before, low 24 bits


def _looks_random(body: str) -> bool:
    """Not a placeholder (`ghp_xxxx…`, `AKIA0000…`): eight distinct characters or more."""
    return len(set(body)) >= 8


# Letter pairs English words hardly hold: each is in at most 10 of the ~25,000 distinct
# words of 3 to 14 letters in CPython 3.11's docstrings.
_RARE_LETTER_PAIRS_TEXT = """
    AQ BK BQ BX BZ CJ CX CZ DZ FB FH FJ FK FQ FW FX FZ GJ GK GQ GX HH HJ HK HQ HV HX HZ IW IY
    JB JC JD JF JG JH JJ JL JM JN JP JQ JR JT JV JW JX JY JZ KH KK KQ KV KX KZ LJ LQ LZ MH MJ
    MW MX MZ OQ OZ PJ PX PZ QB QC QD QE QG QH QI QJ QK QM QN QO QP QQ QV QW QX QY QZ RJ RX SX
    SZ TJ UH UJ UQ UW UY VB VF VH VJ VK VN VQ VT VU VV VW VY VZ WB WG WJ WM WQ WU WV WY WZ XG
    XJ XK XQ XU XW XZ YJ YK YQ YY ZB ZC ZD ZF ZJ ZK ZM ZN ZQ ZU ZV ZW ZX"""
_RARE_LETTER_PAIRS = frozenset(_RARE_LETTER_PAIRS_TEXT.split())


def _aws_key_id(body: str) -> bool:
    """An AWS access key ID's 16 characters after its prefix: base32 (A-Z, 2-7; the pattern
    admits no other), looking random. With a digit, that is all. Letters only (one real ID
    in 28), they must not read as English run together (`ASIAPACIFICSALESTEAM`): at most
    2 vowels (AEIOUY) in the 16, where English has about 6, or 3 letter pairs or more that
    English words hardly hold (random letters hold about 3). That finds about 2 in 3
    letters-only IDs and about 1 in 1,000 16-letter runs of the README's words
    (tests/auxot/test_credential_formats.py measures both)."""
    if not _looks_random(body):
        return False
    if any(char.isdigit() for char in body):
        return True
    vowels = sum(char in "AEIOUY" for char in body)
    rare = sum(body[i:i + 2] in _RARE_LETTER_PAIRS for i in range(len(body) - 1))
    return vowels <= 2 or rare >= 3


def _mixed_case(body: str) -> bool:
    return (any(char.isupper() for char in body) and any(char.islower() for char in body)
            and _looks_random(body))


def _random_run(body: str) -> bool:
    """An `sk-` key's random part: a run of 20+ letters and digits with both in it (not
    `sk-my-long-placeholder-name`)."""
    return any(any(c.isdigit() for c in run) and any(c.isalpha() for c in run)
               and _looks_random(run) for run in re.findall(r"[A-Za-z0-9]{20,}", body))


def _auxot_checksum(body: str) -> bool:
    text, checksum = body[:-_AUXOT_KEY_CHECKSUM_DIGITS], body[-_AUXOT_KEY_CHECKSUM_DIGITS:]
    return f"{binascii.crc32(text.encode()) & 0xFFFFFF:06x}" == checksum


def _jwt_header(body: str) -> bool:
    """A JWT's first part decodes to a JSON object naming its algorithm."""
    head = body.split(".", 1)[0]
    try:
        decoded = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(decoded, dict) and "alg" in decoded


def _last_part_random(body: str) -> bool:
    """A webhook URL's token (its last path segment) looks random: not a placeholder
    (`…/XXXXXXXXXXXXXXXXXXXXXXXX`)."""
    return _looks_random(body.rsplit("/", 1)[-1])


def _format(kind: str, pattern: str, check=_looks_random, flags: int = 0):
    """(kind, regex, check): `(?P<body>…)` in `pattern` is what `check` looks at."""
    return kind, re.compile(rf"(?<![{_WORD_CHAR}]){pattern}(?![{_WORD_CHAR}])", flags), check


CREDENTIAL_FORMATS = (
    # Ours (apikeys/tokens.py): `user.`/`team.` + 12 base32 + 43 base64url + 6 hex of CRC32.
    _format("Auxot API key", r"(?P<body>(?:user|team)\.[a-z2-7]{12}\.[A-Za-z0-9_-]{43}"
            r"[0-9a-f]{6})", _auxot_checksum),
    _format("GitHub token", r"gh[pousr]_(?P<body>[A-Za-z0-9]{36,251})"),
    _format("GitHub token", r"github_pat_(?P<body>[A-Za-z0-9_]{60,251})"),
    _format("GitLab token", r"gl(?:pat|dt|rt|ft|soat|cbt|imt|ptt|oas|agent)-"
            r"(?P<body>[A-Za-z0-9_-]{20,})"),
    _format("OpenAI-style API key (sk-…)", r"sk-(?P<body>[A-Za-z0-9_-]{20,})", _random_run),
    _format("Stripe secret key", r"[rs]k_(?:live|test)_(?P<body>[A-Za-z0-9]{20,})"),
    _format("Slack token", r"(?:xox[abprse]|xapp)-(?P<body>[0-9]+-[A-Za-z0-9-]{8,})"),
    # AWS's alphabet is base32 (A-Z, 2-7), as gitleaks' rule has it; a body of letters only
    # (3.6 % of real IDs) is told from an all-caps name (`ASIAPACIFICSALESTEAM`) by
    # `_aws_key_id`.
    _format("AWS access key ID", r"(?:AKIA|ASIA|ABIA|ACCA)(?P<body>[A-Z2-7]{16})",
            _aws_key_id),
    _format("Google API key", r"AIza(?P<body>[A-Za-z0-9_-]{35})"),
    _format("SendGrid API key", r"SG\.(?P<body>[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43})"),
    _format("npm token", r"npm_(?P<body>[A-Za-z0-9]{36})"),
    _format("PyPI token", r"pypi-AgEIcHlwaS5vcmc(?P<body>[A-Za-z0-9_-]{50,})"),
    _format("Hugging Face token", r"hf_(?P<body>[A-Za-z0-9]{34,})", _mixed_case),
    _format("JSON Web Token", r"(?P<body>eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\."
            r"[A-Za-z0-9_-]{16,})", _jwt_header),
    # Incoming-webhook URLs: the path is the credential (anyone holding it posts to the
    # channel). Slack: /services/T<workspace>/B<hook>/<24-character token>; Discord:
    # /api[/v<n>]/webhooks/<snowflake id>/<68-character token>. The scheme is optional.
    _format("Slack webhook URL", r"(?:https?://)?hooks\.slack\.com/services/"
            r"(?P<body>T[A-Z0-9]{6,12}/B[A-Z0-9]{6,12}/[A-Za-z0-9]{20,40})", _last_part_random),
    _format("Discord webhook URL", r"(?:https?://)?(?:(?:www|ptb|canary)\.)?discord(?:app)?"
            r"\.com/api/(?:v[0-9]{1,2}/)?webhooks/(?P<body>[0-9]{17,20}/[A-Za-z0-9_-]{60,100})",
            _last_part_random),
    # The whole block, to its END line (or the end of the text): the key is its body.
    ("private key", re.compile(
        r"-----BEGIN[A-Z0-9 ]* PRIVATE KEY(?: BLOCK)?-----(?P<body>.*?)"
        r"(?:-----END[A-Z0-9 ]* PRIVATE KEY(?: BLOCK)?-----|\Z)", re.DOTALL),
     lambda body: True),
)
# Around a match, what is taken with it when it is redacted: the rest of its word (a
# token's tail past what the pattern needs), up to a space, a quote or a URL's delimiter, so
# `/v1/intake/<token>?x=1` keeps its path and query around `REDACTED` (no token format holds
# any of `/?#&=@:`; the webhook URL formats match their whole URL themselves).
_WORD_AROUND = re.compile(r"[^\s'\"`,;(){}\[\]<>|/?#&=@:]*")


# Every format above holds one of these literally (a prefix, a host): a text without any
# holds no credential, told by one scan instead of one per format (a log line: 35 -> 9 µs).
# tests/auxot/test_credential_formats.py finds every kind's samples through it.
_ANY_FORMAT = re.compile(
    r"(?:user|team)\.|gh[pousr]_|github_pat_|gl[a-z]{2,5}-|sk-|k_(?:live|test)_|xox|xapp-|"
    r"A(?:KIA|SIA|BIA|CCA)|AIza|SG\.|npm_|pypi-|hf_|eyJ|hooks\.slack\.com|discord|"
    r"-----BEGIN")


def _credential_spans(text: str) -> list[tuple[str, int, int]]:
    if not _ANY_FORMAT.search(text):
        return []
    found = []
    for kind, pattern, check in CREDENTIAL_FORMATS:
        for match in pattern.finditer(text):
            if check(match.group("body")):
                found.append((kind, match.start(), match.end()))
    return sorted(found, key=lambda span: span[1])


def credential_formats(text: Any) -> list[str]:
    """The kinds of credential (`GitHub token`, `Auxot API key`) whose format is in `text`,
    in order of appearance, each once; [] for anything but a string."""
    if not isinstance(text, str):
        return []
    return list(dict.fromkeys(kind for kind, _, _ in _credential_spans(text)))


def credential_formats_redacted(text: str) -> str:
    """`text` with each credential `credential_formats` finds, and the rest of the word it
    sits in, replaced by REDACTED (a private key: its whole block)."""
    spans = []
    for _, start, end in _credential_spans(text):
        before = _WORD_AROUND.search(text[:start][::-1])
        start -= before.end() if before else 0
        end += _WORD_AROUND.match(text, end).end() - end
        if spans and start <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(end, spans[-1][1]))
        else:
            spans.append((start, end))
    for start, end in reversed(spans):
        text = f"{text[:start]}REDACTED{text[end:]}"
    return text


def credential_kinds_named(kinds: list[str]) -> str:
    """`a GitHub token`, `an AWS access key ID and a Slack token`."""
    named = [f"{'an' if kind[0].lower() in 'aeiou' else 'a'} {kind}" for kind in kinds]
    return named[0] if len(named) == 1 else f"{', '.join(named[:-1])} and {named[-1]}"


def free_text_credentials(value: Any) -> list[str]:
    """The kinds of credential found by their format in free text a tenant typed (a name, a
    label, a description, a host list): in a string, or in any string of a JSON value (its
    keys too), each kind once."""
    found: list[str] = []

    def walk(item: Any) -> None:
        if isinstance(item, str):
            found.extend(credential_formats(item))
        elif isinstance(item, dict):
            for key, inner in item.items():
                walk(key)
                walk(inner)
        elif isinstance(item, list | tuple):
            for inner in item:
                walk(inner)

    walk(value)
    return list(dict.fromkeys(found))


def free_text_refusal(value: Any, field: str) -> str | None:
    """Why `value`, typed into the free-text field `field`, may not be saved (a credential
    found by its format there), naming the field and the credential's kind, never the
    value; None when it may. Names, labels and descriptions are shown to everyone who may
    view the object, in every list, page and audit row, and no secret can fill them."""
    kinds = free_text_credentials(value)
    if not kinds:
        return None
    return (f"{field}: {credential_kinds_named(kinds)} typed here is shown to everyone who "
            "may view it (members, auditors, the audit log). Remove it: a credential belongs "
            "in an organization secret (Secrets), which only a step or a provider can send.")


def api_free_text_refusal(value: Any, field: str) -> str | None:
    """Why `value`, sent to the API in the free-text field `field` (an approval's comment, a
    cancel's reason, a correlation id), may not be stored: the credential's kind, never the
    value; None when it may. What a caller stores there is kept with the work item and in
    the audit log, which members, auditors and the audit export show."""
    kinds = free_text_credentials(value)
    if not kinds:
        return None
    return (f"{field}: {credential_kinds_named(kinds)} is in this text, which would be kept "
            "with the work item and in the audit log (members, auditors and the audit export "
            "read it). Remove it and send again; nothing was stored.")
