"""The resumable file job behind `mirakl-cancel run`: read, plan, send, track, report.

It drives the one engine (`mirakl_cancel._engine`) and keeps its durability in a store
(`mirakl_cancel._stores`) through the store interface; `fleet` runs the same job as one
of many workers on PostgreSQL.
"""
