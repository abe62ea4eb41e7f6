"""The protocol-neutral core: inference (:mod:`gateway.core.dataplane`) and repository control
(:mod:`gateway.core.repository_control`), over the request and response types of
:mod:`gateway.core.types`.

The transports decode their wire formats into these types, call the core, and encode what it
returns. The core imports the repository and runtime layers below it, never a transport or the
process layer above it: where it must reach up (a management request followed by the other worker
processes), the caller hands it a small protocol (:class:`gateway.core.repository_control.Peers`)
at construction.
"""
