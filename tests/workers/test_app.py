"""The Celery configuration the issue asks for, read without starting anything."""

from __future__ import annotations

from workers.app import app, celery_config
from workers.settings import WorkerSettings


def test_delivery_guarantees_and_json_only() -> None:
    settings = WorkerSettings.from_env({"FANOUT_TASK_TIME_LIMIT": "100",
                                        "FANOUT_RETRY_BACKOFF_MAX": "50"})
    conf = celery_config(settings)
    assert conf["accept_content"] == ["json"]
    assert conf["task_serializer"] == conf["result_serializer"] == "json"
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["broker_connection_max_retries"] is None
    assert conf["worker_send_task_events"] and conf["task_send_sent_event"]
    assert conf["task_time_limit"] == 100
    assert settings.soft_time_limit < conf["task_soft_time_limit"] < 100
    visibility = conf["broker_transport_options"]["visibility_timeout"]
    assert visibility > 100 + 50
    assert conf["task_default_queue"] == "fanout"


def test_the_task_is_registered_by_name_and_retries_are_ours() -> None:
    import workers.tasks  # noqa: F401 - registers the task, as the worker's include does

    task = app.tasks["fanout.copy"]
    assert task.acks_late
    assert task.max_retries is None  # the runner bounds retries by attempts and age
