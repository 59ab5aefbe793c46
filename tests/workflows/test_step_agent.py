"""The agent step: OpenAI-compatible calls, prompt templates, JSON mode, and a provider
concurrency limit that parks items (holding no worker) and starts them in arrival order."""

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from auxot.secrets import secret_create
from tests.conftest import make_workflow
from tests.fakeserver import Reply, chat
from workflows import presenters
from workflows.batch import work_item_process
from workflows.kinds import agent as agent_kind
from workflows.kinds.agent import render_template
from workflows.models import Provider, ProviderTicket, Step, WorkItem
from workflows.presenters import work_item_view
from workflows.providers import provider_position, provider_slot_acquire
from workflows.services import work_item_create


def _run(item):
    work_item_process(work_id=item.pk, drain_seconds=0)
    item.refresh_from_db()
    return item


@pytest.fixture
def provider(cast, fake_server):
    secret_create(org=cast.org_a, name="FAKE_AI_KEY", value="sk-test-123",
                  allowed_hosts=["127.0.0.1"])
    return Provider.objects.create(org=cast.org_a, name="openai-main", base_url=fake_server.url
                                   + "/v1", model="gpt-test", api_key_secret="FAKE_AI_KEY",
                                   concurrency_limit=1, timeout_seconds=5)


def _agent(cast, **config):
    return make_workflow(cast.org_a, [("agent", {"provider": "openai-main",
                                                 "prompt": "Summarize {{ input.text }}",
                                                 **config})], name="Summarize")


def test_agent_calls_provider_with_rendered_prompt(cast, provider, fake_server):
    wf = _agent(cast, system="You help {{ input.who }}.")
    item = _run(work_item_create(workflow=wf, input={"text": "the ticket", "who": "agents"}))
    assert item.status == "completed", item.error
    assert item.output["content"] == "echo: Summarize the ticket"
    [request] = fake_server.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["json"]["model"] == "gpt-test"
    assert request["json"]["messages"][0] == {"role": "system", "content": "You help agents."}
    assert request["headers"]["Authorization"] == "Bearer sk-test-123"
    assert request["headers"]["Idempotency-Key"] == f"{item.pk}:1"
    assert not ProviderTicket.objects.exists()  # the slot was given back


def test_json_mode_parses_the_answer(cast, provider, fake_server):
    fake_server.script = [Reply(200, chat('{"priority": "high"}'))]
    item = _run(work_item_create(workflow=_agent(cast, json_output=True), input={"text": "x"}))
    assert item.output["json"] == {"priority": "high"}
    assert fake_server.requests[0]["json"]["response_format"] == {"type": "json_object"}


def test_json_mode_with_non_json_answer_fails(cast, provider, fake_server):
    fake_server.script = [Reply(200, chat("sure! here you go"))]
    item = _run(work_item_create(workflow=_agent(cast, json_output=True), input={"text": "x"}))
    assert item.error["code"] == "bad_agent_output"


def test_rate_limited_provider_backs_off(cast, provider, fake_server):
    fake_server.script = [Reply(429, {"error": "slow down"}, {"Retry-After": "30"})]
    item = _run(work_item_create(workflow=_agent(cast), input={"text": "x"}))
    assert item.waiting_on == "backoff"
    assert "HTTP 429" in item.waiting_detail["reason"]
    assert not ProviderTicket.objects.exists()  # no slot held during the backoff


def test_saturated_provider_parks_items_in_arrival_order(cast, provider, fake_server,
                                                         settings):
    settings.AUXOT_PROVIDER_RECHECK_SECONDS = 60
    provider.concurrency_limit = 1
    provider.save()
    wf = _agent(cast)
    holder = work_item_create(workflow=wf, input={"text": "h"})
    now = timezone.now()
    assert provider_slot_acquire(provider=provider, work_id=holder.pk, now=now,
                                 lease_seconds=30).granted  # a call in flight elsewhere
    first = _run(work_item_create(workflow=wf, input={"text": "a"}))
    second = _run(work_item_create(workflow=wf, input={"text": "b"}))
    assert (first.waiting_on, second.waiting_on) == ("provider", "provider")
    assert first.lease_token == "" and fake_server.requests == []
    body = work_item_view(second).body
    assert body["waiting_on"]["kind"] == "provider"
    assert body["waiting_on"]["limit"] == 1 and body["waiting_on"]["ahead"] == 1
    assert body["diagnosis"] == ("Provider 'openai-main' is at its concurrency limit (1); "
                                 "1 item waits ahead of this one.")
    # The holder finishes: only the first in line is woken, and it runs.
    holder = _run(holder)
    assert holder.status == "completed"
    first.refresh_from_db()
    second.refresh_from_db()
    assert first.next_run_at <= timezone.now() < second.next_run_at
    assert _run(second).waiting_on == "provider"  # a later arrival does not jump the line
    assert _run(first).status == "completed"
    assert _run(second).status == "completed"


