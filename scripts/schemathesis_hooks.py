"""schemathesis hooks for scripts/schemathesis.sh: what a JSON Schema cannot say about a valid
request, applied to the requests schemathesis makes as valid ("positive") ones.

The OpenAPI document declares every rule the server enforces that JSON Schema can express, and
says the others in words. These are the others; a positive request that breaks one is refused
(400) as documented, which schemathesis would report as a valid request refused. So each hook
below turns such a request into one that keeps the rule, and leaves invalid ("negative")
requests alone:

- an agent key's `expires_at` must be in the future, an API key's within `--max-key-days` from
  now (they depend on the clock);
- a job's `target.agents` must name agents of the tenant (they depend on the fleet): ids are
  replaced with the agents connected now;
- a tag is at most 128 bytes of UTF-8, an `idempotency_key` at most 200 and a parameter's value
  at most 32768 (the document's `maxLength` counts characters, which JSON Schema cannot do in
  bytes): longer ones are cut at a character boundary;
- a run's `secret_params` names some of its `params` (a relation between two fields).
"""

import datetime
import json
import os
import urllib.request

import schemathesis
from schemathesis.generation.modes import GenerationMode

URL = os.environ["OUTPOST_CONFORMANCE_URL"]
KEY = os.environ["OUTPOST_CONFORMANCE_KEY"]
MAX_TAG = 128
MAX_IDEMPOTENCY_KEY = 200
MAX_PARAM_VALUE = 32 * 1024


def positive(case):
    meta = case.meta
    return meta is not None and meta.generation.mode == GenerationMode.POSITIVE


def cut(text, limit):
    """`text` shortened to at most `limit` bytes of UTF-8, at a character boundary."""
    if not isinstance(text, str):
        return text
    while len(text.encode("utf-8", "surrogatepass")) > limit:
        text = text[:-1]
    return text


def connected_agents():
    request = urllib.request.Request(
        f"{URL}/api/agents/connected", headers={"Authorization": f"Bearer {KEY}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return [agent["agent_id"] for agent in json.load(response)]


def fix_tags(body):
    if isinstance(body.get("tags"), list):
        body["tags"] = [cut(tag, MAX_TAG) for tag in body["tags"]]


def fix_data(body):
    data = body.get("data")
    if not isinstance(data, dict):
        return
    params = data.get("params")
    if isinstance(params, dict):
        data["params"] = {name: cut(value, MAX_PARAM_VALUE) for name, value in params.items()}
    if isinstance(data.get("secret_params"), list):
        names = params if isinstance(params, dict) else {}
        data["secret_params"] = [name for name in data["secret_params"] if name in names]


@schemathesis.hook
def map_case(context, case):
    if not positive(case) or not isinstance(case.body, dict) or context.operation is None:
        return case
    operation = context.operation.definition.raw.get("operationId")
    body = case.body
    if operation == "createAgentKey":
        fix_tags(body)
        expires_at = body.get("expires_at")
        if isinstance(expires_at, str):
            try:
                when = datetime.datetime.fromisoformat(expires_at.replace("Z", "+00:00"))
                past = when <= datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(
                    minutes=5
                )
            except ValueError:
                past = False
            if past:
                body["expires_at"] = "2999-12-31T23:59:59Z"
    elif operation == "createApiKey":
        # An API key's expiry is between now and --max-key-days (365 by default) from now.
        expires_at = body.get("expires_at")
        if isinstance(expires_at, str):
            try:
                when = datetime.datetime.fromisoformat(expires_at.replace("Z", "+00:00"))
                now = datetime.datetime.now(datetime.timezone.utc)
                outside = not (
                    now + datetime.timedelta(minutes=5) < when < now + datetime.timedelta(days=364)
                )
            except ValueError:
                outside = False
            if outside:
                body["expires_at"] = (now + datetime.timedelta(days=30)).strftime(
                    "%Y-%m-%dT%H:%M:%SZ"
                )
    elif operation in ("createSchedule", "updateSchedule"):
        # Mostly valid patterns and zones (see schemathesis.toml), so that schedules get made.
        if "cron" in body and body["cron"] is not None:
            body["cron"] = "@daily"
        if isinstance(body.get("timezone"), str):
            body["timezone"] = "Europe/Paris"
        fix_data(body)
    elif operation == "updateAgent":
        fix_tags(body)
    elif operation in ("createJob", "commandAgent", "commandAgentKey"):
        fix_data(body)
        if isinstance(body.get("idempotency_key"), str):
            body["idempotency_key"] = cut(body["idempotency_key"], MAX_IDEMPOTENCY_KEY) or "k"
        target = body.get("target")
        if operation == "createJob" and isinstance(target, dict) and target.get("agents"):
            agents = connected_agents()
            if agents:
                target["agents"] = agents[:1]
            else:
                # None connected this moment (the script is starting a new one): every agent.
                del target["agents"]
                target["all"] = True
    return case
