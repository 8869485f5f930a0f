"""`helm test`, first Pod: wait until the test model's Service exists.

The inference Pod finds the Service by the variables Kubernetes gives a container for every
Service of its namespace that exists when the container starts (NAME_SERVICE_HOST), or by its
DNS name. This Pod succeeds once either works; when neither does within a few seconds it
exits 1, and its restart (restartPolicy OnFailure) starts with a fresh environment, which
picks up a Service created since (clusters without DNS, such as the local sandbox).
Standard library only: it runs in the worker image.
"""

import os
import socket
import sys
import time

name = os.environ["MODEL"]
namespace = os.environ["NAMESPACE"]
variable = name.upper().replace("-", "_") + "_SERVICE_HOST"
deadline = time.monotonic() + float(os.environ.get("RESOLVE_SECONDS", "5"))
while True:
    if os.environ.get(variable):
        print(f"the Service {name} is at {os.environ[variable]} ({variable})")
        sys.exit(0)
    try:
        socket.getaddrinfo(f"{name}.{namespace}.svc", 8000)
    except OSError:
        pass
    else:
        print(f"the Service {name}.{namespace}.svc resolves")
        sys.exit(0)
    if time.monotonic() > deadline:
        print(f"no Service {name} yet: restarting to read the environment again")
        sys.exit(1)
    time.sleep(0.5)