def test_dead_holders_slot_frees_when_its_lease_expires(cast, provider, time_machine):
    wf = _agent(cast)
    dead = work_item_create(workflow=wf, input={"text": "d"})
    assert provider_slot_acquire(provider=provider, work_id=dead.pk, now=timezone.now(),
                                 lease_seconds=5).granted
    waiting = _run(work_item_create(workflow=wf, input={"text": "w"}))
    assert waiting.waiting_on == "provider"
    # The holder's worker was SIGKILLed: nothing releases the slot, but its lease runs out.
    # Its item keeps its place at the front of the line for its next attempt.
    time_machine.move_to(timezone.now() + timedelta(seconds=60))
    assert _run(waiting).waiting_on == "provider"
    assert _run(dead).status == "completed"
    assert _run(waiting).status == "completed"


def test_template_is_data_only():
    data = {"input": {"a": {"b": [1, 2]}, "s": "x"}}
    assert render_template("{{ input.s }} {{input.a}}", data) == 'x {"b": [1, 2]}'
    assert render_template("{input.__class__}", data) == "{input.__class__}"


@pytest.mark.parametrize("config", [
    {"prompt": "x"},
    {"provider": "p", "prompt": ""},
    {"provider": "p", "prompt": "{{ input.[ }}"},
    {"provider": "p", "prompt": "x", "json_output": "yes"},
])
def test_bad_agent_config_is_refused_when_saved(cast, config):
    wf = make_workflow(cast.org_a, [])
    with pytest.raises(ValidationError):
        Step(workflow=wf, position=1, name="Ask", kind="agent", config=config).full_clean()


@pytest.mark.parametrize("json_output", [False, True], ids=["text", "json_output"])
def test_a_reply_quoting_the_api_key_is_stored_redacted(cast, provider, fake_server,
                                                        json_output):
    """A reply that quotes the key it was sent (a proxy's error page, a model told to repeat
    its headers) was stored as is, in a step output every viewer of the organization reads;
    the `http` step already cut its secrets from answers."""
    answer = '{"seen": "Bearer sk-test-123", "url": "https://x.test/?k=sk-test-123"}'
    fake_server.script = [Reply(200, chat(answer, model="echo sk-test-123"))]
    item = _run(work_item_create(workflow=_agent(cast, json_output=json_output),
                                 input={"text": "x"}))
    assert item.status == "completed", item.error
    assert fake_server.requests[0]["headers"]["Authorization"] == "Bearer sk-test-123"
    assert "sk-test-123" not in str(item.output) and "sk-test-123" not in str(
        [run.output for run in item.step_runs.all()])
    assert item.output["content"] == ('{"seen": "Bearer REDACTED", '
                                      '"url": "https://x.test/?k=REDACTED"}')
    assert item.output["model"] == "echo REDACTED"
    if json_output:
        assert item.output["json"] == {"seen": "Bearer REDACTED",
                                       "url": "https://x.test/?k=REDACTED"}


def test_an_item_further_back_in_a_providers_line_looks_again_less_often(
        cast, provider, monkeypatch, time_machine):
    """Every waiting item looked again every AUXOT_PROVIDER_RECHECK_SECONDS (2), each look
    counting the line: thousands of items behind a slow provider of limit 1 took every
    worker. Now once per turn ahead of it, at most every PROVIDER_RECHECK_MAX_SECONDS; the
    front still every 2 s, and a slot given back still wakes the next at once."""
    monkeypatch.setattr(agent_kind, "PROVIDER_RECHECK_MAX_SECONDS", 6)
    time_machine.move_to(timezone.now(), tick=False)
    wf = _agent(cast)
    holder = work_item_create(workflow=wf, input={"text": "h"})
    assert provider_slot_acquire(provider=provider, work_id=holder.pk, now=timezone.now(),
                                 lease_seconds=30).granted
    items = []
    for n in range(6):
        item = _run(work_item_create(workflow=wf, input={"text": str(n)}))
        # A look counts 3 places (6 s / 2 s turns of 1): further back it looks every 6 s
        # anyway, and says it counted no further.
        assert (item.waiting_on, item.waiting_detail["ahead"],
                item.waiting_detail.get("ahead_at_least", False)) == ("provider", min(n, 3),
                                                                      n > 3)
        items.append(item)
    assert [(i.next_run_at - timezone.now()).total_seconds() for i in items] == [
        2, 2, 4, 6, 6, 6]
    provider.concurrency_limit = 2  # two served per turn: half the turns ahead
    provider.save()
    assert agent_kind.provider_recheck_seconds({"ahead": 5, "limit": 2}) == 4
    assert _run(holder).status == "completed"
    woken = [WorkItem.objects.get(pk=i.pk).next_run_at <= timezone.now() for i in items]
    assert woken == [True, True, False, False, False, False]  # at once, by the slot given back


