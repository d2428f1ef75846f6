"""Durable state: the job store interface and its implementations.

`base` is the interface the job talks to (requests, send marks, action ids, last reads,
verdicts, claims); `sqlite` is the embedded journal, `pgjob` the fleet's job store on
PostgreSQL; `postgres` and `pgtracker` keep what a fleet of processes shares (the poll
ceiling, pacing, the schedule of reads). Only this folder knows SQL.
"""
