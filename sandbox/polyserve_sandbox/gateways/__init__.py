"""Gateway API in the sandbox: a gateway that honours HTTPRoute and GRPCRoute weights per
request, as Envoy does, so canary splits are real traffic splits here too.

The fleet registers GatewayClass ``polyserve-sandbox`` (controller
``polyserve.io/sandbox-gateway-controller``, ``Accepted=True``). Each Gateway of a class with
that controller gets a loopback address of its own (``status.addresses``) and, per listener
(``protocol: HTTP``), a server on ``address:port`` that speaks HTTP/1.1 and gRPC (h2c with
prior knowledge) on the same port. Routes attach through ``parentRefs`` (Gateway name,
namespace, ``sectionName``, ``port``); every request (HTTP) or call (gRPC) is matched,
given a backend by weight and forwarded to one of that Service's ready endpoints. Statuses
are written as the real controllers write them: GatewayClass ``Accepted``; Gateway
``Accepted``/``Programmed``, addresses and per-listener ``supportedKinds``,
``attachedRoutes`` and ``Accepted``/``Programmed``/``ResolvedRefs``/``Conflicted``; each
route's ``status.parents[]`` with ``Accepted`` and ``ResolvedRefs``.

Modules, pure first: ``routes`` (rules and matches, parsed), ``tables`` (what a port
serves, and precedence), ``conditions``, ``listeners`` (a Gateway's listeners, valid or
why not), ``attaching`` (what attaches where, every condition), ``statuses`` (the status
bodies); then ``upstreams`` (a backend by weight, an endpoint), ``http`` and ``grpc`` (the
two proxies), ``serving`` (one port, both protocols) and ``controller`` (the store,
addresses, ports, status writes). The pure ones do no I/O and know no clock.

Not emulated: TLS listeners (HTTPS, TLS), TCPRoute/UDPRoute/TLSRoute, ListenerSets, filters
other than the header modifiers, session persistence, retries beyond the one that keeps a
rolling pod from costing a request, and ``:authority`` matching of gRPC calls.
"""
