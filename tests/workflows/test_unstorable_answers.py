"""Answers from servers a tenant chose (an `http` step's receiver, an agent's provider) that
Python parses but a database column cannot hold: every one ends the step with its documented
outcome, and no attempt is left running or retried.

- bytes: decoded with the declared charset, else UTF-8; what does not decode, NUL and
  unpaired surrogates become U+FFFD;
- http: an answer that is not JSON the database stores exactly as sent is kept as `text`;
- agent: such a reply is `bad_agent_output`; so is, with `json_output`, a model answer that
  is not such JSON.
"""

import json

import pytest

from tests.conftest import make_workflow
from tests.fakeserver import Reply, chat
from workflows.batch import work_item_process
from workflows.kinds.http import MAX_TEXT
from workflows.models import Provider, ProviderTicket, StepRun
from workflows.services import work_item_create

# JSON text Python's json module parses but PostgreSQL cannot store (or Python cannot write
# back), each as it appears in an answer.
UNSTORABLE = {
    "nul-in-string": '"x\\u0000y"',
    "nul-in-key": '{"k\\u0000": 1}',
    "surrogate-in-string": '"a\\ud800b"',
    "low-surrogate-in-key": '{"\\udfff": 1}',
    "nan": "NaN",
    "infinity": "Infinity",
    "minus-infinity": "-Infinity",
    "out-of-range": "1e999",
    "negative-out-of-range": "-1e999",
    "long-out-of-range": "1" + "0" * 400 + ".5",  # a float's range, not a digit count
    "huge-digits": "9" * 5000,
    "deep-nesting": "[" * 100_000 + "]" * 100_000,
}
CASES = list(UNSTORABLE.items())
IDS = list(UNSTORABLE)


def _run(item):
    work_item_process(work_id=item.pk, drain_seconds=0)
    item.refresh_from_db()
    return item


def _settled(item, status: str) -> None:
    """Finished once and for all: no lease held, no attempt left running or waiting."""
    assert item.status == status, item.error
    assert item.lease_token == ""
    assert set(StepRun.objects.filter(work_item=item).values_list("status", flat=True)) == {
        status}


# --- http step ---------------------------------------------------------------------------

def _http_item(cast, fake_server, reply: Reply):
    fake_server.script = [reply]
    workflow = make_workflow(cast.org_a, [("http", {"url": f"{fake_server.url}/hook",
                                                    "response_headers": ["x-note"]})])
    return _run(work_item_create(workflow=workflow, input={}))


@pytest.mark.parametrize(("fragment"), [value for _, value in CASES], ids=IDS)
def test_http_json_answer_that_cannot_be_stored_is_kept_as_text(cast, fake_server, fragment):
    answer = '{"a": ' + fragment + "}"
    item = _http_item(cast, fake_server, Reply(200, answer.encode(),
                                               {"Content-Type": "application/json"}))
    _settled(item, "completed")
    assert item.output["text"] == answer[:MAX_TEXT]  # escapes are plain text: nothing lost
    assert "json" not in item.output


@pytest.mark.parametrize(("raw", "content_type", "body"), [
    (b"a\x00b", "text/plain", {"text": "a\ufffdb"}),
    (b'{"a": "x\x00y"}', "application/json", {"json": {"a": "x\ufffdy"}}),
    (b"a\xffb\xc3", "text/plain", {"text": "a\ufffdb\ufffd"}),  # no charset: UTF-8
    (b'{"a": "\xff"}', "application/json", {"json": {"a": "\ufffd"}}),
    (b"a\xffb", "application/octet-stream", {"text": "a\ufffdb"}),
    (b"a+2AA-b", "text/plain; charset=utf-7", {"text": "a\ufffdb"}),  # a lone surrogate
    (b'{"a": "+2AA-"}', "application/json; charset=utf-7", {"json": {"a": "\ufffd"}}),
    (b"a\x00b", "text/plain; charset=no-such-charset", {"text": "a\ufffdb"}),
    (b'\xef\xbb\xbf{"a": 1}', "application/json", {"json": {"a": 1}}),
], ids=["nul", "nul-in-json", "invalid-utf8", "invalid-utf8-in-json", "invalid-utf8-binary",
        "utf7-surrogate", "utf7-surrogate-in-json", "unknown-charset", "byte-order-mark"])
