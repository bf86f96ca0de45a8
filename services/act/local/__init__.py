"""The whole streaming system on one machine: `actctl up`, `actctl ingest`, `actctl down`.

- `state`: the record of a running system (`<state dir>/run.json`): which processes `up`
  started, their pids, ports and logs, and which of the broker and PostgreSQL it started.
- `processes`: detached service processes, their identity across pid reuse, and stopping them
  (SIGTERM, a bounded wait, then SIGKILL of everything left in their session).
- `stack`: the broker and PostgreSQL: reused when they answer, else started with the
  deploy/local scripts (and then stopped again by `down`).
- `system`: `bring_up` / `bring_down` / `inspect`, the orchestration.
- `ingest`: JSONL, CSV, Parquet files and folders of images as items on act.items.v1.
- `cli`: the typer commands that actctl registers.

docs/local.md describes the commands and the ingest format.
"""
