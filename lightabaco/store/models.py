"""Peewee models: actors, the mailbox, executions, workers, results and logs.

Times are epoch seconds (float, UTC) so that comparisons and leases are cheap; the core formats them
for display. Keys are tenant-scoped as in Abaco: actor `{tenant}_{id}`, execution and worker
`{actor_dbid}_{id}`. State lives on the actor row (`state`, JSON).
"""

from __future__ import annotations

import json
from typing import Any

import peewee

from lightabaco.store.handle import database


class JSONField(peewee.TextField):
    """Any JSON value, stored as text. None is stored as SQL NULL."""

    def db_value(self, value: Any) -> str | None:
        return None if value is None else json.dumps(value)

    def python_value(self, value: str | None) -> Any:
        return None if value is None else json.loads(value)


class BaseModel(peewee.Model):
    class Meta:
        database = database
        legacy_table_names = False


class Actor(BaseModel):
    dbid = peewee.CharField(primary_key=True)  # {tenant}_{id}
    id = peewee.CharField(index=True)
    tenant = peewee.CharField(index=True)
    name = peewee.CharField(null=True)
    image = peewee.CharField()
    description = peewee.TextField(default="")
    owner = peewee.CharField(index=True)
    stateless = peewee.BooleanField(default=True)
    type = peewee.CharField(default="none")
    status = peewee.CharField(default="SUBMITTED")
    status_message = peewee.TextField(default="")
    state = JSONField(default=dict)
    default_environment = JSONField(default=dict)
    hints = JSONField(default=list)
    link = peewee.CharField(default="")
    webhook = peewee.TextField(default="")
    privileged = peewee.BooleanField(default=False)
    use_container_uid = peewee.BooleanField(default=False)
    run_as_executor = peewee.BooleanField(default=False)
    max_workers = peewee.IntegerField(null=True)
    mem_limit = peewee.CharField(null=True)
    max_cpus = peewee.BigIntegerField(null=True)
    max_run_time = peewee.FloatField(null=True)  # lightabaco: per-actor execution time limit (s)
    token = JSONField(default="false")  # bool, or Abaco's 'true'/'false' string when defaulted
    queue = peewee.CharField(default="default")
    log_ex = peewee.IntegerField(null=True)
    cron_on = peewee.BooleanField(default=False)
    cron_schedule = peewee.CharField(null=True)
    cron_next_ex = peewee.CharField(null=True)
    mounts = JSONField(default=list)
    uid = peewee.CharField(null=True)
    gid = peewee.CharField(null=True)
    tasdir = peewee.CharField(null=True)
    revision = peewee.IntegerField(default=1)
    api_server = peewee.CharField(default="")
    create_time = peewee.FloatField()
    last_update_time = peewee.FloatField()
    seq = peewee.IntegerField(default=0, index=True)  # creation order for listings
    # Names (or PREFIX* entries) of variables that message senders may set although they are refused
    # by default (lightabaco/abaco/message_env.py); only the owner (UPDATE) sets it. NULL = none.
    message_env_allow = JSONField(null=True, default=list)
    # none | api | outbound | host (lightabaco/abaco/network.py). NULL: registered before network
    # modes existed; runs with the instance's `network` setting, as it did then.
    network = peewee.CharField(null=True)
    # The image ID (config digest) the current revision runs: recorded when its image is prepared, and
    # compared with the local store's tag to follow a tag that moved (abaco/image_tags.py).
    image_digest = peewee.CharField(null=True)


class Message(BaseModel):
    """The durable mailbox: one row per accepted message, deleted when acknowledged."""

    id = peewee.AutoField()  # FIFO order
    actor_dbid = peewee.CharField()
    execution_id = peewee.CharField()
    body = peewee.BlobField()
    content_type = peewee.CharField()  # str | application/json | application/octet-stream
    env = JSONField(default=dict)  # per-message environment (query params + controller keys)
    stateless = peewee.BooleanField(default=True)  # copied from the actor: strict FIFO when False
    created = peewee.FloatField()
    lease_owner = peewee.CharField(null=True)  # worker id holding the lease
    lease_until = peewee.FloatField(null=True)
    attempts = peewee.IntegerField(default=0)

    class Meta:
        indexes = ((("actor_dbid", "lease_owner", "id"), False),)


class Execution(BaseModel):
    seq = peewee.AutoField()  # creation order
    dbid = peewee.CharField(unique=True)  # {actor_dbid}_{id}
    id = peewee.CharField()
    actor_dbid = peewee.CharField(index=True)
    tenant = peewee.CharField()
    api_server = peewee.CharField(default="")
    executor = peewee.CharField(default="")
    worker_id = peewee.CharField(null=True)
    status = peewee.CharField(default="SUBMITTED")
    message_received_time = peewee.FloatField()
    start_time = peewee.FloatField(null=True)
    finish_time = peewee.FloatField(null=True)
    runtime = peewee.IntegerField(default=0)
    cpu = peewee.BigIntegerField(default=0)
    io = peewee.BigIntegerField(default=0)
    exit_code = JSONField(null=True)
    final_state = JSONField(null=True)
    force_quit = peewee.BooleanField(default=False)
    live_log_path = peewee.TextField(null=True)  # readable while RUNNING
    attempts = peewee.IntegerField(default=0)
    status_message = peewee.TextField(default="")  # why an execution ended in ERROR
    host = peewee.CharField(null=True)  # the host whose pool ran it (settings.host_id())

    class Meta:
        # The per-sender queue cap counts unfinished executions by (tenant, executor, status).
        indexes = ((("tenant", "executor", "status"), False),)


class Worker(BaseModel):
    dbid = peewee.CharField(primary_key=True)  # {actor_dbid}_{id}
    id = peewee.CharField(index=True)
    actor_dbid = peewee.CharField(index=True)
    tenant = peewee.CharField()
    status = peewee.CharField(default="REQUESTED")
    image = peewee.CharField(default="")
    revision = peewee.IntegerField(default=1)
    location = peewee.CharField(default="")
    cid = peewee.CharField(default="")
    ch_name = peewee.CharField(default="")
    host_id = peewee.CharField(default="")
    host_ip = peewee.CharField(default="127.0.0.1")
    pid = peewee.IntegerField(null=True)
    create_time = peewee.FloatField()
    last_execution_time = peewee.FloatField(null=True)
    last_health_check_time = peewee.FloatField(null=True)
    status_message = peewee.TextField(default="")


class Result(BaseModel):
    id = peewee.AutoField()  # pop order
    execution_dbid = peewee.CharField(index=True)
    data = peewee.BlobField()
    created = peewee.FloatField(index=True)


class Log(BaseModel):
    execution_dbid = peewee.CharField(primary_key=True)
    actor_dbid = peewee.CharField(index=True)
    text = peewee.TextField(default="")
    truncated = peewee.BooleanField(default=False)
    expires = peewee.FloatField(null=True, index=True)  # None: never


class Counter(BaseModel):
    """Monotonic counters (total actors ever created, ...)."""

    name = peewee.CharField(primary_key=True)
    value = peewee.IntegerField(default=0)


class ResultUsage(BaseModel):
    """Stored results per actor owner (`{tenant}/{owner}`), for the per-user results quota. Updated in
    the transaction that stores or removes a result; housekeeping recomputes it from `result`."""

    owner = peewee.CharField(primary_key=True)
    bytes = peewee.BigIntegerField(default=0)
    count = peewee.BigIntegerField(default=0)


MODELS: list[type[BaseModel]] = [Actor, Message, Execution, Worker, Result, Log, Counter, ResultUsage]
