"""The Open Inference Protocol (KServe v2) below the transports.

``handlers`` holds the protocol logic that the REST front end
(``ml_service.api.routes.oip``) and the gRPC front end (``ml_service.api.oip_grpc``) share:
which model and version a call addresses, metadata, readiness, and inference from
protocol-neutral tensors. Errors are ``ApiError`` with an HTTP status; each front end maps
it to its own wire format.
"""
