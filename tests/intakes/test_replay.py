"""Replaying failed work over the API: resume from the failed step without repeating side
effects, or start over; the original stays failed; roles, 409s and Idempotency-Key."""

import pytest
from django.db import connection

from apikeys.services import apikey_issue
from auxot.models import AuditEvent, Membership, Team
from intakes.services import intake_create
from tests.conftest import bearer, make_workflow, trigger
from tests.fakeserver import Reply
from workflows.batch import work_item_process
from workflows.models import Step, StepRun, WorkItem, step_key_name
from workflows.replay import work_item_replay
from workflows.services import work_item_cancel


def _three_calls(cast, server, team=None, name="Three calls"):
    """Three http steps against the receiver (/one, /two, /three), one attempt each."""
    wf = make_workflow(cast.org_a, [
        ("http", {"method": "POST", "url": f"{server.url}/{path}", "body": "input"})
        for path in ("one", "two", "three")], name=name)
    Step.objects.filter(workflow=wf).update(max_attempts=1)
    return intake_create(org=cast.org_a, workflow=wf, name=name, team=team)


def _run(work_id) -> WorkItem:
    work_item_process(work_id=work_id, drain_seconds=0)
    return WorkItem.objects.get(pk=work_id)


def _failed_at_two(api, cast, server, token, intake=None) -> tuple:
    intake = intake or _three_calls(cast, server)
    server.script = [Reply(200), Reply(500, {"down": True})]
    work_id = trigger(api, intake.pk, token, body={"order": 7}).json()["work_id"]
    item = _run(work_id)
    assert item.status == "failed"
    assert item.error["step_position"] == 2
    return intake, item


def _replay(api, intake, work_id, token, body=None, **extra):
    return api.post(f"/v1/intake/{intake.pk}/work/{work_id}/replay",
                    data=body if body is not None else {}, format="json", **bearer(token),
                    **extra)


def _poll(api, intake, work_id, token) -> dict:
    return api.get(f"/v1/intake/{intake.pk}/work/{work_id}", **bearer(token)).json()


def _paths(server) -> list[str]:
    return [request["path"] for request in server.requests]


def test_replay_from_failed_step_skips_done_steps_and_reuses_the_idempotency_key(
        cast, api, member_token, fake_server):
    intake, original = _failed_at_two(api, cast, fake_server, member_token)
    first_key = fake_server.requests[1]["headers"]["Idempotency-Key"]
    fake_server.requests.clear()  # the receiver is healed: it answers 200 from now on

    response = _replay(api, intake, original.pk, member_token, {"from": "failed_step"})
    assert response.status_code == 202
    new_id = response.json()["work_id"]
    assert response["Location"] == response.json()["status_url"]
    assert response.json()["status"] == "pending"
    new = _run(new_id)

    assert new.status == "completed"
    assert _paths(fake_server) == ["/two", "/three"]  # step 1 not run again, step 2 once
    assert fake_server.requests[0]["headers"]["Idempotency-Key"] == first_key
    assert fake_server.requests[1]["headers"]["Idempotency-Key"] == f"{new.pk}:3"
    original.refresh_from_db()
    assert original.status == "failed"
    assert _poll(api, intake, original.pk, member_token)["replayed_by"] == [new_id]
    body = _poll(api, intake, new_id, member_token)
    assert body["replay_of"] == str(original.pk)
    assert body["resumed_from_step"] == 2
    step1 = body["steps"][0]
    assert step1["status"] == "carried"
    assert step1["attempts"] == 0
    assert step1["carried_from"]["work_id"] == str(original.pk)
    assert step1["carried_from"]["attempt"] == 1
    assert step1["carried_from"]["url"].endswith(f"/v1/intake/{intake.pk}/work/{original.pk}")
    assert [s["status"] for s in body["steps"][1:]] == ["completed", "completed"]


def test_carried_output_feeds_the_next_step(cast, api, member_token, fake_server):
    wf = make_workflow(cast.org_a, [
        ("transform", {"expression": "{n: input.n}"}),
        ("http", {"method": "POST", "url": f"{fake_server.url}/two", "body": "previous"})])
    Step.objects.filter(workflow=wf).update(max_attempts=1)
    intake = intake_create(org=cast.org_a, workflow=wf, name="feed")
    fake_server.script = [Reply(502)]
    work_id = trigger(api, intake.pk, member_token, body={"n": 41}).json()["work_id"]
    assert _run(work_id).status == "failed"
    new_id = _replay(api, intake, work_id, member_token).json()["work_id"]
    assert _run(new_id).status == "completed"
    assert fake_server.requests[-1]["json"] == {"n": 41}


