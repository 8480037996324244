"""What the ops page (files/prometheus/consoles/ops.html) shows: its panel titles, checked by the
controller-side render test and by the browser test on the appliance."""

PANELS = (
    "Request rate",
    "Error rate (5xx)",
    "Latency p50 / p99",
    "Rate-limited (1 h)",
    "Auth failures (1 h)",
    "Rolling accuracy",
    "Last good backup",
    "Certificate days left",
    "Predictions per class (1 h)",
    "Drift: PSI per feature",
)
