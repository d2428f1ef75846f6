"""What a client lets others see and veto: hooks, guards, log fields, metrics, traces.

Hooks observe and can never stop a request; guards are awaited and may refuse one (the
job's write-ahead marks). Metrics and OpenTelemetry are built on the hooks only, so
telemetry sees exactly what a user's hook sees.
"""