def test_start_over_runs_every_step_with_new_keys(cast, api, member_token, fake_server):
    intake, original = _failed_at_two(api, cast, fake_server, member_token)
    old_keys = {r["headers"]["Idempotency-Key"] for r in fake_server.requests}
    fake_server.requests.clear()
    response = _replay(api, intake, original.pk, member_token, {"from": "start"})
    new = _run(response.json()["work_id"])
    assert new.status == "completed"
    assert _paths(fake_server) == ["/one", "/two", "/three"]
    new_keys = {r["headers"]["Idempotency-Key"] for r in fake_server.requests}
    assert new_keys == {f"{new.pk}:{n}" for n in (1, 2, 3)}
    assert not new_keys & old_keys
    assert _poll(api, intake, new.pk, member_token)["resumed_from_step"] == 1


def test_replay_of_a_replay_keeps_the_chain_and_the_first_key(
        cast, api, member_token, fake_server):
    intake, original = _failed_at_two(api, cast, fake_server, member_token)
    first_key = fake_server.requests[1]["headers"]["Idempotency-Key"]
    fake_server.script = [Reply(500)]  # still down for the first replay
    second = _run(_replay(api, intake, original.pk, member_token).json()["work_id"])
    assert second.status == "failed"
    fake_server.requests.clear()
    third_id = _replay(api, intake, second.pk, member_token).json()["work_id"]
    third = _run(third_id)
    assert third.status == "completed"
    assert _paths(fake_server) == ["/two", "/three"]
    assert fake_server.requests[0]["headers"]["Idempotency-Key"] == first_key
    body = _poll(api, intake, third_id, member_token)
    assert body["replay_of"] == str(second.pk)
    # The carried step still points at the attempt that really ran, in the first item.
    assert body["steps"][0]["carried_from"]["work_id"] == str(original.pk)
    assert _poll(api, intake, second.pk, member_token)["replayed_by"] == [third_id]


def test_replay_is_audited_with_who_and_from_which_step(cast, api, member_token, fake_server):
    intake, original = _failed_at_two(api, cast, fake_server, member_token)
    new_id = _replay(api, intake, original.pk, member_token).json()["work_id"]
    event = AuditEvent.objects.get(event="work_item.replayed")
    assert event.object_id == str(original.pk)
    assert event.actor_user == cast.member_a
    assert event.actor_key_lookup
    assert event.extra["from"] == "failed_step"
    assert event.extra["resumed_from_step"] == 2
    assert event.extra["carried_steps"] == [1]
    assert event.extra["replay_work_id"] == new_id
    assert AuditEvent.objects.filter(event="work_item.created", object_id=new_id).exists()


@pytest.mark.parametrize("status", ["pending", "running", "completed"])
def test_only_failed_items_replay_others_get_409(cast, api, member_token, fake_server, status):
    intake = _three_calls(cast, fake_server)
    work_id = trigger(api, intake.pk, member_token).json()["work_id"]
    WorkItem.objects.filter(pk=work_id).update(status=status)
    response = _replay(api, intake, work_id, member_token)
    assert response.status_code == 409
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["code"] == "not_replayable"
    assert status in response.json()["detail"]
    assert WorkItem.objects.count() == 1


def test_canceled_item_is_not_replayed(cast, api, member_token, fake_server):
    intake = _three_calls(cast, fake_server)
    work_id = trigger(api, intake.pk, member_token).json()["work_id"]
    work_item_cancel(item=WorkItem.objects.get(pk=work_id), user=cast.member_a)
    response = _replay(api, intake, work_id, member_token)
    assert response.status_code == 409
    assert "canceled on purpose" in response.json()["detail"]
    assert WorkItem.objects.count() == 1


@pytest.mark.parametrize("body, pointer", [({"from": "middle"}, "/from"), ({"from": 2}, "/from"),
                                           ({"reason": "x" * 501}, "/reason"),
                                           ({"reason": 7}, "/reason")])
