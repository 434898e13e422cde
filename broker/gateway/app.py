"""The HTTP side: OpenAI's routes on Starlette (served by uvicorn), streams as server-sent events
(sse-starlette). Each completion request becomes one job of the site through :class:`Relay`."""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from prometheus_client import Histogram
from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from broker.gateway import api
from broker.gateway.errors import ApiError, ClientGone, Diverged
from broker.gateway.relay import Call, Relay
from broker.gateway.settings import GatewaySettings
from broker.runtime.logs import kv
from schemas.messages import Chunk, Final

log = logging.getLogger("fogmesh.gateway")
Handler = Callable[[Request], Awaitable[Response]]


def json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers, media_type="application/json")


def failure(error: ApiError) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    return json(error.body(), error.status, headers)


class Routes:
    """The gateway's endpoints, sharing its relay, keys, settings and counters."""

    def __init__(self, relay: Relay, keys: frozenset[str], settings: GatewaySettings, counters: dict[str, int],
                 latency: Histogram) -> None:
        self.relay, self.keys, self.settings = relay, keys, settings
        self.counters, self.latency = counters, latency

    def app(self) -> Starlette:
        routes = [Route("/health", self.health, methods=["GET"])]
        for path, handler, method in (("/v1/models", self.models, "GET"),
                                      ("/v1/models/{model:path}", self.model, "GET"),
                                      ("/v1/chat/completions", self.chat, "POST"),
                                      ("/v1/completions", self.completions, "POST")):
            routes.append(Route(path, self.guarded(handler, path), methods=[method]))
        return Starlette(routes=routes, exception_handlers={HTTPException: self.http_error, Exception: self.crash})

    # ------------------------------------------------------------------ around every /v1 route

    def guarded(self, handler: Handler, path: str) -> Handler:
        """The API key first; an ApiError becomes OpenAI's error shape; one log line per request."""

        async def route(request: Request) -> Response:
            t0 = request.state.t0 = time.monotonic()
            request.state.route = path  # the metrics' label: the route, not the path a client made up
            request.state.job, request.state.outcome = None, None
            try:
                self.authorize(request)
                response = await handler(request)
            except ApiError as exc:
                if request.state.outcome is None:  # the gateway's own answer, not a final of the site (counted)
                    request.state.outcome = exc.code
                    self.count({401: "unauthorized", 503: "unavailable", 504: "timeout"}.get(exc.status, "refused"))
                response = failure(exc)
            except ClientGone:
                self.count("client_gone")
                request.state.outcome, response = "client_gone", json({}, 499)
            if not isinstance(response, Streamed):  # a stream logs itself when it ends
                self.done(request, response.status_code, t0)
            return response

        return route

    def authorize(self, request: Request) -> None:
        if not self.keys:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "missing_api_key", "this gateway needs an API key: send the header "
                           "`Authorization: Bearer <key>` (the openai client's api_key)")
        given = token.strip().encode()
        if not any(hmac.compare_digest(given, key.encode()) for key in self.keys):
            raise ApiError(401, "invalid_api_key", "the API key is not valid for this gateway")

    def count(self, event: str) -> None:
        self.counters[event] = self.counters.get(event, 0) + 1

    def done(self, request: Request, status: int, t0: float) -> None:
        elapsed = time.monotonic() - t0
        self.latency.labels(request.state.route, str(status)).observe(elapsed)
        log.info(kv("request", method=request.method, path=request.url.path, job=request.state.job, http=status,
                    status=request.state.outcome, ms=round(elapsed * 1000, 1)))

    async def http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return failure(ApiError(exc.status_code, code, f"{request.method} {request.url.path}: {exc.detail}"))

    async def crash(self, request: Request, exc: Exception) -> Response:
        # the traceback follows from uvicorn ("Exception in ASGI application")
        log.error(kv("request_failed", path=request.url.path, job=getattr(request.state, "job", None),
                     error=repr(exc)))
        return failure(ApiError(500, "internal_error", "the gateway failed on this request; see its log"))

    # ------------------------------------------------------------------ the routes

    async def health(self, request: Request) -> Response:
        up = self.relay.connected
        body = {"status": "ok" if up else "unavailable", "broker": "connected" if up else "disconnected",
                "site": self.settings.site, **self.relay.site()}
        return json(body, 200 if up else 503)

    async def models(self, request: Request) -> Response:
        return json({"object": "list", "data": self.relay.models()})

    async def model(self, request: Request) -> Response:
        name = request.path_params["model"]
        for model in self.relay.models():
            if model["id"] == name:
                return json(model)
        raise ApiError(404, "model_not_found", f"no agent online nor the cloud tier holds model {name!r} "
                       "(GET /v1/models lists them)", "model")

    async def chat(self, request: Request) -> Response:
        return await self.complete(request, "chat")

    async def completions(self, request: Request) -> Response:
        return await self.complete(request, "completion")

    async def complete(self, request: Request, kind: api.Kind) -> Response:
        job = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{secrets.token_hex(12)}"
        request.state.job = job
        asked = api.parse(kind, await self.body(request), job)
        self.count("requests")
        call = self.relay.call(job)
        try:
            await call.submit(asked.prompt)
            result = await call.next(request.is_disconnected)
            if asked.stream and isinstance(result, Chunk):
                request.state.outcome = "streaming"
                return Streamed(self, request, call, asked, result)  # it closes the call when it ends
            while not isinstance(result, Final):
                result = await call.next(request.is_disconnected)
        finally:
            if request.state.outcome != "streaming":
                call.close()
        request.state.outcome = result.status
        self.count(result.status)
        error = api.refusal(result)
        if error is not None:
            raise error
        if asked.stream:  # answered before any chunk (the cloud tier sends none): one stream all the same
            return Streamed(self, request, call, asked, result)
        return json(api.completion(asked, result))

    async def body(self, request: Request) -> dict[str, Any]:
        limit = self.settings.max_body_bytes
        length = request.headers.get("content-length", "")
        too_large = ApiError(413, "too_large", f"the request body is over {limit} bytes (gateway.max_body_bytes)")
        if length.isdigit() and int(length) > limit:
            raise too_large
        raw = bytearray()
        try:
            async for part in request.stream():
                raw += part
                if len(raw) > limit:
                    raise too_large
        except ClientDisconnect as exc:
            raise ClientGone("the client left while sending its request") from exc
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, "not_json", f"the request body is not valid JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise ApiError(400, "not_object", f"the request body must be a JSON object, not {type(body).__name__}")
        return body


