"""How the service answers what goes wrong: JSON ``{"error": "<what is wrong>"}`` with the status the contract's
error class maps to (:func:`splitpriv.contract.errors.status_of`); 503 + ``Retry-After`` when the vendor is busy;
a 500 names the exception type and logs the traceback, never sends it."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from splitpriv.contract.errors import ERROR_CLASSES, VendorBusy, status_of
from splitpriv.service.guard import ServiceError

log = logging.getLogger("splitpriv.service")


class ErrorBody(BaseModel):
    error: str


ERRORS = {code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 413, 429)}


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def on_service_error(_request, exc: ServiceError):
    return error(exc.status, exc.message, exc.headers)


async def on_splitpriv_error(_request, exc: Exception):
    return error(status_of(exc), str(exc) or type(exc).__name__)


async def on_busy(_request, exc: VendorBusy):  # 503 + Retry-After: the client's retry policy waits it out
    return error(503, str(exc), {"Retry-After": "1"})


async def on_http_error(_request, exc: StarletteHTTPException):
    return error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))


async def on_validation_error(_request, exc: RequestValidationError):
    problems = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in exc.errors())
    return error(422, f"invalid request: {problems}")


async def on_bug(request: Request, exc: Exception):
    log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return error(500, f"internal error in the vendor service ({type(exc).__name__}); see the server log")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, on_service_error)
    for cls in ERROR_CLASSES:
        app.add_exception_handler(cls, on_splitpriv_error)
    app.add_exception_handler(VendorBusy, on_busy)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(Exception, on_bug)
