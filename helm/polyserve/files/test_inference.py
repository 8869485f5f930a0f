"""`helm test`, second Pod: one inference to the test model, checked.

Waits (up to TIMEOUT_SECONDS) until the model is ready (GET /v2/models/NAME/ready), sends
REQUEST to POST /v2/models/NAME/infer (Open Inference Protocol, JSON), and checks that the
answer has every output in OUTPUTS and, for each output in EXPECTED, those values (to 1e-5).
Exits 1 with the reason otherwise. Standard library only: it runs in the worker image.
"""

import json
import os
import socket
import sys
import time
import urllib.error
import urllib.request

name = os.environ["MODEL"]
namespace = os.environ["NAMESPACE"]
request = json.loads(os.environ["REQUEST"])
expected = json.loads(os.environ.get("EXPECTED") or "{}")
outputs = json.loads(os.environ.get("OUTPUTS") or "[]")
deadline = time.monotonic() + float(os.environ.get("TIMEOUT_SECONDS", "300"))

prefix = name.upper().replace("-", "_")
host = os.environ.get(f"{prefix}_SERVICE_HOST") or f"{name}.{namespace}.svc"
port = os.environ.get(f"{prefix}_SERVICE_PORT_HTTP") or "8000"
base = f"http://{host}:{port}/v2/models/{name}"


def fail(message: str) -> None:
    print(f"FAILED: {message}")
    sys.exit(1)


last = "no answer yet"
while True:
    try:
        with urllib.request.urlopen(f"{base}/ready", timeout=5) as response:
            if response.status == 200:
                break
            last = f"ready answered {response.status}"
    except (urllib.error.URLError, OSError, socket.timeout) as exc:
        last = str(exc)
    if time.monotonic() > deadline:
        fail(f"the model {name} was not ready at {base} in time: {last}")
    time.sleep(1)

body = json.dumps(request).encode()
post = urllib.request.Request(
    f"{base}/infer", data=body, headers={"Content-Type": "application/json"}, method="POST"
)
try:
    with urllib.request.urlopen(post, timeout=30) as response:
        answer = json.loads(response.read())
except urllib.error.HTTPError as exc:
    fail(f"infer answered {exc.code}: {exc.read()[:500]!r}")
got = {o["name"]: o for o in answer.get("outputs") or []}
missing = [o for o in outputs if o not in got]
if missing:
    fail(f"outputs {missing} are missing from the answer: {sorted(got)}")
for output, values in expected.items():
    data = (got.get(output) or {}).get("data")
    if data is None or len(data) != len(values):
        fail(f"{output} is {data}, expected {values}")
    if any(abs(float(a) - float(b)) > 1e-5 for a, b in zip(data, values)):
        fail(f"{output} is {data}, expected {values}")
print(f"the model {name} answered: " + json.dumps({k: v.get("data") for k, v in got.items()}))