def test_bad_replay_body_is_400_and_creates_nothing(cast, api, member_token, fake_server,
                                                    body, pointer):
    intake, original = _failed_at_two(api, cast, fake_server, member_token)
    response = _replay(api, intake, original.pk, member_token, body)
    assert response.status_code == 400
    assert response.json()["errors"][0]["pointer"] == pointer
    assert WorkItem.objects.count() == 1


def test_no_body_means_from_failed_step(cast, api, member_token, fake_server):
    intake, original = _failed_at_two(api, cast, fake_server, member_token)
    response = api.post(f"/v1/intake/{intake.pk}/work/{original.pk}/replay",
                        **bearer(member_token))
    assert response.status_code == 202
    assert WorkItem.objects.get(pk=response.json()["work_id"]).resumed_from_step == 2


def test_same_idempotency_key_answers_the_first_replay(cast, api, member_token, fake_server):
    intake, original = _failed_at_two(api, cast, fake_server, member_token)
    first = _replay(api, intake, original.pk, member_token, HTTP_IDEMPOTENCY_KEY="r-1")
    again = _replay(api, intake, original.pk, member_token, HTTP_IDEMPOTENCY_KEY="r-1")
    assert first.status_code == again.status_code == 202
    assert again.json()["work_id"] == first.json()["work_id"]
    assert again["Idempotent-Replayed"] == "true"
    assert WorkItem.objects.filter(replay_of=original).count() == 1
    other = _replay(api, intake, original.pk, member_token, {"from": "start"},
                    HTTP_IDEMPOTENCY_KEY="r-1")
    assert other.status_code == 422
    assert other.json()["code"] == "idempotency_key_reused"
    fresh = _replay(api, intake, original.pk, member_token, HTTP_IDEMPOTENCY_KEY="r-2")
    assert fresh.status_code == 409  # a new key is a new request: it would be a second replay
    assert fresh.json()["code"] == "not_replayable"
    assert WorkItem.objects.filter(replay_of=original).count() == 1


def test_the_reason_is_audited_and_part_of_the_idempotent_request(cast, api, member_token,
                                                                  fake_server):
    intake, original = _failed_at_two(api, cast, fake_server, member_token)
    why = {"reason": "the receiver was down; fixed at 11:05"}
    first = _replay(api, intake, original.pk, member_token, why, HTTP_IDEMPOTENCY_KEY="r-1")
    assert first.status_code == 202
    again = _replay(api, intake, original.pk, member_token, why, HTTP_IDEMPOTENCY_KEY="r-1")
    assert again["Idempotent-Replayed"] == "true"
    other = _replay(api, intake, original.pk, member_token, {"reason": "another"},
                    HTTP_IDEMPOTENCY_KEY="r-1")
    assert other.status_code == 422
    event = AuditEvent.objects.get(event="work_item.replayed")
    assert (event.actor_user, event.extra["reason"]) == (cast.member_a, why["reason"])


def test_a_failed_item_replays_once_then_its_replay_carries_on(cast, api, member_token,
                                                              fake_server):
    """A second replay of the same item would run the failed step and every later one
    again, under new keys for the later ones: refused, naming the replay to take forward."""
    intake, original = _failed_at_two(api, cast, fake_server, member_token)
    fake_server.script = [Reply(500, {"down": True})]
    first = _replay(api, intake, original.pk, member_token)
    assert first.status_code == 202
    replay = _run(first.json()["work_id"])
    assert replay.status == "failed"
    for body in ({}, {"from": "start"}):
        again = _replay(api, intake, original.pk, member_token, body)
        assert again.status_code == 409, again.content
        assert again.json()["code"] == "not_replayable"
        assert str(replay.pk) in again.json()["detail"]
    sent = len(fake_server.requests)
    fake_server.script = [Reply(200), Reply(200)]
    onward = _replay(api, intake, replay.pk, member_token)
    assert onward.status_code == 202
    assert _run(onward.json()["work_id"]).status == "completed"
    assert _paths(fake_server)[sent:] == ["/two", "/three"]
    assert WorkItem.objects.filter(replay_of=original).count() == 1
    assert _poll(api, intake, original.pk, member_token)["replayed_by"] == [str(replay.pk)]


