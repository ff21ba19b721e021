"""Custom device models, models.toml (tag models): list, add, remove."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from ... import config
from ...service.listings import models_doc
from ..schemas import ModelBody, ModelChangeDoc, ModelsDoc, Name, error_responses
from ..state import Agent

__all__ = ["add_reads", "add_writes"]


def add_reads(app: FastAPI, agent: Agent) -> None:
    """GET /models"""

    @app.get("/models", response_model=ModelsDoc, responses=error_responses(401), tags=["models"],
             summary="Custom device models (models.toml)")
    def models() -> JSONResponse:
        return JSONResponse(models_doc(config.load_models(agent.paths.models_file)))


def add_writes(app: FastAPI, agent: Agent) -> None:
    """POST /models, DELETE /models/{name}"""

    @app.post("/models", response_model=ModelChangeDoc, responses=error_responses(400, 401, 413, 422), tags=["models"],
              summary="Add a custom device model (as `passthru model add`)")
    def model_add(body: ModelBody) -> JSONResponse:
        st = agent.write(lambda s: config.add_model(s.paths.models_file, body.name, body.vendor, body.device,
                                                    body.kind, body.description), refresh="model add")
        return JSONResponse({"schema": 1, "name": body.name, "status": st})

    @app.delete("/models/{name}", response_model=ModelChangeDoc, responses=error_responses(401, 404, 422),
                tags=["models"], summary="Forget a custom device model (as `passthru model remove`)")
    def model_remove(name: Name) -> JSONResponse:
        agent.write(lambda s: config.remove_model(s.paths.models_file, name), refresh="model remove")
        return JSONResponse({"schema": 1, "name": name, "status": "removed"})
