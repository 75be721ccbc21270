"""The workers' Celery application, configured from `Settings` when first used (not at
import); the configuration itself, and the task names, are app/broker.py's."""

from __future__ import annotations

import gc
from typing import Any

from celery import Celery
from celery.signals import worker_init, worker_process_init

from app.broker import celery_config
from app.config import get_settings
from workers.base import ProcessTask

celery_app = Celery("rrmm", include=["workers.tasks"], task_cls=ProcessTask)


@celery_app.on_configure.connect
def _configure(sender: Celery, **_: Any) -> None:
    sender.conf.update(celery_config(get_settings()))


@worker_init.connect
def _freeze_heap(**_: Any) -> None:
    # Before the pool forks: what the main process has built (modules, settings, the app)
    # lives as long as the worker, so the garbage collector stops scanning it in every
    # child (~0.14 ms per delivery measured, ECOSYSTEM.md) and the children no longer
    # touch, and so copy, the pages it is on.
    gc.collect()
    gc.freeze()


@worker_process_init.connect
def _fresh_connections(**_: Any) -> None:
    # A forked child must not reuse the parent's database connections.
    ProcessTask.forget_process_state()