@pytest.mark.django_db(transaction=True)
def test_two_replays_at_once_make_one_new_item(cast, fake_server, member_token):
    """Two callers (or two clicks) replaying the same item at the same instant: the
    original's row serializes them, and the second is asked again and refused."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from rest_framework.test import APIClient

    from auxot.errors import ApplicationError

    _, original = _failed_at_two(APIClient(), cast, fake_server, member_token)
    for _round in range(4):
        WorkItem.objects.filter(replay_of=original).delete()
        barrier = threading.Barrier(2)

        def replay(barrier=barrier):
            barrier.wait()
            try:
                return work_item_replay(item=WorkItem.objects.get(pk=original.pk),
                                        user=cast.member_a).pk
            except ApplicationError as exc:
                return exc.code
            finally:
                connection.close()

        with ThreadPoolExecutor(max_workers=2) as pool:
            outcomes = list(pool.map(lambda _: replay(), range(2)))
        assert sorted(map(str, outcomes))[1] == "not_replayable", outcomes
        assert WorkItem.objects.filter(replay_of=original).count() == 1


@pytest.mark.django_db(transaction=True)
def test_the_same_replay_request_sent_twice_at_once_answers_one_replay(cast, fake_server,
                                                                       member_token):
    """A client retrying with its Idempotency-Key while the first is still in flight: the
    second waits on the original's row, then answers the first replay (not a 409)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from rest_framework.test import APIClient

    from apikeys.models import ApiKey
    from intakes.replay import intake_work_replay

    intake, original = _failed_at_two(APIClient(), cast, fake_server, member_token)
    key = ApiKey.objects.select_related("user", "org").get(user=cast.member_a)
    for attempt in range(4):
        WorkItem.objects.filter(replay_of=original).delete()
        barrier = threading.Barrier(2)

        def replay(_, barrier=barrier, attempt=attempt):
            barrier.wait()
            try:
                return intake_work_replay(intake=intake, key=key, item=original,
                                          start_over=False, ip=None,
                                          idempotency_key=f"same-{attempt}").item.pk
            finally:
                connection.close()

        with ThreadPoolExecutor(max_workers=2) as pool:
            first, second = pool.map(replay, range(2))
        assert first == second
        assert WorkItem.objects.filter(replay_of=original).count() == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql",
                    reason="row locks are PostgreSQL's; SQLite serializes every writer")
def test_a_replay_in_flight_does_not_hold_its_workflows_triggers(cast, fake_server,
                                                                 member_token, monkeypatch):
    """The replay locks the original's row, not its workflow's: a trigger of the same
    workflow (which checks the workflow row's key) goes through meanwhile."""
    import threading

    from django.db import transaction
    from rest_framework.test import APIClient

    from workflows import replay as replay_module
    from workflows.services import work_item_create

    intake, original = _failed_at_two(APIClient(), cast, fake_server, member_token)
    inside, release = threading.Event(), threading.Event()
    real = replay_module._replay_create

    def held(**kwargs):
        inside.set()
        release.wait(10)
        return real(**kwargs)

    monkeypatch.setattr(replay_module, "_replay_create", held)

    def replay():
        try:
            work_item_replay(item=original, user=cast.member_a)
        finally:
            connection.close()

    thread = threading.Thread(target=replay)
    thread.start()
    try:
        assert inside.wait(10)
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL lock_timeout = '2s'")
            work_item_create(workflow=intake.workflow, intake=intake, input={"n": 2})
    finally:
        release.set()
        thread.join(10)
    assert WorkItem.objects.filter(replay_of=original).count() == 1


def test_an_item_emptied_by_retention_does_not_replay(cast, api, member_token, fake_server):
    """Retention removed its input and outputs: a replay would send nulls downstream under
    the original's Idempotency-Key. 409, and the Failed work view leaves it out."""
    from datetime import timedelta

    from django.utils import timezone

    from workflows.replay import failed_unreplayed, replayable
    from workflows.retention import work_items_redact

    intake, original = _failed_at_two(api, cast, fake_server, member_token)
    work_items_redact(ids=[original.pk], now=timezone.now())  # what retention_run does
    original.refresh_from_db()
    assert original.redacted_at is not None and original.input is None
    sent = len(fake_server.requests)
    refused = _replay(api, intake, original.pk, member_token)
    assert refused.status_code == 409
    assert "retention" in refused.json()["detail"]
    assert len(fake_server.requests) == sent
    assert not WorkItem.objects.filter(replay_of=original).exists()
    long_ago = timezone.now() - timedelta(days=3650)
    assert not failed_unreplayed(org_ids=None, since=long_ago).filter(pk=original.pk).exists()
    assert not replayable(WorkItem.objects.filter(pk=original.pk)).exists()


