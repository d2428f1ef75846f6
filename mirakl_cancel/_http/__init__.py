"""One HTTP exchange, done right: the layer below the client.

The transport (the only module that talks to aiohttp), the token sources it asks for a
bearer, the per-action poll guard and its on-disk memory, the pacing seam a fleet shares,
and the pure rules under them (URLs and trusted hosts, proxies and TLS, the retry
decision, the backoff). Nothing here knows about orders, jobs or stores.
"""
