"""An edit of a provider that would make saved agent steps invalid is refused at save.

An agent step is checked, when saved, against its organization's active providers'
timeouts (`Step.run_limits`): a provider that waits longer than the step's timeout is
refused, since the step's call is cut at its own timeout. Raising the provider's timeout
afterwards (or reactivating it, renaming another to its name, adding one by that name) made
the saved step invalid without a word. The fields `Step.run_limits` reads of a provider are
found in its source: each is driven here (or said why not), so a new one fails until it is.
"""

import inspect
import re

import pytest
from django.core.exceptions import ValidationError

from tests.conftest import make_workflow
from workflows.models import PROVIDER_FIELDS_STEPS_READ, Provider, Step

AGENT = {"provider": "ai", "prompt": "Summarize {{ input.text }}"}


def _agent_step(cast, timeout: int = 30) -> Step:
    workflow = make_workflow(cast.org_a, [("agent", AGENT)], name="Summaries")
    Step.objects.filter(workflow=workflow).update(timeout_seconds=timeout)
    return Step.objects.get(workflow=workflow)


def _provider(cast, **fields) -> Provider:
    return Provider.objects.create(**{"org": cast.org_a, "name": "ai", "model": "m",
                                      "base_url": "https://ai.example/v1",
                                      "timeout_seconds": 30, **fields})


def _refused(provider: Provider) -> str:
    with pytest.raises(ValidationError) as refused:
        provider.full_clean()
    return " ".join(refused.value.message_dict["timeout_seconds"])


def test_the_fields_steps_read_are_found_in_run_limits():
    source = inspect.getsource(Step.run_limits)
    fields = {f.name for f in Provider._meta.fields}
    read = {word.removesuffix("_id") for word in re.findall(r"\w+", source)
            if word.removesuffix("_id") in fields} - {"id"}
    assert "timeout_seconds" in read  # the scan still sees what it reads
    assert read == set(PROVIDER_FIELDS_STEPS_READ)


# Each field: (state before, the edit that would break a saved step with a 30 s timeout).
EDITS = {
    "timeout_seconds": ({}, {"timeout_seconds": 60}),
    "active": ({"active": False, "timeout_seconds": 60}, {"active": True}),
    "name": ({"name": "other", "timeout_seconds": 60}, {"name": "ai"}),
}
NOT_DRIVEN = {"org": "fixed once set: the admin shows it read-only on change "
                     "(tests/admin/test_admin_org_fixed.py)"}


def test_every_field_steps_read_is_driven():
    assert set(EDITS) | set(NOT_DRIVEN) == set(PROVIDER_FIELDS_STEPS_READ)


@pytest.mark.django_db
@pytest.mark.parametrize("field", sorted(EDITS))
def test_an_edit_that_would_invalidate_a_saved_step_is_refused_naming_it(field, cast):
    before, edit = EDITS[field]
    step = _agent_step(cast)
    provider = _provider(cast, **before)
    for name, value in edit.items():
        setattr(provider, name, value)
    said = _refused(provider)
    assert "“Summaries” step 1 “agent 1” (timeout 30 s)" in said, said
    # Nothing saved: the stored provider is as it was.
    provider.refresh_from_db()
    assert all(getattr(provider, name) == before.get(name, getattr(provider, name))
               for name in before)
    # With the step's timeout raised first, the same edit is accepted.
    Step.objects.filter(pk=step.pk).update(timeout_seconds=60)
    for name, value in edit.items():
        setattr(provider, name, value)
    provider.full_clean()


@pytest.mark.django_db
def test_adding_a_provider_by_the_name_steps_call_is_checked_too(cast):
    _agent_step(cast)
    new = Provider(org=cast.org_a, name="ai", model="m", base_url="https://ai.example/v1",
                   timeout_seconds=60)
    assert "“Summaries” step 1" in _refused(new)
    new.timeout_seconds = 30
    new.full_clean()


@pytest.mark.django_db
def test_an_edit_that_keeps_the_steps_valid_or_another_orgs_is_accepted(cast):
    _agent_step(cast)
    provider = _provider(cast)
    provider.concurrency_limit, provider.timeout_seconds = 2, 20  # lower: still valid
    provider.full_clean()
    elsewhere = _provider(cast, org=cast.org_b, timeout_seconds=10)
    elsewhere.timeout_seconds = 60  # org B has no step calling "ai"
    elsewhere.full_clean()


@pytest.mark.django_db
def test_a_step_invalid_before_does_not_block_an_unrelated_edit(cast):
    provider = _provider(cast, timeout_seconds=60)
    _agent_step(cast)  # saved without its check (as before the rule): already invalid
    provider.concurrency_limit = 2
    provider.full_clean()


@pytest.mark.django_db
def test_lowering_a_steps_own_timeout_below_its_provider_is_refused(cast):
    """The other side of the same limit: the step's own edit is checked when it is saved."""
    step = _agent_step(cast, timeout=30)
    _provider(cast, timeout_seconds=30)
    step.timeout_seconds = 20
    with pytest.raises(ValidationError) as refused:
        step.full_clean()
    assert "provider: 'ai' waits up to 30 seconds" in str(refused.value)
