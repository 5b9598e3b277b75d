"""schemathesis, every check on, against a real `cliplog serve` on its own database: the OpenAPI document at
/schema must describe what the service really answers (statuses, bodies, headers, Allow, auth).

Three runs: every operation with a valid token; the file routes with the ids of a real completed clip (so that
Range, If-Range, If-None-Match and If-Modified-Since reach the file logic); every operation with an invalid token.
`CLIPLOG_SCHEMATHESIS_EXAMPLES` (default 50) sets schemathesis' `--max-examples`; docs/http.md has a longer run.
What the document cannot express (a source must exist on disk, cursors are opaque) is in schemathesis.toml.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio

from api.auth import create_token
from eventlog.store import init_connection
from runtime import settings as config
from tests.clip_support import completed_clip
from runtime.processes import ApiProcess

pytestmark = pytest.mark.timeout(900)

CONFIG = Path(__file__).with_name("schemathesis.toml")
EXAMPLES = os.environ.get("CLIPLOG_SCHEMATHESIS_EXAMPLES", "50")  # about 3,000 requests: a minute or two here
SCHEMATHESIS = [sys.executable, "-m", "schemathesis.cli"]


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def served(make_database, api_env, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN001, ANN201
    """`(url, token, file_url)`: a `cliplog serve` on a new database, a user's token and one of their clip files."""
    database_url = await make_database(migrated=True)
    env = {**os.environ, **api_env(database_url)}
    settings = config.load(env)
    token, file_url = await _prepare(database_url, settings.output_root)
    log = tmp_path_factory.mktemp("schema") / "serve.log"
    api = ApiProcess("serve", env, log).start()
    try:
        await asyncio.to_thread(api.wait_healthy, 30, (200,))
        yield api.url, token, file_url
    finally:
        api.stop()
        assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


async def _prepare(database_url: str, output_root: Path) -> tuple[str, str]:
    pool = await asyncpg.create_pool(database_url, init=init_connection, min_size=1, max_size=2)
    try:
        token = await create_token(pool, "fuzzer")
        url = await completed_clip(pool, output_root, "fuzzer", "p-file", "c-file", bytes(range(256)) * 64)
    finally:
        await pool.close()
    return token, url


def _run(args: list[str], log: Path, config: Path = CONFIG) -> tuple[str, list[int]]:
    """Run schemathesis; its output and the status of every response it got (from its HAR report)."""
    har = log.with_suffix(".har")
    result = subprocess.run(
        [*SCHEMATHESIS, "--config-file", str(config), "run", *args, "--no-color", "-w", "1",
         "--report", "har", "--report-har-path", str(har)],
        capture_output=True, text=True, timeout=800, env={**os.environ, "NO_COLOR": "1"},
        cwd=log.parent,  # its cache (.schemathesis/) stays out of the work tree
    )
    output = result.stdout + result.stderr
    log.write_text(output)
    statuses = [entry["response"]["status"] for entry in json.loads(har.read_text())["log"]["entries"]]
    print(f"schemathesis {log.stem}: {len(statuses)} requests, statuses {sorted(set(statuses))} (log: {log})")
    assert result.returncode == 0 and "passed" in output.split("SUMMARY")[-1], _failures(output)
    return output, statuses


def _failures(output: str) -> str:
    return output[output.find("FAILURES"):][-6000:] if "FAILURES" in output else output[-6000:]


def test_every_operation_with_a_valid_token(served, tmp_path: Path) -> None:  # noqa: ANN001
    url, token, _ = served
    _, statuses = _run([f"{url}/schema", "-H", f"Authorization: Bearer {token}", "--checks", "all",
                        "--max-examples", EXAMPLES], tmp_path / "valid.log")
    assert {200, 400, 401, 404} <= set(statuses) and max(statuses) < 500


def test_the_file_routes_of_a_real_clip(served, tmp_path: Path) -> None:  # noqa: ANN001
    url, token, file_url = served
    project, clip = file_url.split("/")[4], file_url.split("/")[6]
    fixed = tmp_path / "file.toml"
    fixed.write_text(
        CONFIG.read_text()
        + '\n[[operations]]\ninclude-path-regex = "/file$"\n'
        + f'parameters = {{ "path.project_id" = "{project}", "path.clip_id" = "{clip}" }}\n'
    )
    _, statuses = _run([f"{url}/schema", "-H", f"Authorization: Bearer {token}", "--checks", "all",
                        "--include-path-regex", "/file$", "--max-examples", str(int(EXAMPLES) * 4)],
                       tmp_path / "file.log", config=fixed)
    assert {200, 206, 416} <= set(statuses) and max(statuses) < 500  # the file logic was reached


def test_every_operation_with_an_invalid_token(served, tmp_path: Path) -> None:  # noqa: ANN001
    url, _, _ = served
    _, statuses = _run([f"{url}/schema", "-H", "Authorization: Bearer not-a-token", "--checks", "all",
                        "--max-examples", str(max(1, int(EXAMPLES) // 5))], tmp_path / "invalid.log")
    assert 401 in statuses and max(statuses) < 500
