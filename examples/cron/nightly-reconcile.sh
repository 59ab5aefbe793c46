#!/usr/bin/env bash
# Nightly reconciliation: trigger an Auxot intake and wait for its work item, with curl and
# jq only (for machines without Python). Exit codes match the `auxot` CLI: 0 completed,
# 1 failed, 2 timed out, 3 configuration / 401 / 404 / request refused, 4 server unavailable.
#
# Environment:
#   AUXOT_BASE_URL   e.g. https://auxot.example.com
#   AUXOT_API_KEY    a team.… (or user.…) key; keep it in a root-only env file, not in crontab
#   AUXOT_INTAKE_ID  the intake id from Settings → Intakes
#   AUXOT_TIMEOUT_SECONDS  optional, default 1800
#
# crontab (02:15 every night, key from a 0600 file):
#   15 2 * * * . /etc/auxot/reconcile.env && /opt/auxot/nightly-reconcile.sh >>/var/log/reconcile.log 2>&1
set -euo pipefail

: "${AUXOT_BASE_URL:?set AUXOT_BASE_URL}"
: "${AUXOT_API_KEY:?set AUXOT_API_KEY}"
: "${AUXOT_INTAKE_ID:?set AUXOT_INTAKE_ID}"
timeout_seconds="${AUXOT_TIMEOUT_SECONDS:-1800}"
base="${AUXOT_BASE_URL%/}"
if [[ "$base" =~ ^(https?://[^/]+(/[^/]+)*)/v1(/|$) ]]; then  # pasted from /v1/docs: all 404
  printf "AUXOT_BASE_URL is the server's root, without /v1 (this script adds /v1/…): e.g. %s\n" \
    "${BASH_REMATCH[1]}" >&2
  exit 3
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

log() { printf '%s %s\n' "$(date -u +%FT%TZ)" "$*" >&2; }

# One Idempotency-Key for this run's trigger, sent on every retry: a POST that timed out or
# met a 502 may have been accepted, and the retry then gets that work item back instead of
# starting the reconciliation a second time.
idempotency_key="nightly-reconcile-$(date -u +%Y%m%dT%H%M%SZ)-$$-$RANDOM"

# call METHOD URL [BODY_FILE]: prints the HTTP status; body in $tmp/body, headers in $tmp/headers.
# The key goes to curl through a file descriptor, so it never shows up in `ps`.
call() {
  local data=()
  if [[ $# -ge 3 ]]; then
    data=(-H 'Content-Type: application/json' -H "Idempotency-Key: $idempotency_key"
          --data-binary "@$3")
  fi
  curl --silent --show-error --max-time 60 -X "$1" "$2" \
    -H @<(printf 'Authorization: Bearer %s\n' "$AUXOT_API_KEY") \
    "${data[@]}" -o "$tmp/body" -D "$tmp/headers" -w '%{http_code}' || true  # 000: no answer
}

retry_after() {  # the Retry-After header in whole seconds, 1 when absent
  local value
  value="$(tr -d '\r' <"$tmp/headers" | awk -F': *' 'tolower($1)=="retry-after"{print $2}' | tail -n1)"
  [[ "$value" =~ ^[0-9]+$ ]] && echo "$value" || echo 1
}

# Exponential backoff with full jitter, never sooner than Retry-After: sleep_jitter ATTEMPT.
sleep_jitter() {
  local ceiling=$((1 << ($1 < 5 ? $1 : 5)))  # 1, 2, 4, ... 32 s
  local delay=$((RANDOM % (ceiling + 1)))
  local floor
  floor="$(retry_after)"
  ((delay < floor)) && delay=$floor
  sleep "$delay"
}

problem() { jq -r '"HTTP \(.status // "?") \(.code // ""): \(.detail // "no detail")"' "$tmp/body" 2>/dev/null || cat "$tmp/body"; }

# 1. Trigger, retried a few times under the one Idempotency-Key: 429 and 503 accepted
# nothing, 409 means our first try is still being stored, and after a network error or
# another 5xx the server answers the first try's work item if it was accepted.
jq -n --arg date "$(date -u +%F)" --arg host "$(hostname)" \
  '{job: "nightly-reconcile", date: $date, host: $host}' >"$tmp/input.json"
for attempt in 1 2 3 4 5; do
  status="$(call POST "$base/v1/intake/$AUXOT_INTAKE_ID" "$tmp/input.json")"
  case "$status" in
    202) break ;;
    409 | 429 | 503) log "trigger got $status, retrying"; sleep_jitter "$attempt" ;;
    401 | 404 | 4??) log "trigger refused: $(problem)"; exit 3 ;;
    *) log "trigger failed with HTTP $status"; [[ $attempt -lt 5 ]] || exit 4; sleep_jitter "$attempt" ;;
  esac
done
[[ "$status" == 202 ]] || exit 4
work_id="$(jq -r .work_id "$tmp/body")"
log "accepted: work_id $work_id"

# 2. Wait: long-poll (the server answers as soon as the item finishes, or after 20 s), and
# sleep with jitter between polls so many cron hosts never poll in lockstep.
deadline=$((SECONDS + timeout_seconds))
last="" attempt=0
while ((SECONDS < deadline)); do
  wait=$((deadline - SECONDS))
  ((wait > 20)) && wait=20
  ((wait < 1)) && wait=1
  status="$(call GET "$base/v1/intake/$AUXOT_INTAKE_ID/work/$work_id?wait=$wait")"
  case "$status" in
    200)
      state="$(jq -r .status "$tmp/body")"
      if [[ "$state" != "$last" ]]; then log "status $state: $(jq -r .diagnosis "$tmp/body")"; last="$state"; attempt=0; fi
      case "$state" in
        completed) jq .output "$tmp/body"; exit 0 ;;
        failed) log "work failed: $(jq -c .error "$tmp/body")"; exit 1 ;;
      esac
      sleep_jitter 1  # the long-poll already spaced us out: 0-2 s, at least Retry-After
      continue
      ;;
    401 | 404) log "poll refused: $(problem)"; exit 3 ;;
    *) log "poll got HTTP ${status:-000}, backing off" ;;
  esac
  attempt=$((attempt + 1))
  sleep_jitter "$attempt"
done
log "timed out after ${timeout_seconds}s; work $work_id is still ${last:-unknown}"
exit 2
