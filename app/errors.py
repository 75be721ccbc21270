"""One error hierarchy and the one place that turns errors into RFC 9457 problem+json."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_JSON = "application/problem+json"
_FASTAPI_BODY_PARSE_ERROR = "There was an error parsing the body"
log = structlog.get_logger(__name__)


class FieldProblem(BaseModel):
    """One invalid field: where it is (e.g. `body.email`, `row 3: email`) and why."""

    field: str
    reason: str
    row: int | None = None


class Problem(BaseModel):
    """An RFC 9457 problem document."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[FieldProblem] | None = None


class AppError(Exception):
    """A domain error that knows its HTTP status. Services raise these; only handlers respond."""

    status = 400
    title = "Bad request"

    def __init__(
        self,
        detail: str,
        *,
        errors: list[FieldProblem] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.headers = headers


class NotAuthenticated(AppError):
    status = 401
    title = "Not authenticated"


class Forbidden(AppError):
    status = 403
    title = "Forbidden"


class NotFound(AppError):
    status = 404
    title = "Not found"


class Conflict(AppError):
    status = 409
    title = "Conflict"


class UnsupportedMediaType(AppError):
    status = 415
    title = "Unsupported media type"


class InvalidInput(AppError):
    status = 422
    title = "Invalid input"

    @classmethod
    def at(cls, field: str, reason: str) -> InvalidInput:
        """One invalid field: `field: reason` as the detail, and the field in `errors`."""
        return cls(f"{field}: {reason}", errors=[FieldProblem(field=field, reason=reason)])


def problem_response(
    status: int,
    title: str,
    detail: str | None,
    *,
    errors: list[FieldProblem] | None = None,
    headers: dict[str, str] | None = None,
    instance: str | None = None,
) -> JSONResponse:
    body = Problem(title=title, status=status, detail=detail, errors=errors, instance=instance)
    return JSONResponse(
        body.model_dump(exclude_none=True),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


def _field_path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "body"


def validation_problems(errors: list[Any]) -> list[FieldProblem]:
    """Pydantic/FastAPI error entries → `FieldProblem`s, without echoing the input back."""
    problems = []
    for error in errors:
        loc = tuple(error.get("loc", ()))
        reason = str(error.get("msg", "invalid"))
        if error.get("type") == "extra_forbidden":
            reason = "unknown field"
        problems.append(FieldProblem(field=_field_path(loc), reason=reason))
    return problems


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AppError)
    async def _app_error(request: Request, exc: AppError) -> JSONResponse:
        return problem_response(
            exc.status,
            exc.title,
            exc.detail,
            errors=exc.errors,
            headers=exc.headers,
            instance=request.url.path,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = validation_problems(list(exc.errors()))
        first = problems[0] if problems else FieldProblem(field="body", reason="invalid")
        return problem_response(
            422,
            "Invalid input",
            f"{first.field}: {first.reason}",
            errors=problems,
            instance=request.url.path,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.detail == _FASTAPI_BODY_PARSE_ERROR:
            # FastAPI's answer to a body it cannot decode (e.g. not UTF-8): make it the
            # same 422 as any other invalid body, naming the body as the field.
            reason = "not valid JSON in UTF-8"
            return problem_response(
                422,
                "Invalid input",
                f"body: {reason}",
                errors=[FieldProblem(field="body", reason=reason)],
                instance=request.url.path,
            )
        return problem_response(
            exc.status_code,
            _reason_phrase(exc.status_code),
            str(exc.detail),
            headers=dict(exc.headers) if exc.headers else None,
            instance=request.url.path,
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, _exc: Exception) -> JSONResponse:
        # The route template, never the path: `/ack/{token}` holds a live credential.
        route = getattr(request.scope.get("route"), "path", None) or "<unmatched>"
        log.exception("unhandled_error", path=route, method=request.method)
        return problem_response(500, "Internal server error", "An unexpected error occurred.")


def _reason_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
