"""/v1/problems/<code>, the `type` of every problem+json answer: what the problem means and
what to do, for every code (they said only the title), as JSON for programs and a page for
a browser; /v1/problems lists them all."""

import re
from pathlib import Path

import pytest
from django.test import Client

from auxot.errors import OPS_PROBLEMS, PROBLEM_HELP, PROBLEMS

BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_problem_has_its_help_and_no_help_is_left_over():
    assert set(PROBLEM_HELP) == set(PROBLEMS)
    assert all(len(text) > 40 for text in PROBLEM_HELP.values())


def test_every_code_the_readme_documents_is_a_problem_with_a_page():
    codes = set(re.findall(r"^\| \d{3} \| `([a-z_]+)` \|", README.read_text(), re.M))
    assert codes and codes <= set(PROBLEMS)


def test_every_api_problem_is_in_the_readmes_errors_table_with_its_status():
    """And the other way: `request_timeout` (408) and `internal_error` (500) were answered
    by the API but missing from the table callers read; a row's status is the code's."""
    section = README.read_text().split("\n### Errors\n", 1)[1].split("\n### ", 1)[0]
    rows = re.findall(r"^\| (\d{3}) \| `([a-z_]+)` \|", section, re.M)
    assert sorted({code for _, code in rows}) == sorted(set(PROBLEMS) - OPS_PROBLEMS)
    assert [(status, code) for status, code in rows
            if int(status) != PROBLEMS[code][0]] == []


@pytest.mark.parametrize("code", sorted(PROBLEMS))
def test_each_page_says_what_the_code_means(code):
    status, title = PROBLEMS[code]
    for accept in ({}, {"HTTP_ACCEPT": "application/problem+json"},
                   {"HTTP_ACCEPT": "application/json"}, {"HTTP_ACCEPT": "*/*"}):
        answer = Client().get(f"/v1/problems/{code}", **accept)
        assert answer.status_code == 200 and answer["Content-Type"] == "application/json"
        assert answer.json() == {"type": f"/v1/problems/{code}", "code": code,
                                 "status": status, "title": title,
                                 "description": PROBLEM_HELP[code]}
        assert "Accept" in answer["Vary"]  # one URL, two bodies: caches keep them apart
    page = Client().get(f"/v1/problems/{code}", HTTP_ACCEPT=BROWSER)
    assert page["Content-Type"].startswith("text/html") and "Accept" in page["Vary"]
    html = page.content.decode()
    assert f"<title>{status} " in html and "<code>" + code + "</code>" in html
    first_words = PROBLEM_HELP[code].split("`")[0][:30].replace("'", "&#x27;")
    assert first_words in html


def test_backticks_become_code_and_the_rest_is_escaped(monkeypatch):
    monkeypatch.setitem(PROBLEM_HELP, "conflict", "Send `<b>` & then <i>this</i>.")
    html = Client().get("/v1/problems/conflict", HTTP_ACCEPT=BROWSER).content.decode()
    assert "Send <code>&lt;b&gt;</code> &amp; then &lt;i&gt;this&lt;/i&gt;." in html


def test_the_index_lists_every_problem_in_status_order():
    answer = Client().get("/v1/problems")
    assert "Accept" in answer["Vary"]
    listed = answer.json()["problems"]
    assert sorted(entry["code"] for entry in listed) == sorted(PROBLEMS)
    assert [entry["status"] for entry in listed] == sorted(entry["status"] for entry in listed)
    page = Client().get("/v1/problems", HTTP_ACCEPT=BROWSER)
    assert "Accept" in page["Vary"]
    page = page.content.decode()
    assert all(f'href="/v1/problems/{code}"' in page for code in PROBLEMS)


def test_an_unknown_code_is_a_problem_that_points_at_the_list():
    answer = Client().get("/v1/problems/nope")
    assert answer.status_code == 404 and "/v1/problems" in answer.json()["detail"]
    assert Client().post("/v1/problems").status_code == 405


def test_the_apis_schema_leaves_out_the_operators_problems():
    from drf_spectacular.generators import SchemaGenerator

    text = str(SchemaGenerator().get_schema(request=None, public=True))
    assert OPS_PROBLEMS and not any(code in text for code in OPS_PROBLEMS)
    assert "idempotency_key_reused" in text