def test_callback_of_the_replay_goes_to_the_original_url_with_replay_of(
        cast, api, member_token, fake_server, receiver):
    from intakes.callbacks import callback_delivery_create, callback_delivery_process

    intake = _three_calls(cast, fake_server)
    fake_server.script = [Reply(200), Reply(500)]
    receiver.expect_request("/per-request").respond_with_data("thanks")
    url = receiver.url_for("/per-request")
    work_id = trigger(api, intake.pk, member_token, HTTP_AUXOT_CALLBACK_URL=url).json()["work_id"]
    assert _run(work_id).status == "failed"
    new = _run(_replay(api, intake, work_id, member_token).json()["work_id"])
    assert new.callback_url == url
    delivery = callback_delivery_create(work_item=new)
    assert delivery.url == url
    callback_delivery_process(delivery_id=delivery.pk)
    [(request, _)] = receiver.log
    body = request.get_json()
    assert body["work_id"] == str(new.pk)
    assert body["replay_of"] == work_id
    assert body["status"] == "completed"


# --- who may replay -------------------------------------------------------------------------
def _team_intake(cast, server):
    return _three_calls(cast, server, team=cast.team_a, name="Team calls")


@pytest.mark.parametrize("who, expected", [
    ("admin", 202), ("member", 202), ("team_key", 202), ("auditor", 403), ("outsider", 404),
    ("other_team_key", 404), ("member_outside_team", 404)])
def test_who_may_replay_on_a_team_intake(cast, api, fake_server, who, expected):
    intake = _team_intake(cast, fake_server)
    Membership.objects.get(user=cast.member_a).teams.add(cast.team_a)
    Membership.objects.get(user=cast.admin_a).teams.add(cast.team_a)
    Membership.objects.get(user=cast.auditor_a).teams.add(cast.team_a)
    team_token = apikey_issue(org=cast.org_a, label="team", team=cast.team_a).token
    _, original = _failed_at_two(api, cast, fake_server, team_token, intake=intake)
    other_team = Team.objects.create(org=cast.org_a, name="Other")
    outsider_member = apikey_issue(org=cast.org_a, label="x", user=cast.member_a).token
    tokens = {
        "admin": lambda: apikey_issue(org=cast.org_a, label="a", user=cast.admin_a).token,
        "member": lambda: outsider_member,
        "team_key": lambda: team_token,
        "auditor": lambda: apikey_issue(org=cast.org_a, label="au", user=cast.auditor_a).token,
        "outsider": lambda: apikey_issue(org=cast.org_b, label="o", user=cast.outsider_b).token,
        "other_team_key": lambda: apikey_issue(org=cast.org_a, label="t2",
                                               team=other_team).token,
    }
    if who == "member_outside_team":
        Membership.objects.get(user=cast.member_a).teams.remove(cast.team_a)
        token = outsider_member
    else:
        token = tokens[who]()
    response = _replay(api, intake, original.pk, token)
    assert response.status_code == expected, response.content
    assert WorkItem.objects.filter(replay_of=original).count() == (1 if expected == 202 else 0)


def test_auditor_gets_403_and_outsider_404_on_an_org_intake(cast, api, member_token,
                                                            fake_server):
    intake, original = _failed_at_two(api, cast, fake_server, member_token)
    auditor = apikey_issue(org=cast.org_a, label="au", user=cast.auditor_a).token
    outsider = apikey_issue(org=cast.org_b, label="o", user=cast.outsider_b).token
    assert _replay(api, intake, original.pk, auditor).status_code == 403
    missing = _replay(api, intake, original.pk, outsider)
    unknown = _replay(api, intake, "00000000-0000-0000-0000-000000000000", member_token)
    assert missing.status_code == unknown.status_code == 404
    assert missing.content == unknown.content
    assert not WorkItem.objects.filter(replay_of=original).exists()


