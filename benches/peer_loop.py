"""The loop flowcast replaces, as people write it: read the CSV, and for each
row ask the official Twilio helper library for one Studio Execution, one after
the other.

    peer_loop.py CSV FLOW_SID FROM STUDIO_URL

Credentials come from TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN, as the helper
reads them. Every request the helper would send to https://studio.twilio.com
goes to STUDIO_URL instead (the benchmark's Studio simulator), through the
helper's own HTTP client, so the helper's whole request path is measured.
Prints one JSON line: rows read, Executions created, failures, the loop's
seconds and the helper's version.
"""

import csv
import json
import sys
import time

import twilio
from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

STUDIO = "https://studio.twilio.com"


class LocalStudio(TwilioHttpClient):
    """The helper's default HTTP client (one pooled requests session), with
    Studio's address swapped for the simulator's."""

    def __init__(self, base_url):
        super().__init__()
        self.base_url = base_url.rstrip("/")

    def request(self, method, url, *args, **kwargs):
        if url.startswith(STUDIO):
            url = self.base_url + url[len(STUDIO):]
        return super().request(method, url, *args, **kwargs)


def main():
    path, flow_sid, from_, base_url = sys.argv[1:5]
    client = Client(http_client=LocalStudio(base_url))
    rows = created = failed = 0
    started = time.monotonic()
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            rows += 1
            try:
                client.studio.v2.flows(flow_sid).executions.create(
                    to=row["phone"],
                    from_=from_,
                    parameters={"name": row["first_name"], "appointment": row["appointment_at"]},
                )
                created += 1
            except TwilioRestException as e:
                # Counted, not fatal: one refused row must not end the run.
                failed += 1
                print(f"row {rows}: {e.status} {e.code}", file=sys.stderr)
    seconds = time.monotonic() - started
    print(json.dumps({
        "rows": rows, "created": created, "failed": failed,
        "loop_s": seconds, "twilio": twilio.__version__,
    }))


if __name__ == "__main__":
    main()
