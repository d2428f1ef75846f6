"""Proxies and TLS, through a small forwarding proxy and a TLS server on 127.0.0.1.

The proxy records every request it carries (absolute-form HTTP and CONNECT tunnels), so
each test checks that traffic really went through it, or really did not. `mirakl.test`
is never resolved: only the proxy ever sees that name, and it tunnels to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from conftest import serve
from yarl import URL

from mirakl_cancel import (
    Cancelation,
    CancelReason,
    CancelRequest,
    ClientCredentials,
    ConnectError,
    MiraklConnectClient,
    MiraklError,
    Money,
    StaticToken,
)
from mirakl_cancel._http.net import Network, network_options_from_env
from mirakl_cancel.simulator import SimLine, SimOrder, Simulator, SimulatorConfig

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")

HOST = "mirakl.test"


class ForwardingProxy:
    """A tiny HTTP proxy: forwards absolute-form requests, tunnels CONNECT to `tunnel_to`.

    Every upstream request is made with `Connection: close`, so one connection carries
    one request and each is recorded as (method, target, Proxy-Authorization or None).
    """

    def __init__(self, tunnel_to: tuple[str, int] | None = None) -> None:
        self.tunnel_to = tunnel_to
        self.seen: list[tuple[str, str, str | None]] = []
        self.url = ""

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
        headers = [line for line in lines[1:] if line]
        auth = next((h.split(":", 1)[1].strip() for h in headers
                     if h.lower().startswith("proxy-authorization:")), None)
        self.seen.append((method, target, auth))
        if method == "CONNECT":
            host, port = target.rsplit(":", 1)
            upstream = self.tunnel_to or (host, int(port))
            up_reader, up_writer = await asyncio.open_connection(*upstream)
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
        else:
            url = URL(target)
            up_reader, up_writer = await asyncio.open_connection(url.host, url.port)
            kept = [h for h in headers if not h.lower().startswith(("proxy-", "connection:"))]
            up_writer.write("\r\n".join(
                [f"{method} {url.raw_path_qs} {version}", *kept, "Connection: close", "", ""]
            ).encode("latin-1"))
        with contextlib.suppress(asyncio.CancelledError):  # the test ended: just stop
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[ForwardingProxy]:
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        try:
            yield self
        finally:
            server.close()


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for mirakl.test (server and client use), and its key."""
    where = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", str(where / "key.pem"), "-out", str(where / "cert.pem"),
         "-subj", f"/CN={HOST}", "-addext", f"subjectAltName=DNS:{HOST}",
         "-addext", "extendedKeyUsage=serverAuth,clientAuth"],
        check=True, capture_output=True)
    return where / "cert.pem", where / "key.pem"


def a_request(order_id: str = "0001_P-A") -> CancelRequest:
    return CancelRequest(order_id, [Cancelation(
        order_line_id=f"{order_id}-1", quantity=1, reason=CancelReason.OUT_OF_STOCK,
        price=Money("9.99", "EUR"), shipping_price=Money("0", "EUR"))])


def api_app(seen: list[str]) -> web.Application:
    """The two endpoints, answering as Mirakl Connect does (enough for the client)."""

    async def cancel(request: web.Request) -> web.Response:
        seen.append(f"{request.method} {request.path}")
        return web.json_response({"action_id": "act-1"}, status=202)

    async def status(request: web.Request) -> web.Response:
        seen.append(f"{request.method} {request.path}")
        return web.json_response({"id": request.match_info["action_id"], "status": "SUCCESS"})

    app = web.Application()
    app.router.add_post("/api/v2/orders/{order_id}/cancel", cancel)
    app.router.add_get("/api/v2/orders/actions/{action_id}", status)
    return app


@contextlib.asynccontextmanager
async def tls_server(app: web.Application, context: ssl.SSLContext) -> AsyncIterator[int]:
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


def server_context(cert: tuple[Path, Path], *, client_cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*cert)
    if client_cert:
        context.load_verify_locations(cert[0])
        context.verify_mode = ssl.CERT_REQUIRED
    return context


