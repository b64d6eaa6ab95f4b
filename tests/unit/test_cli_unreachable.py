"""The CLI without a broker: one line within ``[kafka] connect_timeout_s``, exit status 1.

Before: ``op`` against a closed port printed librdkafka's ``%3|...|FAIL|`` line about 20 times
a second on stderr and had not ended after 60 s, with no word of what to do.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from helpers import free_port_pair

#: Short, so the six commands' waits stay short (the default is 10 s).
CONNECT_TIMEOUT_S = 3.0
#: A command's start-up and imports, on a busy machine: well below a wait for ever.
START_UP_S = 9.0

#: Commands that need Kafka, each as a user would type it.
_KAFKA_COMMANDS = [
    ["op", "chilts", "putAttrs", '{"a":1}'],
    ["flatten", "chilts", "0" * 32],
    ["get", "--view", "chilts"],
    ["watch"],
    ["compact"],
    ["topics"],
]


def test_cli_without_a_broker_ends_in_one_line_within_the_connect_timeout(
    tmp_path: Path,
) -> None:
    port = free_port_pair()  # nothing listens there
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DYNO_")},
        "DYNO_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{port}",
        "DYNO_WORKER__DATA_DIR": str(tmp_path / "data"),
        "DYNO_KAFKA__CONNECT_TIMEOUT_S": str(CONNECT_TIMEOUT_S),
    }
    # three at a time (this machine has two cores): each is timed from its own start
    for pair in (_KAFKA_COMMANDS[i : i + 3] for i in range(0, len(_KAFKA_COMMANDS), 3)):
        runs = [
            (
                args,
                time.monotonic(),
                subprocess.Popen(
                    [sys.executable, "-m", "dyno_stream", *args],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                ),
            )
            for args in pair
        ]
        for args, started, proc in runs:
            out, err = proc.communicate(timeout=60)
            took = time.monotonic() - started
            assert took < CONNECT_TIMEOUT_S + START_UP_S, f"{args}: {took:.1f}s"
            assert proc.returncode == 1, (args, proc.returncode, err)
            assert "%3|" not in err.decode(), (args, err)
            assert err.decode().splitlines() == [
                f"error: no Kafka broker answers at 127.0.0.1:{port} (connection refused); "
                "start one with 'dyno-stream broker start', or set DYNO_KAFKA__BOOTSTRAP_SERVERS"
            ], (args, err)
            assert out == b"", (args, out)
