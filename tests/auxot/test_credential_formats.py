"""Credentials known by their format (auxot/credentials.py, `CREDENTIAL_FORMATS`): each format is
found alone and inside text, named by its kind, and redacted whole; ordinary text (prose,
UUIDs, hex digests, base64 of ordinary data, URLs, placeholders, expressions) is not.

The samples are made here, at random, in each format: no credential-shaped constant is
written in the source.
"""

import base64
import hashlib
import json
import random
import string
import uuid

import pytest

from apikeys.tokens import token_generate
from auxot.credentials import CREDENTIAL_FORMATS, credential_formats, credential_formats_redacted

RNG = random.Random(20240611)
ALNUM = string.ascii_letters + string.digits
URLSAFE = ALNUM + "-_"
UPPER_DIGITS = string.ascii_uppercase + string.digits
BASE32 = string.ascii_uppercase + "234567"


def _chars(alphabet: str, n: int) -> str:
    """n random characters of `alphabet`, with a digit in them if it has digits."""
    while True:
        text = "".join(RNG.choice(alphabet) for _ in range(n))
        if any(c.isdigit() for c in text) or not any(c.isdigit() for c in alphabet):
            return text


def _b64url(value: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def _private_key(label: str) -> str:
    body = base64.b64encode(RNG.randbytes(190)).decode()
    lines = "\n".join(body[i:i + 64] for i in range(0, len(body), 64))
    return f"-----BEGIN {label}-----\n{lines}\n-----END {label}-----"


SAMPLES = {
    "Auxot API key": [token_generate("user"), token_generate("team")],
    "GitHub token": [f"{prefix}_{_chars(ALNUM, 36)}" for prefix in ("ghp", "gho", "ghs",
                                                                    "ghu", "ghr")]
    + [f"github_pat_{_chars(ALNUM, 22)}_{_chars(ALNUM, 59)}"],
    "GitLab token": [f"glpat-{_chars(URLSAFE, 20)}", f"gldt-{_chars(URLSAFE, 24)}"],
    "OpenAI-style API key (sk-…)": [
        f"sk-{_chars(ALNUM, 48)}", f"sk-proj-{_chars(URLSAFE, 156)}",
        f"sk-svcacct-{_chars(URLSAFE, 120)}", f"sk-ant-api03-{_chars(URLSAFE, 93)}AA",
        f"sk-{_chars('0123456789abcdef', 32)}"],
    "Stripe secret key": [f"sk_live_{_chars(ALNUM, 24)}", f"rk_live_{_chars(ALNUM, 99)}",
                          f"sk_test_{_chars(ALNUM, 24)}"],
    "Slack token": [
        f"xoxb-{RNG.randrange(10**11, 10**12)}-{RNG.randrange(10**12, 10**13)}-"
        f"{_chars(ALNUM, 24)}",
        f"xoxp-{RNG.randrange(10**11, 10**12)}-{RNG.randrange(10**11, 10**12)}-"
        f"{RNG.randrange(10**12, 10**13)}-{_chars('0123456789abcdef', 32)}",
        f"xapp-1-A{_chars(string.ascii_uppercase + string.digits, 10)}-"
        f"{RNG.randrange(10**12, 10**13)}-{_chars('0123456789abcdef', 64)}"],
    "AWS access key ID": [f"AKIA{_chars(string.ascii_uppercase + '234567', 16)}",
                          f"ASIA{_chars(string.ascii_uppercase + '234567', 16)}"],
    "Google API key": [f"AIza{_chars(URLSAFE, 35)}"],
    "SendGrid API key": [f"SG.{_chars(URLSAFE, 22)}.{_chars(URLSAFE, 43)}"],
    "npm token": [f"npm_{_chars(ALNUM, 36)}"],
    "PyPI token": [f"pypi-AgEIcHlwaS5vcmc{_chars(URLSAFE, 70)}"],
    "Hugging Face token": [f"hf_{_chars(string.ascii_letters, 34)}"],
    "JSON Web Token": [
        f"{_b64url({'alg': 'HS256', 'typ': 'JWT'})}.{_b64url({'sub': '1234567890'})}."
        f"{_chars(URLSAFE, 43)}",
        f"{_b64url({'alg': 'RS256', 'kid': 'k1'})}.{_b64url({'iss': 'a', 'exp': 1})}."
        f"{_chars(URLSAFE, 342)}"],
    "Slack webhook URL": [
        f"https://hooks.slack.com/services/T{_chars(UPPER_DIGITS, 8)}/B{_chars(UPPER_DIGITS, 10)}"
        f"/{_chars(ALNUM, 24)}",
        f"hooks.slack.com/services/T{_chars(UPPER_DIGITS, 10)}/B{_chars(UPPER_DIGITS, 8)}/"
        f"{_chars(string.ascii_letters, 24)}"],
    "Discord webhook URL": [
        f"https://discord.com/api/webhooks/{RNG.randrange(10**17, 10**19)}/{_chars(URLSAFE, 68)}",
        f"https://discordapp.com/api/v10/webhooks/{RNG.randrange(10**17, 10**19)}/"
        f"{_chars(URLSAFE, 68)}",
        f"https://canary.discord.com/api/webhooks/{RNG.randrange(10**17, 10**19)}/"
        f"{_chars(URLSAFE, 68)}"],
    "private key": [_private_key(label) for label in (
        "RSA PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY", "OPENSSH PRIVATE KEY",
        "ENCRYPTED PRIVATE KEY", "PGP PRIVATE KEY BLOCK")],
}
CASES = [(kind, value) for kind, values in SAMPLES.items() for value in values]
# How a credential sits in what an admin types: alone, in a sentence, quoted in an
# expression, in JSON, after a scheme word, in a URL's query, at the end of a sentence.
SETTINGS = ["{}", "Call the API with {} and report back.", "'Bearer {}'", '{{"k": "{}"}}',
            "Authorization: Bearer {}\n", "https://api.example.com/v1?key={}&x=1", "Use {}."]


def test_every_format_has_samples():
    assert {kind for kind, _, _ in CREDENTIAL_FORMATS} == set(SAMPLES)


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize(("kind", "value"), CASES, ids=[f"{k}-{i}" for i, (k, _) in
                                                        enumerate(CASES)])
def test_a_credential_is_found_by_its_format_and_redacted(kind, value, setting):
    text = setting.format(value)
    assert credential_formats(text) == [kind]
    shown = credential_formats_redacted(text)
    assert "REDACTED" in shown
    # No piece of it is left: not the value, nor any 8 characters of its random part.
    tail = value[-40:]
    assert not any(tail[i:i + 8] in shown for i in range(len(tail) - 7)), shown


def test_redaction_keeps_the_text_around_a_credential():
    token = SAMPLES["GitHub token"][0]
    key = SAMPLES["Google API key"][0]
    text = f"Summarise the ticket. Use {token} for the repo and '{key}' for maps."
    assert credential_formats(text) == ["GitHub token", "Google API key"]
    assert credential_formats_redacted(text) == (
        "Summarise the ticket. Use REDACTED for the repo and 'REDACTED' for maps.")


def test_redaction_stops_at_a_urls_delimiters():
    """A token in a URL is redacted with its word's tail, not the URL around it: the path,
    the query's other parameters and the userinfo's name still show."""
    token = SAMPLES["GitHub token"][0]
    assert credential_formats_redacted(f"GET /v1/intake/{token}?page=2 401") == (
        "GET /v1/intake/REDACTED?page=2 401")
    assert credential_formats_redacted(f"https://api.example.com/v1?key={token}&x=1") == (
        "https://api.example.com/v1?key=REDACTED&x=1")
    assert credential_formats_redacted(f"https://bot:{token}.tail@git.example.com/r#{token}") == (
        "https://bot:REDACTED@git.example.com/r#REDACTED")


def test_a_private_key_is_redacted_to_its_end_line_or_the_end_of_the_text():
    block = SAMPLES["private key"][0]
    assert credential_formats_redacted(f"Key:\n{block}\nThanks.") == "Key:\nREDACTED\nThanks."
    cut = block[: len(block) // 2]  # pasted without its END line: the rest of the text goes
    assert credential_formats_redacted(f"Key:\n{cut}") == "Key:\nREDACTED"


def test_an_auxot_key_with_a_wrong_checksum_or_cut_short_is_not_one():
    """A mistyped key is refused by the API without a lookup: it opens nothing."""
    key = token_generate("user")
    wrong = key[:-1] + ("0" if key[-1] != "0" else "1")
    assert credential_formats(wrong) == []
    assert credential_formats(key[:-3]) == []
    assert credential_formats(f"x{key}") == []  # inside a longer word


# Beside a credential, what an admin or a log line may put. Every ASCII punctuation
# character is a boundary: a token joined to a word by one (`run-ghp_…`, `ghp_…_old`,
# `key=AKIA…`) is found, and redacted with the word it is joined to, except that the
# log's URL delimiters and quotes (`_WORD_AROUND`) are kept so a path or query stays
# readable. A letter or a digit is not a boundary: it makes another, longer word.
REDACTION_KEEPS = set("'\"`,;(){}[]<>|/?#&=@:")
# Formats of a fixed length (or a checksum over it): a letter or digit after one makes a
# longer word, which is not the format. Every other format's random part runs on (a
# longer token of the same kind), so it is found with the letter as part of it.
FIXED_LENGTH = {"Auxot API key", "AWS access key ID", "Google API key", "SendGrid API key",
                "npm token"}


def _touching_a_letter_before_is_found(kind: str, value: str) -> bool:
    """A private key is delimited by its armor lines, not its neighbours. A webhook URL
    written with its scheme is anchored at its host, after `//`: `xhttps://hooks…` still
    holds the webhook; `xhooks.slack.com` is another host."""
    return kind == "private key" or value.startswith("https://")


BOUNDARY_CASES = [(kind, values[0]) for kind, values in SAMPLES.items()] + [
    ("Slack webhook URL", SAMPLES["Slack webhook URL"][1]),
    ("GitHub token", SAMPLES["GitHub token"][-1])]


@pytest.mark.parametrize(("kind", "value"), BOUNDARY_CASES,
                         ids=[f"{k}-{i}" for i, (k, _) in enumerate(BOUNDARY_CASES)])
def test_every_punctuation_character_beside_a_credential_is_a_boundary(kind, value):
    missed = {}
    for char in string.punctuation:
        for text in (f"run{char}{value}", f"{value}{char}run", f"{char}{value}{char}",
                     f"run{char}{value}{char}run"):
            if credential_formats(text) != [kind]:
                missed[text[:12]] = credential_formats(text)
        shown = credential_formats_redacted(f"run{char}{value}{char}run")
        if char in REDACTION_KEEPS:
            assert shown == f"run{char}REDACTED{char}run", (char, shown)
        else:
            assert shown == "REDACTED", (char, shown)
    assert missed == {}


@pytest.mark.parametrize(("kind", "value"), BOUNDARY_CASES,
                         ids=[f"{k}-{i}" for i, (k, _) in enumerate(BOUNDARY_CASES)])
def test_a_letter_or_digit_beside_a_credential_makes_another_word(kind, value):
    before = _touching_a_letter_before_is_found(kind, value)
    after = kind not in FIXED_LENGTH
    for char in "x7":
        assert (credential_formats(f"{char}{value}") == [kind]) is before, char
        assert (credential_formats(f"{value}{char}") == [kind]) is after, char


def test_a_token_joined_to_a_word_by_a_hyphen_or_an_underscore_is_found():
    token = SAMPLES["GitHub token"][0]
    key_id = SAMPLES["AWS access key ID"][0]
    text = f"run-{token} then {key_id}_prod and deploy_{token}-old"
    assert credential_formats(text) == ["GitHub token", "AWS access key ID"]
    assert credential_formats_redacted(text) == "REDACTED then REDACTED and REDACTED"
    # An Auxot key after a dot (a dotted path) is one: its checksum tells.
    assert credential_formats(f"config.{SAMPLES['Auxot API key'][0]}") == ["Auxot API key"]


def _uuids():
    return [str(uuid.UUID(int=RNG.getrandbits(128), version=4)) for _ in range(50)]


def _digests():
    found = []
    for i in range(50):
        data = f"ordinary data {i}".encode()
        found += [hashlib.sha1(data).hexdigest(), hashlib.sha256(data).hexdigest(),  # noqa: S324
                  hashlib.md5(data).hexdigest(), hashlib.sha256(data).hexdigest().upper(),  # noqa: S324
                  f"sha256:{hashlib.sha256(data).hexdigest()}"]
    return found


def _base64_of_ordinary_data():
    texts = [json.dumps({"order": i, "customer": f"c-{i}", "items": [1, 2, 3]}).encode()
             for i in range(30)]
    texts += [f"Hello world, this is ordinary text number {i}.".encode() for i in range(30)]
    texts += [RNG.randbytes(RNG.randrange(16, 200)) for _ in range(200)]
    return [encode(data).decode() for data in texts
            for encode in (base64.b64encode, base64.urlsafe_b64encode)]


NEGATIVES = [
    # prose, and prose about credentials
    "Summarise the customer's ticket in two sentences and suggest a next step.",
    "Approve refunds under 500 EUR. Ask finance about anything larger.",
    "A risk-assessment and a task-oriented skeleton; sk-learn is a Python library.",
    "GitHub tokens start with ghp_ and AWS access key IDs with AKIA.",
    "xoxo-gossip-2024-edition-of-the-newsletter",
    "ASIAPACIFICSALESTEAM", "AKIAPROJECTNAMESPACE", "The -----BEGIN PUBLIC KEY----- line.",
    "Paste the key between the BEGIN PRIVATE KEY and END PRIVATE KEY lines.",
    # placeholders an admin writes in instructions
    "sk-your-api-key-here", "sk-...", "ghp_" + "x" * 36, "AKIA" + "X" * 16, "AKIA" + "0" * 16,
    "xoxb-your-bot-token", "glpat-xxxxxxxxxxxxxxxxxxxx", "AIza" + "x" * 35,
    "Bearer <token>", "sk_live_" + "x" * 24, "user.xxxxxxxxxxxx." + "x" * 49,
    # public values in credential-like formats
    "pk_live_" + _chars(ALNUM, 24), "pk_test_" + _chars(ALNUM, 24),
    "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
    "-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----",
    # JWT-shaped, but no JWT
    "eyJ" + _chars(URLSAFE, 30) + ".eyJ" + _chars(URLSAFE, 30) + "." + _chars(URLSAFE, 43),
    _b64url({"order": 1, "customer": "c-1"}),
    # expressions, identifiers, URLs without credentials
    "join(' ', ['Bearer', input.token])", "{order: input.order, note: 'a long constant'}",
    "input.items[?price > `100`].sku | sort(@)", "user.profile.settings.theme",
    "team.members[0].email", "https://api.example.com/v1/items?page=2&sort=desc",
    "https://github.com/example/repo/blob/main/README.md", "https://hooks.example.com/x/y",
    "https://www.googleapis.com/customsearch/v1?q=auxot",
    # chat webhooks: documentation placeholders, shown redacted, or without their token
    "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
    "https://hooks.slack.com/services/REDACTED/REDACTED/REDACTED",
    "https://hooks.slack.com/services/T0AB12CD3/B0EF45GH6/", "https://hooks.slack.com/",
    "https://discord.com/api/webhooks/123456789012345678/" + "x" * 68,
    "https://discord.com/api/REDACTED/REDACTED/REDACTED", "https://discord.com/channels/1/2",
    "Post to the team's Slack webhook (hooks.slack.com/services/...) from a url_secret.",
    # other ordinary values
    "ops@example.com", "+1 415 555 0100", "2024-06-11T10:20:30.123456+00:00",
    "DE89370400440532013000", "C024BE91L", "/var/lib/auxot/data/2024/06/11/export.csv",
    "com.example.android.app", "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789",
    *_uuids(), *_digests(), *_base64_of_ordinary_data(),
]


def test_ordinary_text_holds_no_credential():
    found = {text: credential_formats(text) for text in NEGATIVES}
    assert {text: kinds for text, kinds in found.items() if kinds} == {}
    assert all(credential_formats_redacted(text) == text for text in NEGATIVES)


def _letters_only_key_ids(n: int) -> list[str]:
    rng = random.Random(3)
    return [f"{rng.choice(['AKIA', 'ASIA'])}"
            f"{''.join(rng.choice(string.ascii_uppercase) for _ in range(16))}" for _ in range(n)]


def _runs_of_words(path: str) -> list[str]:
    """16-letter runs of a document's words written together in capitals, behind an AWS
    prefix: what an all-caps name or constant looks like (`ASIAPACIFICSALESTEAM`)."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / path).read_text()
    letters = "".join(re.findall(r"[A-Za-z]+", text)).upper()
    return [f"ASIA{letters[i:i + 16]}" for i in range(0, len(letters) - 16, 3)]


def test_most_aws_key_ids_of_capital_letters_only_are_found():
    """16 base32 characters without a digit are 3.6 % of key IDs ((26/32)**16): they were
    all missed while a digit was required. About 2 in 3 are found now (few vowels, or
    letter pairs English hardly has); the rest read too much like words to refuse."""
    ids = _letters_only_key_ids(2000)
    found = sum(credential_formats(key) == ["AWS access key ID"] for key in ids)
    assert 0.6 < found / len(ids) < 0.75
    assert credential_formats("AKIAQXZJWKPLMVRTBGHN") == ["AWS access key ID"]  # no vowel
    assert credential_formats("AKIAVBQWJXEAQTLOZRMF") == ["AWS access key ID"]  # VB QW JX..


@pytest.mark.parametrize("path", ["README.md", "BENCHMARKS.md"])
def test_words_written_together_in_capitals_are_rarely_taken_for_an_aws_key_id(path):
    runs = _runs_of_words(path)
    flagged = [run for run in runs if credential_formats(run)]
    assert len(runs) > 5000 and len(flagged) / len(runs) < 0.003, flagged[:20]


def test_aws_key_id_lookalikes_are_not_found():
    assert [text for text in (
        "ASIAPACIFICSALESTEAM", "AKIAPROJECTNAMESPACE", "ASIANMARKETSOVERVIEW",
        "ACCADEMIADELLACRUSCA", "ASIATICLIONSPROJECT", "ABIAPPROVALWORKFLOWS",
        "AKIA" + "X" * 16, "AKIA" + "AB" * 8,
        # 0, 1, 8 and 9 are not in AWS's alphabet (base32): no real ID holds one.
        "ASIA2019Q1REPORTSXYZ", f"AKIA{_chars(BASE32, 15)}0", f"AKIA{_chars(BASE32, 15)}8",
    ) if credential_formats(text)] == []
    assert credential_formats(f"AKIA{_chars(BASE32, 15)}7") == ["AWS access key ID"]


def test_only_strings_are_read():
    assert credential_formats(None) == [] and credential_formats(12345) == []
