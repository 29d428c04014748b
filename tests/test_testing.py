"""`flowline.testing`: pipelines run in memory, time moved by the test, failures on chosen
attempts, the pytest fixture; and the fanbase example tested the way a user would."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from examples.fanbase import channels
from examples.fanbase.fanbase_pb2 import FanbaseEvent
from examples.fanbase.pipeline import pipeline as fanbase
from flowline import Backoff, Cron, Fail, Job, PipelineError, Pipelines, Queue, Route, Stream
from flowline.testing import ManualClock, SettleTimeout, run

from .conftest import ROOT


def recorder(**stage: Any) -> Any:
    p = Stream("memo", json.loads) >> Route(lambda e: [Job("work", e)]) >> Queue("memo")
    p.dequeue("work", lambda job: {"attempt": job.attempt, **job.data}, **stage)
    return p


def event(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


class TestTime:
    async def test_a_five_minute_backoff_settles_at_once(self) -> None:
        """Virtual time jumps to the retry: the test waits for nothing."""
        p = recorder(retries=2, backoff=Backoff(base=300, jitter=False))
        async with run(p) as app:
            start = app.clock.time()
            app.fail("work", on=1)
            await app.publish(event(n=1))
            await app.settle()
            [done] = app.completed("work")
            assert (done.attempt, done.result) == (2, {"attempt": 2, "n": 1})
            assert app.clock.time() - start == pytest.approx(300, abs=1)
            [retry] = app.retried("work")
            assert retry.delay == 300

    async def test_a_delayed_job_waits_until_settle_moves_time(self) -> None:
        async with run(recorder()) as app:
            job_id = await app.enqueue("work", {"n": 2}, delay=timedelta(hours=2).total_seconds())
            info = await app.job(job_id)
            assert info is not None
            assert info.state == "delayed"
            await app.settle()
            info = await app.job(job_id)
            assert info is not None
            assert (info.state, info.result) == (
                "completed",
                {"attempt": 1, "n": 2},
            )

    async def test_advance_fires_every_cron_tick_on_the_way(self) -> None:
        p = Cron(600, topic="every-10-min") >> Route(
            lambda tick: [Job("tick", {"at": tick.scheduled.isoformat()})]
        )
        p = p >> Queue("memo-cron")
        p.dequeue("tick", lambda job: job.data["at"])
        async with run(p, clock=ManualClock(start=1_800_000_000)) as app:
            await app.advance(3600)
            ticks = [e.result for e in app.completed("tick")]
            assert len(ticks) == 6
            assert len(set(ticks)) == 6  # each tick once
            assert all(e.id.startswith("cron:every-10-min:") for e in app.completed())
            await app.settle()  # ticks still ahead are not waited for
            assert len(app.completed("tick")) == 6

    async def test_settle_gives_up_on_a_handler_that_never_returns(self) -> None:
        p = recorder()
        forever = asyncio.Event()

        @p.dequeue("stuck")
        async def stuck(job: Any) -> None:
            await forever.wait()

        async with run(p) as app:
            await app.enqueue("stuck")
            with pytest.raises(SettleTimeout, match=r"Queue\('memo'\): 0 ready, 1 running"):
                await app.settle(within=0.3)
            forever.set()
            await app.settle()
            assert [e.topic for e in app.completed()] == ["stuck"]

    async def test_time_does_not_go_backwards(self) -> None:
        async with run(recorder()) as app:
            with pytest.raises(ValueError, match="only goes forward"):
                await app.advance(-1)


class TestFailures:
    async def test_failing_every_attempt_ends_in_a_dead_letter(self) -> None:
        async with run(recorder(retries=2, backoff=Backoff(base=60))) as app:
            app.fail("work", on=range(1, 10), error=ConnectionError("provider down"))
            await app.publish(event(n=3))
            await app.settle()
            assert app.completed() == []
            [failed] = app.failed("work")
            stage = "[while running stage 'work']"
            assert str(failed.error) == f"ConnectionError: provider down {stage}"
            [letter] = await app.dead_letters()
            assert (letter.record["job_id"], letter.record["attempts"]) == ("memo:1:0", 3)
            assert len(app.events("error:job")) == 3

    async def test_fail_raises_what_it_is_given(self) -> None:
        async with run(recorder(retries=5)) as app:
            app.fail("work", on=1, error=Fail("no retry"))
            await app.publish(event(n=4))
            await app.settle()
            assert [e.topic for e in app.failed()] == ["work"]
            assert app.retried() == []

    async def test_bad_arguments_say_what_is_wrong(self) -> None:
        async with run(recorder()) as app:
            with pytest.raises(PipelineError, match=r"no pipeline here dequeues topic 'nope' "):
                app.fail("nope")
            with pytest.raises(PipelineError, match=r"attempts count from 1; got \[0\]"):
                app.fail("work", on=0)
            with pytest.raises(PipelineError, match=r"dequeued topics: work"):
                await app.enqueue("nope")
            assert app.events() == []

    async def test_several_pipelines_need_the_one_to_publish_to(self) -> None:
        a, b = recorder(), Stream("other", json.loads) >> Route(lambda e: []) >> Queue("other")
        b.dequeue("x", lambda job: None)
        async with run(Pipelines(a, b)) as app:
            with pytest.raises(PipelineError, match="several pipelines run here"):
                await app.publish(event(n=5))
            assert await app.publish(event(n=5), pipeline=a) == 1


class TestLooking:
    async def test_emits_to_a_subject_are_kept(self) -> None:
        p = recorder()

        @p.dequeue("announce")
        async def announce(job: Any) -> int:
            return await job.emit("announcements", b"hello")

        async with run(p) as app:
            await app.enqueue("announce")
            await app.settle()
            assert app.published("announcements") == [b"hello"]
            assert [e.result for e in app.completed("announce")] == [1]

    async def test_pipeline_methods_reach_the_memory_backends(self) -> None:
        """While it runs, the pipeline's own publish, enqueue and queue handles use memory."""
        p = recorder()
        async with run(p) as app:
            await p.publish(event(n=6))
            job_id = await p.enqueue("work", {"n": 7}, key="seven")
            await app.settle()
            info = await p.queue("memo").job(job_id)
            assert info is not None
            assert info.result == {"attempt": 1, "n": 7}
            counts = await p.queue("memo").counts()
            assert (counts.ready, counts.running, counts.delayed, counts.dead) == (0, 0, 0, 0)
            assert sorted(e.id for e in app.completed()) == ["key:seven", "memo:1:0"]


