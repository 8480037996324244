"""Every HTTP route of the service, one module per group of paths (the OpenAPI tags):

* ``login``: POST /token, POST /token/revoke
* ``predict``: POST /predict, GET /model/info, POST /feedback
* ``oip``: the Open Inference Protocol over REST, /v2 and below (its gRPC front end,
  not an HTTP route, is ``ml_service.api.oip_grpc``)
* ``health``: GET /health/live, GET /health/ready
* ``scrape``: GET /metrics
* ``admin``: /admin/models..., /admin/users

Routes only read and write HTTP; the logic they call lives outside ``api/``.
"""