def test_http_answer_bytes_are_decoded_with_replacement_characters(cast, fake_server, raw,
                                                                   content_type, body):
    item = _http_item(cast, fake_server, Reply(200, raw, {"Content-Type": content_type}))
    _settled(item, "completed")
    assert {k: v for k, v in item.output.items() if k in ("json", "text")} == body


def test_http_answer_header_with_nul_is_stored_with_a_replacement_character(cast,
                                                                           fake_server):
    item = _http_item(cast, fake_server, Reply(200, {"ok": True}, {"X-Note": "a\x00b"}))
    _settled(item, "completed")
    assert item.output["headers"]["x-note"] == "a\ufffdb"
    assert item.output["json"] == {"ok": True}


def test_http_storable_json_stays_json(cast, fake_server):
    answer = {"name": "Zoë \ufffd 😀", "n": -0.5, "big": 10 ** 999, "deep": [[[[1]]]]}
    item = _http_item(cast, fake_server, Reply(200, answer))
    _settled(item, "completed")
    assert item.output["json"] == answer


# --- agent step --------------------------------------------------------------------------

@pytest.fixture
def provider(cast, fake_server):
    return Provider.objects.create(org=cast.org_a, name="ai", base_url=fake_server.url + "/v1",
                                   model="m", concurrency_limit=1, timeout_seconds=5)


def _agent_item(cast, fake_server, reply: Reply, **config):
    fake_server.script = [reply]
    workflow = make_workflow(cast.org_a, [("agent", {"provider": "ai", "prompt": "Hi",
                                                     **config})])
    item = _run(work_item_create(workflow=workflow, input={}))
    assert not ProviderTicket.objects.exists()  # the provider's slot was given back
    return item


def _reply_with(fragment: str) -> bytes:
    """A chat-completions reply whose `usage` (stored in the step's output) holds `fragment`."""
    envelope = json.dumps(chat("fine")).replace('"prompt_tokens": 3', '"prompt_tokens": '
                                                + fragment)
    assert fragment in envelope
    return envelope.encode()


@pytest.mark.parametrize("fragment", [value for _, value in CASES], ids=IDS)
def test_agent_reply_that_cannot_be_stored_is_bad_agent_output(cast, fake_server, provider,
                                                               fragment):
    item = _agent_item(cast, fake_server, Reply(200, _reply_with(fragment),
                                                {"Content-Type": "application/json"}))
    _settled(item, "failed")
    assert item.error["code"] == "bad_agent_output"
    assert "JSON that can be stored" in item.error["message"]


@pytest.mark.parametrize("fragment", [value for _, value in CASES], ids=IDS)
def test_agent_json_output_that_cannot_be_stored_is_bad_agent_output(cast, fake_server,
                                                                     provider, fragment):
    item = _agent_item(cast, fake_server, Reply(200, chat('{"a": ' + fragment + "}")),
                       json_output=True)
    _settled(item, "failed")
    assert item.error["code"] == "bad_agent_output"
    assert "json_output" in item.error["message"]


@pytest.mark.parametrize(("raw", "content_type"), [
    (b'{"choices": [{"message": {"content": "a\xffb"}}]}', "application/json"),
    (b'{"choices": [{"message": {"content": "a\x00b"}}]}', "application/json"),
    (b'{"choices": [{"message": {"content": "a+2AA-b"}}]}', "application/json; charset=utf-7"),
], ids=["invalid-utf8", "nul", "utf7-surrogate"])
def test_agent_reply_bytes_are_decoded_with_replacement_characters(cast, fake_server, provider,
                                                                   raw, content_type):
    item = _agent_item(cast, fake_server, Reply(200, raw, {"Content-Type": content_type}))
    _settled(item, "completed")
    assert item.output["content"] == "a\ufffdb"
