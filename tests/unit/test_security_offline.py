"""Secrets kept out of configuration errors, and the HTTP endpoint on loopback by default.

Neither needs a broker; SASL, TLS and secrets against a real secured broker are in
``tests/integration/test_security.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from helpers import PASSWORD, PASSWORD_256, REPO, assert_no_secret, cli_env, run_cli

from dyno_stream.config import WorkerSettings


def test_cli_error_for_a_bad_config_does_not_show_the_password(tmp_path: Path) -> None:
    # in the environment, beside a bad value and a misspelt key that holds a secret too
    env = cli_env(
        DYNO_KAFKA__SASL_PASSWORD=PASSWORD,
        DYNO_KAFKA__SASL_PASWORD=PASSWORD_256,
        DYNO_KAFKA__SECURITY_PROTOCOL="SASL_PLAIN",
    )
    proc = run_cli(env, "topics", timeout=60)
    assert proc.returncode == 1
    assert "invalid configuration" in proc.stderr and "security_protocol" in proc.stderr
    assert "sasl_pasword" in proc.stderr
    assert_no_secret("the CLI's error output", proc.stdout + proc.stderr)

    # in a TOML file, with a password of the wrong type and another bad value
    config = tmp_path / "bad.toml"
    config.write_text(
        f'[kafka]\nsasl_password = "{PASSWORD}"\nssl_key_password = ["{PASSWORD_256}"]\n'
        "[worker]\nbatch_size = 0\n"
    )
    proc = run_cli(cli_env(DYNO_CONFIG=str(config)), "worker", timeout=60)
    assert proc.returncode == 1
    assert "kafka.ssl_key_password" in proc.stderr and "worker.batch_size" in proc.stderr
    assert_no_secret("the CLI's error output", proc.stdout + proc.stderr)


def test_http_endpoint_defaults_to_loopback() -> None:
    assert WorkerSettings().http_host == "127.0.0.1"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DYNO_")}
    code = "from dyno_stream.config import load_settings; print(load_settings().worker.http_host)"
    shipped = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True
    )
    assert shipped.stdout.strip() == "127.0.0.1", shipped.stderr  # config/dyno-stream.toml