def _line(cast, provider, n):
    """A holder and `n` items waiting behind it, in arrival order (tickets made directly)."""
    wf = _agent(cast)
    holder = work_item_create(workflow=wf, input={"text": "h"})
    now = timezone.now()
    assert provider_slot_acquire(provider=provider, work_id=holder.pk, now=now,
                                 lease_seconds=30).granted
    waiting = [work_item_create(workflow=wf, input={"text": str(i)}) for i in range(n)]
    ProviderTicket.objects.bulk_create(
        ProviderTicket(provider=provider, work_item=item, arrived_at=now + timedelta(
            microseconds=i + 1)) for i, item in enumerate(waiting))
    return waiting


def _ticket_reads(queries) -> list[str]:
    """What each read of the ticket table may read: `own` (the item's ticket), a count over
    `LIMIT n` rows, `held` (live leases only, which the `ticket_lease` index finds), or
    else the whole line (its SQL)."""
    import re

    reads = []
    for query in queries:
        sql = query["sql"].lower()
        if "from \"workflows_providerticket\"" not in sql or not sql.lstrip().startswith(
                "select"):
            continue
        if re.search(r"where \"workflows_providerticket\".\"work_item_id\" = \S+"
                     r"( order by \S+ asc)? limit \d+$", sql):
            reads.append("own")  # the item's own ticket, by its unique work item
        elif limit := re.search(r"limit (\d+)\) subquery$", sql):
            # Bounded at this ticket's arrival too (an index range, not only an OR filter):
            # the front of a long line reads its few rows, not the line behind it.
            bounded = "\"workflows_providerticket\".\"arrived_at\" <= " in sql
            reads.append(f"LIMIT {limit.group(1)}" + ("" if bounded else " (no range end)"))
        elif "\"lease_until\" >" in sql and "granted_at\" is not null" in sql:
            reads.append("held")
        else:
            reads.append(sql)
    return reads


@pytest.mark.parametrize("waiting", [5, 40])
def test_a_look_reads_as_many_places_as_its_answer_needs_however_long_the_line(
        cast, provider, settings, waiting):
    """A look counted every earlier waiting ticket (a COUNT over the line) to decide a
    grant and time the next look: 50,000 items waiting, each look a scan of its position.
    Now a grant needs `limit` places and the timing tells apart no more than
    `provider_recheck_ahead_counted(limit)` (here 300 s / 100 s = 3 turns of 2 = 6)."""
    settings.AUXOT_PROVIDER_RECHECK_SECONDS = 100
    provider.concurrency_limit = 2
    provider.save()
    assert agent_kind.provider_recheck_ahead_counted(2) == 6
    line = _line(cast, provider, waiting)
    last = line[-1]
    with CaptureQueriesContext(connection) as looked:
        item = _run(last)
    assert item.waiting_on == "provider"
    assert item.waiting_detail["ahead"] == min(waiting - 1, 6)
    assert item.waiting_detail.get("ahead_at_least", False) is (waiting - 1 > 6)
    # The same spacing as a full count gives: 3 turns ahead or more, every 300 s.
    assert agent_kind.provider_recheck_seconds(item.waiting_detail) == (
        agent_kind.provider_recheck_seconds({"ahead": waiting - 1, "limit": 2}))
    reads = _ticket_reads(looked.captured_queries)
    assert "LIMIT 7" in reads and set(reads) <= {"own", "LIMIT 7", "held"}, reads
    # The front of the line is granted on an exact count of the few ahead of it.
    first = line[0]
    assert provider_slot_acquire(provider=provider, work_id=first.pk, now=timezone.now(),
                                 lease_seconds=30, ahead_counted=6).granted


def test_the_poll_counts_a_long_line_up_to_a_cap_and_says_at_least(cast, provider,
                                                                    monkeypatch):
    from workflows import providers

    monkeypatch.setattr(providers, "PROVIDER_AHEAD_SHOWN_MAX", 4)
    line = _line(cast, provider, 8)
    assert provider_position(work_id=line[4].pk) == {
        "provider": "openai-main", "limit": 1, "in_flight": 1, "ahead": 4}
    with CaptureQueriesContext(connection) as polled:
        assert provider_position(work_id=line[7].pk) == {
            "provider": "openai-main", "limit": 1, "in_flight": 1, "ahead": 4,
            "ahead_at_least": True}
    assert set(_ticket_reads(polled.captured_queries)) <= {"own", "LIMIT 5", "held"}
    item = _run(line[7])
    presenters.presenter_caches_clear()
    body = work_item_view(item).body
    assert body["waiting_on"]["ahead"] == 4 and body["waiting_on"]["ahead_at_least"] is True
    assert body["diagnosis"] == ("Provider 'openai-main' is at its concurrency limit (1); "
                                 "at least 4 items wait ahead of this one.")
