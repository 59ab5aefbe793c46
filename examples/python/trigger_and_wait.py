"""Trigger an Auxot intake and wait for the result: the client library in 15 lines.

Environment: AUXOT_BASE_URL, AUXOT_API_KEY, AUXOT_INTAKE_ID. Exits like the `auxot`
command: 0 completed, 1 failed, 2 timed out, 3 key / intake / request problem, 4 Auxot
unavailable. Needs only the client: `pip install ./clients/python` from a checkout, or
`pip install auxot-client` from your package index (requests only, no Django).
"""
import json
import os
import sys

from auxot_client import AuxotError, Client, TransientError, WaitTimeout

intake_id = os.environ["AUXOT_INTAKE_ID"]
try:
    client = Client()  # AUXOT_BASE_URL and AUXOT_API_KEY from the environment
    work = client.trigger(intake_id, {"ticket_id": "SUP-1042", "customer": "Acme Corp"})
    print(f"work_id {work['work_id']}", file=sys.stderr)
    item = client.wait(intake_id, work["work_id"], timeout=30 * 60)  # backoff + long-poll
except AuxotError as exc:  # not the work failing: it timed out, or we could not ask
    print(f"auxot: {exc}", file=sys.stderr)
    sys.exit(2 if isinstance(exc, WaitTimeout) else 4 if isinstance(exc, TransientError) else 3)
if item["status"] == "failed":
    sys.exit(f"failed: {item['diagnosis']}")
print(json.dumps(item["output"]))
