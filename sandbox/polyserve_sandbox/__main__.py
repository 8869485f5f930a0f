"""``python -m polyserve_sandbox``: the fleet process (``serve``) and the sandbox commands."""

from polyserve_sandbox import fleet

raise SystemExit(fleet.main())