def test_service_refuses_an_auditor_and_another_orgs_user(cast, fake_server, api, member_token):
    from auxot.errors import PermissionDeniedError

    _, original = _failed_at_two(api, cast, fake_server, member_token)
    for user in (cast.auditor_a, cast.outsider_b):
        with pytest.raises(PermissionDeniedError):
            work_item_replay(item=original, user=user)
    assert not WorkItem.objects.filter(replay_of=original).exists()


def test_workflow_edited_since_carries_the_completed_steps_where_they_stand(
        cast, api, member_token, fake_server):
    intake, original = _failed_at_two(api, cast, fake_server, member_token)
    # A step added before the others since the failure never ran for this item: it runs;
    # the step that completed is carried (the engine passes it), the failed one keeps its key.
    added = Step.objects.create(workflow=intake.workflow, position=0, name="added",
                                kind="transform", config={"expression": "input"})
    one, two, _three = Step.objects.filter(workflow=intake.workflow, position__gt=0)
    new = work_item_replay(item=original, user=cast.member_a)
    assert new.resumed_from_step == added.position
    assert new.current_step == 0
    assert list(StepRun.objects.filter(work_item=new).values_list("step", "status")) == [
        (one.pk, "carried")]
    assert new.step_keys == {step_key_name(two): f"{original.pk}:2"}
    audit = AuditEvent.objects.get(event="work_item.replayed", object_id=str(original.pk))
    assert audit.extra["carried_steps"] == [1]


def test_openapi_documents_the_replay_and_the_new_fields(client):
    response = client.get("/v1/schema", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    schema = response.json()
    operation = schema["paths"]["/v1/intake/{intake_id}/work/{work_id}/replay"]["post"]
    assert operation["operationId"] == "work_item_replay"
    assert {"202", "403", "404", "409"} <= set(operation["responses"])
    ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    body = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]
    enum_ref = body["properties"]["from"]["allOf"][0]["$ref"].rsplit("/", 1)[1]
    assert schema["components"]["schemas"][enum_ref]["enum"] == ["failed_step", "start"]
    assert body["properties"]["from"]["default"] == "failed_step"
    assert body["properties"]["reason"]["maxLength"] == 500
    work_item = schema["components"]["schemas"]["WorkItem"]["properties"]
    assert {"replay_of", "resumed_from_step", "replayed_by"} <= set(work_item)
    assert "Idempotency-Key" in {p["name"] for p in operation["parameters"]}


def test_replays_count_against_the_rate_limit(cast, api, member_token, fake_server,
                                              one_rate_limit_window):
    intake, original = _failed_at_two(api, cast, fake_server, member_token)
    intake.rate_limit_per_window = 2  # the trigger above used one
    intake.save()
    assert _replay(api, intake, original.pk, member_token).status_code == 202
    refused = _replay(api, intake, original.pk, member_token)
    assert refused.status_code == 429
    assert refused.json()["code"] == "rate_limited"
    assert WorkItem.objects.filter(replay_of=original).count() == 1


def test_a_replay_of_an_item_retention_deletes_meanwhile_is_a_409_not_a_500(
        cast, api, member_token, fake_server, monkeypatch):
    """Retention may delete a failed item between the replay's first look and the lock on
    its row (the replay prepares its plan in between): the replay finds no row to lock and
    says why, and nothing is created or counted."""
    import workflows.replay as replay_module

    intake, original = _failed_at_two(api, cast, fake_server, member_token)
    real_plan = replay_module.replay_plan

    def plan_then_retention_deletes(**kwargs):
        plan = real_plan(**kwargs)
        WorkItem.objects.filter(pk=original.pk).delete()
        return plan

    monkeypatch.setattr(replay_module, "replay_plan", plan_then_retention_deletes)
    events = AuditEvent.objects.filter(event="work_item.replayed").count()
    response = _replay(api, intake, original.pk, member_token)
    assert response.status_code == 409, response.content
    problem = response.json()
    assert problem["code"] == "not_replayable"
    assert "deleted by the retention policy" in problem["detail"]
    # (the simulated deletion ran in the replay's own transaction, so it rolled back too)
    assert not WorkItem.objects.filter(replay_of_id=original.pk).exists()
    assert AuditEvent.objects.filter(event="work_item.replayed").count() == events
