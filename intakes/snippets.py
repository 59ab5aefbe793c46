"""Ready-to-paste snippets for an intake's page, built from the real base URL and id.

The key is always the placeholder AUXOT_API_KEY (the quick start's and the CLI's name): a
secret never appears on a page.
"""

from django.conf import settings
from django.http import HttpRequest


def public_base_url(request: HttpRequest) -> str:
    return settings.AUXOT_PUBLIC_BASE_URL or request.build_absolute_uri("/").rstrip("/")


WORK_ID_UNSET = "set WORK_ID to the work_id of the 202 answer first"  # no quotes in it


def intake_snippets(*, base_url: str, intake_id: str) -> list[tuple[str, str, str]]:
    """[(slug, title, text)] for the intake detail page."""
    trigger = f"{base_url}/v1/intake/{intake_id}"
    curl_trigger = (
        f"curl -sS -X POST '{trigger}' \\\n"
        '  -H "Authorization: Bearer $AUXOT_API_KEY" \\\n'
        "  -H 'Content-Type: application/json' \\\n"
        "  -d '{\"customer\": \"Ada\"}'"
    )
    # WORK_ID unset (the trigger snippet does not set it) would poll ".../work/": a 404 that
    # blames the intake or the key. The shell says what to set instead, and sends nothing.
    curl_poll = (
        f"curl -sS '{trigger}/work/'\"${{WORK_ID:?{WORK_ID_UNSET}}}\" \\\n"
        '  -H "Authorization: Bearer $AUXOT_API_KEY"'
    )
    # A refused request (401, 404: a wrong key, a deactivated intake) stops the loop with
    # the problem on stderr instead of polling forever; 429 and 503 are waited out.
    loop = (
        "# Trigger, then poll until completed or failed (sleep with jitter).\n"
        "# A refused request (401, 404, ...) stops it and prints the problem.\n"
        f"WORK_ID=$(curl -sS -X POST '{trigger}' \\\n"
        '  -H "Authorization: Bearer $AUXOT_API_KEY" -H \'Content-Type: application/json\' \\\n'
        "  -d '{\"customer\": \"Ada\"}' | python3 -c 'import json,sys; "
        "b=json.load(sys.stdin); print(b[\"work_id\"]) if \"work_id\" in b "
        "else sys.exit(json.dumps(b))') &&\n"
        "while :; do\n"
        f"  BODY=$(curl -sS '{trigger}/work/'\"$WORK_ID\" "
        '-H "Authorization: Bearer $AUXOT_API_KEY")\n'
        "  STATUS=$(printf '%s' \"$BODY\" | python3 -c 'import json,sys; "
        "b=json.load(sys.stdin); print(b[\"status\"]) if \"work_id\" in b "
        "or b.get(\"status\") in (429, 503) else sys.exit(json.dumps(b))') || break\n"
        '  case "$STATUS" in completed|failed) echo "$BODY"; break;; esac\n'
        "  sleep $((2 + RANDOM % 3))\n"
        "done"
    )
    actions = (
        "- name: Trigger Auxot\n"
        "  env:\n"
        "    AUXOT_API_KEY: ${{ secrets.AUXOT_API_KEY }}\n"
        "  run: |\n"
        f"    curl -sS --fail-with-body -X POST '{trigger}' \\\n"
        '      -H "Authorization: Bearer $AUXOT_API_KEY" \\\n'
        "      -H 'Content-Type: application/json' \\\n"
        "      -d '{\"ref\": \"${{ github.sha }}\"}'"
    )
    python = (
        "import os, random, time\n\nimport requests\n\n"
        f"URL = \"{trigger}\"\n"
        "HEADERS = {\"Authorization\": f\"Bearer {os.environ['AUXOT_API_KEY']}\"}\n\n"
        "work = requests.post(URL, json={\"customer\": \"Ada\"}, headers=HEADERS, timeout=30)\n"
        "if work.status_code != 202:  # 401, 404, 422, ...: the problem says why\n"
        "    raise SystemExit(f\"{work.status_code} {work.text}\")\n"
        "work_id = work.json()[\"work_id\"]\n"
        "while True:\n"
        "    answer = requests.get(f\"{URL}/work/{work_id}\", headers=HEADERS, timeout=30)\n"
        "    if answer.status_code not in (200, 429, 503):  # 401, 404: stop, never loop on\n"
        "        raise SystemExit(f\"{answer.status_code} {answer.text}\")\n"
        "    body = answer.json()\n"
        "    if body[\"status\"] in (\"completed\", \"failed\"):\n"
        "        print(body)\n"
        "        break\n"
        "    time.sleep(2 + random.random() * 2)"
    )
    return [("curl-trigger", "curl: trigger", curl_trigger),
            ("curl-poll", "curl: poll", curl_poll),
            ("shell-loop", "Shell: trigger and poll loop", loop),
            ("github-actions", "GitHub Actions step", actions),
            ("python", "Python (requests)", python)]
