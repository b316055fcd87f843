"""Hot-path statements with their SQL generated once.

peewee builds SQL text anew for every query, which costs more than SQLite itself spends running a
primary-key lookup or a single-row insert. The message path (auth check, enqueue, claim) runs a handful
of these per request, so they use cached statements here; values still go through each field's
db_value/python_value, so JSON and boolean columns behave exactly as through the model API.
"""

from __future__ import annotations

from typing import Any, TypeVar

import peewee

from lightabaco.store.handle import database

M = TypeVar("M", bound=peewee.Model)
# Keyed by the driver's parameter style too: one process may open SQLite, then PostgreSQL (tests do).
_select_cache: dict[tuple[type, str, str], tuple[str, list[peewee.Field]]] = {}
_insert_cache: dict[tuple[type, tuple[str, ...], str], tuple[str, list[peewee.Field]]] = {}


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def get_one(model: type[M], field_name: str, value: Any) -> M | None:
    """model.get_or_none(model.<field_name> == value), without rebuilding the SQL each call."""
    key = (model, field_name, _param())
    cached = _select_cache.get(key)
    if cached is None:
        fields = list(model._meta.sorted_fields)
        columns = ", ".join(_quote(f.column_name) for f in fields)
        where = _quote(model._meta.fields[field_name].column_name)
        sql = f"SELECT {columns} FROM {_quote(model._meta.table_name)} WHERE {where} = ? LIMIT 1"
        cached = _select_cache[key] = (placeholders(sql), fields)
    sql, fields = cached
    row = database.execute_sql(sql, (value,)).fetchone()
    if row is None:
        return None
    data = {f.name: (f.python_value(v) if v is not None else None) for f, v in zip(fields, row)}
    instance = model(__no_default__=True, **data)
    instance._dirty.clear()
    return instance


_exists_cache: dict[tuple[type, str, str], str] = {}


def exists(model: type[peewee.Model], field_name: str, value: Any) -> bool:
    """Whether a row with model.<field_name> == value exists (an indexed probe, SQL cached): lets a
    hot path skip a larger query built by peewee when there is nothing to find (most actors have
    no configs, yet every execution asks)."""
    key = (model, field_name, _param())
    sql = _exists_cache.get(key)
    if sql is None:
        field = model._meta.fields[field_name]
        sql = _exists_cache[key] = placeholders(
            f"SELECT 1 FROM {_quote(model._meta.table_name)} WHERE {_quote(field.column_name)} = ? LIMIT 1")
    field = model._meta.fields[field_name]
    return database.execute_sql(sql, (field.db_value(value),)).fetchone() is not None


def insert(model: type[peewee.Model], **values: Any) -> Any:
    """model.insert(**values).execute() with a cached statement per set of columns; fields left out
    take their declared defaults."""
    names = tuple(sorted(values))
    key = (model, names, _param())
    cached = _insert_cache.get(key)
    meta = model._meta
    if cached is None:
        fields = [f for f in meta.sorted_fields
                  if f.name in values or (f.default is not None and not isinstance(f, peewee.AutoField))]
        columns = ", ".join(_quote(f.column_name) for f in fields)
        marks = ", ".join("?" for _ in fields)
        sql = f"INSERT INTO {_quote(meta.table_name)} ({columns}) VALUES ({marks})"
        if _param() != "?" and meta.primary_key is not None:
            # PostgreSQL's drivers have no lastrowid: ask for the key (an AutoField's value, or ours).
            sql += f" RETURNING {_quote(meta.primary_key.column_name)}"
        cached = _insert_cache[key] = (placeholders(sql), fields)
    sql, fields = cached
    params = []
    for f in fields:
        if f.name in values:
            v = values[f.name]
        else:
            v = f.default() if callable(f.default) else f.default
        params.append(f.db_value(v) if v is not None else None)
    cursor = database.execute_sql(sql, params)
    if cursor.description:  # RETURNING (PostgreSQL)
        row = cursor.fetchone()
        return row[0] if row else None
    return cursor.lastrowid


def _param() -> str:
    return getattr(database.obj, "param", "?") if database.obj is not None else "?"


def placeholders(sql: str) -> str:
    """SQLite uses '?', PostgreSQL drivers '%s' (peewee's param style for that database)."""
    param = getattr(database.obj, "param", "?") if database.obj is not None else "?"
    return sql if param == "?" else sql.replace("?", param)


_update_cache: dict[tuple[type, tuple[str, ...], tuple[str, ...], str], tuple[str, list[peewee.Field]]] = {}


def update(model: type[peewee.Model], where: dict[str, Any], **values: Any) -> int:
    """UPDATE model SET values WHERE every where-field equals its value; returns the row count."""
    names = tuple(sorted(values))
    conds = tuple(sorted(where))
    key = (model, names, conds, _param())
    cached = _update_cache.get(key)
    meta = model._meta
    if cached is None:
        fields = [meta.fields[n] for n in names]
        cfields = [meta.fields[n] for n in conds]
        sets = ", ".join(f"{_quote(f.column_name)} = ?" for f in fields)
        tests = " AND ".join(f"{_quote(f.column_name)} = ?" for f in cfields)
        sql = f"UPDATE {_quote(meta.table_name)} SET {sets} WHERE {tests}"
        cached = _update_cache[key] = (placeholders(sql), fields + cfields)
    sql, fields = cached
    args = [values[n] for n in names] + [where[n] for n in conds]
    params = [f.db_value(v) if v is not None else None for f, v in zip(fields, args)]
    return database.execute_sql(sql, params).rowcount
