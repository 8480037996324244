"""uvicorn's httptools protocol, with one change at shutdown: a connection that was accepted but
has not yet sent a whole request head is given a moment to send it, and is answered.

uvicorn closes such a connection at once when the signal comes. The client has sent its
request (or is about to) on a connection the server accepted, and sees a disconnect without
a response: it cannot tell whether the request was carried out, so a POST cannot be retried
safely. With this protocol, the request that arrives within the grace is served with
``Connection: close``; a connection that sends nothing in that time is closed as before. An
idle keep-alive connection (a response already sent) is still closed at once: a client that
reuses one must expect that, as HTTP says."""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# Long enough for a request already on its way; short beside timeout_graceful_shutdown, and
# all a silent client (a slow-loris) can add to the stop.
FIRST_REQUEST_GRACE_SECONDS = 2.0


class DrainingHttpToolsProtocol(HttpToolsProtocol):
    _draining = False

    def shutdown(self) -> None:
        if self.cycle is None and not self.transport.is_closing():
            self._draining = True
            self.loop.call_later(FIRST_REQUEST_GRACE_SECONDS, self._close_if_no_request)
            return
        super().shutdown()

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if self._draining and self.cycle is not None:
            self.cycle.keep_alive = False

    def _close_if_no_request(self) -> None:
        if self.cycle is None and not self.transport.is_closing():
            self.transport.close()