@pytest.fixture
def no_env_proxy(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy",
                 "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch

@pytest.fixture
def cli_logger() -> Iterator[None]:
    """`main()` in-process sets up the CLI's logging: give the logger back as it was."""
    logger = logging.getLogger("mirakl_cancel")
    saved = (logger.level, list(logger.handlers), logger.propagate)
    yield
    logger.setLevel(saved[0])
    logger.handlers[:] = saved[1]
    logger.propagate = saved[2]



async def test_explicit_proxy_carries_the_token_fetch_and_every_request(
        no_env_proxy: pytest.MonkeyPatch) -> None:
    config = SimulatorConfig(time_scale=0.001, processing_delay=(1.0, 2.0))
    async with Simulator(config) as sim, ForwardingProxy().running() as proxy:
        sim.add_order(SimOrder(id="0001_P-A", lines=[
            SimLine(id="0001_P-A-1", product_id="P", quantity=2, price=9.99)]))  # type: ignore[arg-type]
        auth = ClientCredentials(config.client_id, config.client_secret, sim.token_url)
        proxied = proxy.url.replace("http://", "http://squid:s3cr3t-pw@")
        async with MiraklConnectClient(auth=auth, base_url=sim.base_url, proxy=proxied,
                                       min_poll_interval=0.06) as client:
            accepted = await client.cancel(a_request())
            await client.get_action_status(accepted.action_id)
            assert "s3cr3t" not in repr(client) + repr(client.transport.network)
    assert [(method, URL(target).path) for method, target, _ in proxy.seen] == [
        ("POST", "/oauth/token"), ("POST", "/v2/orders/0001_P-A/cancel"),
        ("GET", f"/v2/orders/actions/{accepted.action_id}")]
    assert {auth for _, _, auth in proxy.seen} == {"Basic c3F1aWQ6czNjcjN0LXB3"}


async def test_credentials_with_their_own_proxy_fetch_the_token_through_it(
        no_env_proxy: pytest.MonkeyPatch) -> None:
    config = SimulatorConfig(time_scale=0.001)
    async with Simulator(config) as sim, ForwardingProxy().running() as proxy:
        auth = ClientCredentials(config.client_id, config.client_secret, sim.token_url,
                                 proxy=proxy.url)
        async with MiraklConnectClient(auth=auth, base_url=sim.base_url) as client:
            await client.list_orders(["0001_X-A"])
    assert [(method, URL(target).path) for method, target, _ in proxy.seen] == [
        ("POST", "/oauth/token")]


async def test_env_proxy_tunnels_https_and_the_custom_ca_is_checked(
        no_env_proxy: pytest.MonkeyPatch, cert: tuple[Path, Path]) -> None:
    seen: list[str] = []
    async with tls_server(api_app(seen), server_context(cert)) as port, \
            ForwardingProxy(tunnel_to=("127.0.0.1", port)).running() as proxy:
        no_env_proxy.setenv("HTTPS_PROXY", proxy.url)
        no_env_proxy.setenv("NO_PROXY", "elsewhere.example")
        trusted = ssl.create_default_context(cafile=str(cert[0]))
        async with MiraklConnectClient(auth=StaticToken("t"), base_url=f"https://{HOST}/api",
                                       ssl=trusted) as client:
            accepted = await client.cancel(a_request())
            status = await client.get_action_status(accepted.action_id)
        assert status.raw_status == "SUCCESS"
        assert [(m, t) for m, t, _ in proxy.seen] == [("CONNECT", f"{HOST}:443")]
        assert seen == ["POST /api/v2/orders/0001_P-A/cancel", "GET /api/v2/orders/actions/act-1"]

        # The system's CAs do not know this certificate: refused before anything is sent.
        async with MiraklConnectClient(auth=StaticToken("t"),
                                       base_url=f"https://{HOST}/api") as client:
            with pytest.raises(ConnectError):
                await client.cancel(a_request())
        assert len(seen) == 2

        # trust_env=False: the environment's proxy is ignored (and mirakl.test would not
        # resolve): checked without a connection, to stay off the network.
        assert Network(trust_env=False).proxy_for(URL(f"https://{HOST}/api")) == (None, None)


async def test_mutual_tls_from_the_cli_environment(
        no_env_proxy: pytest.MonkeyPatch, cert: tuple[Path, Path]) -> None:
    seen: list[str] = []
    async with tls_server(api_app(seen), server_context(cert, client_cert=True)) as port, \
            ForwardingProxy(tunnel_to=("127.0.0.1", port)).running() as proxy:
        options = network_options_from_env({
            "MIRAKL_PROXY": proxy.url, "MIRAKL_CA_BUNDLE": str(cert[0]),
            "MIRAKL_CLIENT_CERT": str(cert[0]), "MIRAKL_CLIENT_KEY": str(cert[1])})
        async with MiraklConnectClient(auth=StaticToken("t"), base_url=f"https://{HOST}/api",
                                       **options) as client:
            await client.cancel(a_request())
        # Without the client certificate the server refuses the handshake.
        options = network_options_from_env({"MIRAKL_PROXY": proxy.url,
                                            "MIRAKL_CA_BUNDLE": str(cert[0])})
        async with MiraklConnectClient(auth=StaticToken("t"), base_url=f"https://{HOST}/api",
                                       **options) as client:
            with pytest.raises(MiraklError):  # refused at the handshake (or just after it)
                await client.cancel(a_request())
    assert seen == ["POST /api/v2/orders/0001_P-A/cancel"]
    assert network_options_from_env({}) == {}


async def test_an_env_proxy_never_captures_loopback(no_env_proxy: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    async with ForwardingProxy().running() as proxy:
        no_env_proxy.setenv("HTTP_PROXY", proxy.url)
        no_env_proxy.setenv("http_proxy", proxy.url)
        async with serve(api_app(seen)) as url, \
                MiraklConnectClient(auth=StaticToken("t"), base_url=f"{url}/api") as client:
            await client.cancel(a_request())
    assert proxy.seen == []
    assert seen == ["POST /api/v2/orders/0001_P-A/cancel"]


def test_no_proxy_rules_and_credentials(no_env_proxy: pytest.MonkeyPatch) -> None:
    no_env_proxy.setenv("HTTPS_PROXY", "http://u:p%40ss@proxy.corp:3128")
    no_env_proxy.setenv("NO_PROXY", ".internal.corp,mirakl.test:8443")
    network = Network()
    proxy, headers = network.proxy_for(URL("https://miraklconnect.com/api"))
    assert str(proxy) == "http://proxy.corp:3128"
    assert headers == {"Proxy-Authorization": "Basic dTpwQHNz"}  # u:p@ss
    assert network.proxy_for(URL("https://auth.internal.corp/oauth")) == (None, None)
    assert network.proxy_for(URL("https://mirakl.test:8443/api")) == (None, None)
    assert network.proxy_for(URL("https://localhost:8443/api")) == (None, None)
    assert network.proxy_for(URL("https://[::1]/api")) == (None, None)
    # Read once per host: a later change of the environment does not apply to this client.
    no_env_proxy.setenv("HTTPS_PROXY", "http://other:1")
    assert str(network.proxy_for(URL("https://miraklconnect.com/x"))[0]) == \
        "http://proxy.corp:3128"
    no_env_proxy.setenv("HTTPS_PROXY", "not a url")
    assert Network().proxy_for(URL("https://miraklconnect.com/x")) == (None, None)
    assert "p@ss" not in repr(Network(proxy="http://u:p%40ss@proxy.corp:3128"))


def test_bad_proxy_and_ssl_values_are_refused_without_echoing_secrets() -> None:
    with pytest.raises(ValueError, match="proxy must be") as bad:
        MiraklConnectClient(auth=StaticToken("t"), proxy="socks5://u:hunter2@proxy:1080")
    assert "hunter2" not in str(bad.value)
    with pytest.raises(TypeError, match="SSLContext"):
        MiraklConnectClient(auth=StaticToken("t"), ssl=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="proxy must be"):
        ClientCredentials("id", "secret", proxy="ftp://proxy")


def test_cli_network_settings_are_checked_first(
        cli_logger: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        cert: tuple[Path, Path]) -> None:
    with pytest.raises(ValueError, match="MIRAKL_CA_BUNDLE: cannot load"):
        network_options_from_env({"MIRAKL_CA_BUNDLE": "/nonexistent/ca.pem"})
    with pytest.raises(ValueError, match="MIRAKL_CLIENT_CERT: cannot load"):
        network_options_from_env({"MIRAKL_CLIENT_CERT": "/nonexistent/c.pem"})
    with pytest.raises(ValueError, match="proxy must be"):
        network_options_from_env({"MIRAKL_PROXY": "socks5://u:pw@h:1"})
    from mirakl_cancel.cli import main

    monkeypatch.setenv("MIRAKL_CONNECT_TOKEN", "t")
    monkeypatch.setenv("MIRAKL_CA_BUNDLE", "/nonexistent/ca.pem")
    assert main(["status", "act-1"]) == 2
    assert "MIRAKL_CA_BUNDLE" in capsys.readouterr().err
