"""The ceiling of a Python HTTP stack: a FastAPI endpoint that answers a constant.

The serving benchmark runs it twice, each time with the same uvicorn options as the service:
with the project's own FastAPI/Starlette/uvicorn (what the framework costs us) and with a
fixed reference stack in a throw-away virtualenv (the yardstick the goals are ratios of).
"""

from fastapi import FastAPI

app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)


@app.post("/predict")
async def predict() -> dict[str, object]:
    return {"class_index": 0, "class_name": "setosa"}
