"""Fetch the official Apache Kafka jars from Maven Central, once, into a local cache."""

from __future__ import annotations

import os
import shutil
import subprocess
from importlib import resources
from pathlib import Path

from fraudstream.errors import BrokerError

__all__ = [
    "KAFKA_VERSION",
    "OLDER_KAFKA_VERSION",
    "default_cache_dir",
    "ensure_kafka",
    "java_executable",
]

KAFKA_VERSION = "4.4.0"
# The last Apache Kafka before 4.0, which the tests also run a fault scenario on
# (tests/chaos/test_older_broker.py); `make setup-test` fetches it
OLDER_KAFKA_VERSION = "3.9.2"


def default_cache_dir() -> Path:
    """`FRAUDSTREAM_CACHE`, else `~/.cache/fraudstream`."""
    env = os.environ.get("FRAUDSTREAM_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "fraudstream"


def ensure_kafka(cache_dir: Path | None = None, version: str = KAFKA_VERSION) -> Path:
    """Return the folder of Kafka's runtime jars, fetching them with Maven on first use."""
    home = (cache_dir or default_cache_dir()) / f"kafka-{version}"
    lib = home / "lib"
    done = home / ".complete"
    if done.exists():
        return lib
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError(
            "Maven (`mvn`) is not on PATH; install it (apt-get install maven) to fetch Kafka, "
            "or set KAFKA_BROKER_URL to an existing cluster"
        )
    home.mkdir(parents=True, exist_ok=True)
    template = resources.files("fraudstream.broker").joinpath("pom.xml").read_text("utf-8")
    (home / "pom.xml").write_text(template.replace("@KAFKA_VERSION@", version), "utf-8")
    if lib.exists():
        shutil.rmtree(lib)
    cmd = [
        mvn,
        "-q",
        "-B",
        "-f",
        str(home / "pom.xml"),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={lib}",
        "-DincludeScope=runtime",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BrokerError(
            f"fetching Apache Kafka {version} from Maven Central failed; check network access "
            f"to Maven Central and retry.\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
        )
    if not any(lib.glob(f"kafka_2.13-{version}.jar")):
        raise BrokerError(f"Maven finished but kafka_2.13-{version}.jar is not in {lib}")
    done.write_text(version, "utf-8")
    return lib


def java_executable() -> str:
    """`$JAVA_HOME/bin/java`, else `java` on PATH; Kafka 4 needs Java 17 or newer."""
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise BrokerError("Java 17+ is needed to run Kafka: install it or set JAVA_HOME")
    return java
