"""The ingress deployment: the FastAPI app of `crosslogic.api`, wired to Serve handles."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from crosslogic.api.app import build_api
from crosslogic.api.context import ApiContext
from crosslogic.config import AppConfig
from deployments.gateway import ServeGateway


@serve.ingress()
class IngressServer:
    def __init__(self, app_config: dict[str, Any], engines: dict[str, DeploymentHandle]) -> None:
        self._config = AppConfig.model_validate(app_config)
        self._gateway = ServeGateway(self._config, engines)

    async def __serve_build_asgi_app__(self) -> FastAPI:
        await self._gateway.start()
        context = ApiContext(
            gateway=self._gateway,
            max_body_bytes=self._config.ingress.max_body_bytes,
            retries_before_first_token=self._config.ingress.retries_before_first_token,
        )
        # Serve's proxy already sets and echoes x-request-id.
        return build_api(context, echo_request_id=False)
