"""Ready-to-paste snippets for an intake's page, built from the real base URL and id.

The key is always the placeholder AUXOT_API_KEY (the quick start's and the CLI's name): a
secret never appears on a page.
"""

from django.conf import settings
from django.http import HttpRequest


def public_base_url(request: HttpRequest) -> str:
    return settings.AUXOT_PUBLIC_BASE_URL or request.build_absolute_uri("/").rstrip("/")


def intake_snippets(*, base_url: str, intake_id: str) -> list[tuple[str, str, str]]:
    """[(slug, title, text)] for the intake detail page."""
    trigger = f"{base_url}/v1/intake/{intake_id}"
    curl_trigger = (
        f"curl -sS -X POST '{trigger}' \\\n"
        '  -H "Authorization: Bearer $AUXOT_API_KEY" \\\n'
        "  -H 'Content-Type: application/json' \\\n"
        "  -d '{\"customer\": \"Ada\"}'"
    )
    curl_poll = (
        f"curl -sS '{trigger}/work/'\"$WORK_ID\" \\\n"
        '  -H "Authorization: Bearer $AUXOT_API_KEY"'
    )
    loop = (
        "# Trigger, then poll until completed or failed (sleep with jitter).\n"
        f"WORK_ID=$(curl -sS -X POST '{trigger}' \\\n"
        '  -H "Authorization: Bearer $AUXOT_API_KEY" -H \'Content-Type: application/json\' \\\n'
        "  -d '{\"customer\": \"Ada\"}' | python3 -c 'import json,sys; "
        "print(json.load(sys.stdin)[\"work_id\"])')\n"
        "while :; do\n"
        f"  BODY=$(curl -sS '{trigger}/work/'\"$WORK_ID\" "
        '-H "Authorization: Bearer $AUXOT_API_KEY")\n'
        "  STATUS=$(printf '%s' \"$BODY\" | python3 -c 'import json,sys; "
        "print(json.load(sys.stdin)[\"status\"])')\n"
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
        "work.raise_for_status()\n"
        "work_id = work.json()[\"work_id\"]\n"
        "while True:\n"
        "    body = requests.get(f\"{URL}/work/{work_id}\", headers=HEADERS, timeout=30).json()\n"
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