class TestFanbaseExample:
    async def test_a_follow_welcomes_the_fan_and_tells_the_talent(self) -> None:
        async with run(fanbase) as app:
            await app.publish(FanbaseEvent(fan="fan-1", talent="talent-1", action="followed"))
            await app.settle()
            [welcome] = app.completed("notify-fan-following")
            assert welcome.result["sent"]
            assert welcome.result["to"] == "ada@example.com"
            assert [e.result["to"] for e in app.completed("notify-talent-following")] == [
                "nina@example.com"
            ]
            assert app.events("error") == []

    async def test_an_unknown_fan_is_dead_lettered_after_its_retries(self) -> None:
        async with run(fanbase) as app:
            await app.publish(FanbaseEvent(fan="nobody", talent="talent-1", action="unfollowed"))
            await app.settle()
            [failed] = app.failed("confirm-fan-unfollowing")
            assert "no user 'nobody'" in str(failed.error)
            [letter] = await app.dead_letters()
            assert letter.record["topic"] == "confirm-fan-unfollowing"

    async def test_the_daily_digest_goes_out_at_nine_in_paris(self) -> None:
        nine_paris = 1_796_112_000  # 2026-12-01 08:00 UTC, 09:00 in Paris
        async with run(channels.app, clock=ManualClock(start=nine_paris - 60)) as app:
            await app.publish(
                FanbaseEvent(fan="fan-2", talent="talent-2", action="followed"),
                pipeline=channels.notifications,
            )
            await app.settle()
            assert app.completed(channels.DIGEST_JOB) == []
            await app.advance(120)
            digests = app.completed(channels.DIGEST_JOB)
            assert sorted(e.result["talent"] for e in digests) == ["talent-1", "talent-2"]
            assert {e.result["scheduled"] for e in digests} == {"2026-12-01T08:00:00+00:00"}


class TestPytestPlugin:
    def run_pytest(self, tmp_path: Path, test: str, ini: str = "") -> subprocess.CompletedProcess:
        (tmp_path / "test_user.py").write_text(textwrap.dedent(test))
        (tmp_path / "pytest.ini").write_text(
            f"[pytest]\nasyncio_mode = auto\n{textwrap.dedent(ini)}"
        )
        return subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
            cwd=tmp_path,
            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=120,
        )

    def test_the_fixture_runs_the_marked_target(self, tmp_path: Path) -> None:
        result = self.run_pytest(
            tmp_path,
            """
            import pytest
            from examples.fanbase.fanbase_pb2 import FanbaseEvent

            @pytest.mark.flowline("examples.fanbase.pipeline:pipeline")
            async def test_follow(flowline_app):
                follow = FanbaseEvent(fan="fan-1", talent="talent-1", action="followed")
                await flowline_app.publish(follow)
                await flowline_app.settle()
                assert flowline_app.completed("notify-fan-following")[0].result["sent"]
                assert flowline_app.completed("notify-fan-following")[0].result["to"] == "x"
            """,
        )
        # The assertion that must fail does, past the fixture: the fixture ran the pipeline.
        assert "1 failed" in result.stdout, result.stdout + result.stderr
        assert "assert 'ada@example.com' == 'x'" in result.stdout

    def test_the_ini_option_names_the_target(self, tmp_path: Path) -> None:
        result = self.run_pytest(
            tmp_path,
            """
            async def test_unfollow(flowline_app):
                data = {"fan": "fan-3", "talent": "talent-2"}
                await flowline_app.enqueue("confirm-fan-unfollowing", data)
                await flowline_app.settle()
                [done] = flowline_app.completed()
                assert done.result["to"] == "linus@example.com"
            """,
            "flowline_target = examples.fanbase.pipeline:pipeline\n",
        )
        assert "1 passed" in result.stdout, result.stdout + result.stderr

    def test_no_target_is_a_one_line_usage_error(self, tmp_path: Path) -> None:
        result = self.run_pytest(tmp_path, "async def test_x(flowline_app):\n    pass\n")
        assert "flowline_app needs a target: mark the test @pytest.mark.flowline" in result.stdout
        assert "Traceback" not in result.stdout

    def test_a_bad_target_names_it(self, tmp_path: Path) -> None:
        result = self.run_pytest(
            tmp_path,
            "async def test_x(flowline_app):\n    pass\n",
            "flowline_target = examples.nothing:here\n",
        )
        assert "flowline_target: cannot import 'examples.nothing'" in result.stdout

    def test_the_readmes_examples_pass(self, tmp_path: Path) -> None:
        """The README's testing section runs as written."""
        readme = (ROOT / "README.md").read_text()
        section = readme.split("## Testing without servers", 1)[1].split("\n## ", 1)[0]
        blocks = [b.split("```", 1)[0] for b in section.split("```python\n")[1:]]
        assert len(blocks) == 2
        result = self.run_pytest(tmp_path, "import pytest\n" + "\n\n".join(blocks))
        assert "2 passed" in result.stdout, result.stdout + result.stderr