class Streamed(EventSourceResponse):
    """A job's answer as server-sent events: OpenAI's chunks, the last with its finish_reason, then
    ``[DONE]``; an error event if the job fails meanwhile. However the response ends (done, the client
    gone, the server stopping), the call is closed, which cancels a job that has not finished."""

    def __init__(self, routes: Routes, request: Request, call: Call, asked: api.Asked,
                 first: Chunk | Final) -> None:
        self.routes, self.request, self.call, self.asked = routes, request, call, asked
        super().__init__(self.events(first), sep="\n")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            state = self.request.state
            if self.call.final is None and state.outcome == "streaming":
                state.outcome = "client_gone"
                self.routes.count("client_gone")
            self.call.close()
            self.routes.done(self.request, self.status_code, self.request.state.t0)

    async def events(self, result: Chunk | Final) -> AsyncIterator[str]:
        asked, sent, state = self.asked, api.Sent(), self.request.state
        if asked.kind == "chat":
            yield self.data(api.event(asked, None))
        try:
            while isinstance(result, Chunk):
                new = sent.chunk(result)
                if new:
                    yield self.data(api.event(asked, new))
                result = await self.call.next()
        except (ApiError, Diverged) as exc:
            broke = exc if isinstance(exc, ApiError) else ApiError(502, "stream_diverged", f"{exc}; the job was "
                                                                   "cancelled: ask again")
            state.outcome = broke.code
            self.routes.count({503: "unavailable", 504: "timeout"}.get(broke.status, "diverged"))
            yield self.data(broke.body())
            return
        if state.outcome == "streaming":  # a final that came after chunks: not counted yet
            state.outcome = result.status
            self.routes.count(result.status)
        error = api.refusal(result)
        if error is None:
            try:
                new = sent.final(result)
            except Diverged as exc:
                error = ApiError(502, "stream_diverged", f"{exc}: the text streamed so far is not the answer; "
                                 "ask again")
                self.routes.count("diverged")
        if error is not None:
            yield self.data(error.body())
            return
        if new:
            yield self.data(api.event(asked, new))
        yield self.data(api.event(asked, "", api.finish_reason(asked, result)))
        if asked.include_usage:
            yield self.data(api.usage_event(asked, result))
        yield "[DONE]"

    @staticmethod
    def data(body: dict[str, Any]) -> str:
        return orjson.dumps(body).decode()
