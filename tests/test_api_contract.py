"""/openapi.json is what the API does, as an independent client sees it (schemathesis).

Integrators generate clients from the document, so schemathesis runs every check on every
route of a real bridge (uvicorn in its own process, a real SQLite file): every answer's
status is documented, every body fits its schema, what the schema allows is accepted,
what it forbids is refused, and a route that needs the token refuses a request without.
Bounded (a fixed seed, 40 examples an operation) so it is neither slow nor flaky.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.api_server import ApiServer
from tests.support import missing_component

#: Every check schemathesis has, enabled one by one (`--checks all` on the command line
#: would override the one exclusion below).
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "positive_data_acceptance",
    "missing_required_header",
    "unsupported_method",
    "allow_header_conformance",
    "use_after_free",
    "ensure_resource_availability",
    "ignored_auth",
    "object_level_authorization",
]

CONFIG = "\n".join(f"checks.{c}.enabled = true" for c in CHECKS) + (
    "\n\n"
    # The one exclusion. A code's times must lie within 200 years of *now*, and `expires`
    # in the future: a window that moves with the clock, which a static JSON Schema
    # cannot state (it has no "now"). So schemathesis takes `"at": 0` or `"expires": 5`
    # as schema-valid and the bridge rightly refuses them (422). Everything else about
    # this route, negative data and answers included, is still checked.
    "[[operations]]\n"
    'include-path = "/api/v1/codes"\n'
    'include-method = "POST"\n'
    "checks.positive_data_acceptance.enabled = false\n"
    # And one more: retiring a reward (DELETE) keeps it, so past redemptions keep its name
    # and `PATCH {"active": true}` offers it again (docs/rest-api.md). A PATCH after the
    # DELETE succeeding is the API as documented, not a "use after free".
    "\n[[operations]]\n"
    'include-path-regex = "^/api/v1/rewards/"\n'
    "checks.use_after_free.enabled = false\n"
    # An activity must start in the future: the same moving window as a code's times.
    "\n[[operations]]\n"
    'include-path = "/api/v1/activities"\n'
    'include-method = "POST"\n'
    "checks.positive_data_acceptance.enabled = false\n"
    # The insights' range: `from` not after `to` (today by default) and at most 366 days,
    # two dates compared with each other and with today, which a schema cannot state.
    "\n[[operations]]\n"
    'include-path-regex = "^/api/v1/insights"\n'
    "checks.positive_data_acceptance.enabled = false\n"
)


def _schemathesis() -> str:
    found = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if found is None:
        missing_component("schemathesis", "pip install -e .[dev], or run scripts/setup.sh")
    assert found is not None
    return found


def test_openapi_document_matches_the_running_bridge(tmp_path: Path) -> None:
    program = _schemathesis()
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    with ApiServer(tmp_path / "bridge") as server:
        command = [
            program,
            "--no-color",
            "--config-file",
            str(config),
            "run",
            f"{server.url}/openapi.json",
            "--header",
            f"Authorization: Bearer {server.token}",
            "--max-examples",
            "40",
            "--seed",
            "20261201",
            "--generation-database",
            "none",
            "--request-timeout",
            "10",
            "--report-dir",
            str(tmp_path / "report"),
        ]
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=600,  # a bound on a hung run, not a speed check (docs: make bench)
            cwd=tmp_path,
            env={**os.environ, "NO_COLOR": "1"},
        )
        alive = server.proc.poll() is None
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-12000:]
    assert alive, "the bridge died under schemathesis"
    # Every route was tested (none skipped for want of a schema it could read).
    selected = re.search(r"Selected: (\d+)/(\d+)", output)
    tested = re.search(r"Tested: (\d+)", output)
    assert selected and tested, output[-4000:]
    assert int(tested.group(1)) == int(selected.group(2)) >= 7, output[-4000:]
