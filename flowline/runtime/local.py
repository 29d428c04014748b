"""The runtime's implementation of `flowline._binding.Local`: a pipeline's work with no runner."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from redis import Redis as SyncRedis

from .. import _binding
from .._settings import Settings, is_cluster_url
from .enqueue import direct
from .preview import Preview, preview

if TYPE_CHECKING:
    from .._pipeline import Pipeline
    from .._stages import Job, Source


class LocalOps:
    """`Pipeline.preview` and `Pipeline.enqueue_sync`, which need no `Runner`."""

    def preview(
        self, pipeline: Pipeline, event: Any, *, sequence: int, source: Source | str | None
    ) -> list[Preview]:
        return preview(pipeline, event, sequence=sequence, source=source)

    def enqueue_sync(self, pipeline: Pipeline, job: Job, redis_url: str | None) -> str:
        # Imported here: this module is imported with `flowline.runtime`, which the Redis store
        # itself imports.
        from ..backends.redis import write_sync

        settings = Settings.from_env(redis_url=redis_url)
        rows = direct(pipeline, job)
        client: Any
        if is_cluster_url(settings.redis_url):
            from .cluster import sync_cluster

            client = sync_cluster(settings)
        else:
            client = SyncRedis.from_url(settings.redis_url, **settings.redis_connect_options())
        try:
            write_sync(client, rows)
        finally:
            client.close()
        return rows[0].id


_binding.provide(LocalOps())
