"""Map library exceptions to JSON error responses `{"detail": ...}` and log each one with its ids.

Library errors that carry an HTTP `status_code` (JobError, RegistryError, CheckpointInUse) keep
it; FileNotFoundError and LookupError become 404, FileExistsError 409, other ValueErrors 400, and
anything else 500 with the traceback in the log.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from asrlib.api.tasks import TaskConflict
from asrlib.checkpoints import CheckpointInUse
from asrlib.export import ExportError
from asrlib.jobs import JobError
from asrlib.registry import RegistryError

log = logging.getLogger(__name__)

# Path parameters that identify what a request is about; they go into every error log line.
ID_PARAMS = ("run_id", "name", "checkpoint", "dataset")


def status_for(exc: Exception) -> int:
    code = getattr(exc, "status_code", None)
    if isinstance(code, int) and 400 <= code < 600:
        return code
    if isinstance(exc, ExportError):
        return 422  # a valid request for a model that this exporter cannot convert
    if isinstance(exc, FileExistsError):
        return 409
    if isinstance(exc, (FileNotFoundError, LookupError)):
        return 404
    if isinstance(exc, ValueError):
        return 400
    return 500


def _ids(request: Request) -> str:
    ids = [f"{key}={request.path_params[key]}" for key in ID_PARAMS if key in request.path_params]
    return " ".join(ids) or "-"


def error_response(request: Request, status: int, detail: object) -> JSONResponse:
    level = logging.ERROR if status >= 500 else logging.WARNING
    log.log(level, "%s %s -> %d [%s]: %s", request.method, request.url.path, status, _ids(request), detail)
    return JSONResponse({"detail": detail}, status_code=status)


async def _library_error(request: Request, exc: Exception) -> JSONResponse:
    status = status_for(exc)
    if status >= 500:
        log.exception("unhandled error in %s %s [%s]", request.method, request.url.path, _ids(request),
                      exc_info=exc)
        return error_response(request, status, f"internal error: {type(exc).__name__}: {exc}")
    return error_response(request, status, str(exc))


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    response = error_response(request, exc.status_code, exc.detail)
    for key, value in (exc.headers or {}).items():
        response.headers[key] = value
    return response


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    # FastAPI's own format (a list of {loc, msg, type}) names the invalid field; it stays as is.
    return error_response(request, 422, exc.errors())


# Handled by class: Starlette sends a handler for plain Exception through ServerErrorMiddleware,
# which re-raises after the response, so only true 500s should end up there.
LIBRARY_ERRORS = (JobError, RegistryError, CheckpointInUse, TaskConflict, ExportError, FileExistsError,
                  FileNotFoundError, LookupError, ValueError)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    for error in LIBRARY_ERRORS:
        app.add_exception_handler(error, _library_error)
    app.add_exception_handler(Exception, _library_error)
