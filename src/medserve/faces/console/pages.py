"""The console's pages: each gathers what it shows from the same services the API uses (the
registry, the governance cards and gate, the monitoring store, the audit trail, the security
routes' own functions) and renders a template. Store calls run in a thread.
"""

from __future__ import annotations

import asyncio
import math
import os
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import orjson
import yaml
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from medserve.core import charts
from medserve.core.context import RequestContext, made_request_id
from medserve.core.errors import (
    InvalidRequestError,
    MedserveError,
    NotFoundError,
    PermissionDeniedError,
    PromotionBlockedError,
)
from medserve.core.presentation import as_datetime, number, psi_band
from medserve.core.registry.signature import Signature
from medserve.core.store.governance import GovernanceStore
from medserve.core.store.monitoring import MonitoringStore
from medserve.faces.console.web import PREFIX, Console, Page, Who
from medserve.features.governance.card_html import card_fragment, evaluation_plots
from medserve.features.governance.cards import (
    AUTHOR_TEMPLATE_KEYS,
    HTI1_ATTRIBUTES,
    build_card,
    get_dotted,
    test_evaluation,
)
from medserve.features.governance.gate import GATED_ALIASES, check, set_alias_gated
from medserve.features.monitoring.report import psi_history_chart
from medserve.features.security.permissions import ROLES
from medserve.serving.extensions import monitoring as monitoring_ext
from medserve.serving.extensions import security as security_ext
from medserve.serving.media import MediaRequest

# -- small helpers ------------------------------------------------------------------------------


def _text(form: FormData, key: str, default: str = "") -> str:
    value = form.get(key)
    return value.strip() if isinstance(value, str) else default


def _form(request: Request) -> FormData:
    form: FormData = request.state.form
    return form


def _see_other(url: str) -> Response:
    return RedirectResponse(url, status_code=303)


def _resolve(c: Console, name: str, version: str) -> Any:
    return c.resources.registry.store.resolve(name, version)


def _context(request: Request, who: Who) -> RequestContext:
    """A playground call's context: the signed-in principal, medserve's own request id."""
    request_id, made = made_request_id()
    client = request.client
    return RequestContext(
        request_id=request_id,
        protocol="console",
        principal=who.principal,
        client=client.host if client else None,
        id_time_us=made,
    )


def _monitoring(c: Console) -> MonitoringStore:
    store = c.resources.find(monitoring_ext.MONITORING_STORE)
    return store if store is not None else MonitoringStore(c.resources.registry.store)


# -- models -------------------------------------------------------------------------------------


def _models_view(c: Console, who: Who) -> list[dict[str, Any]]:
    store = c.resources.registry.store
    served = {s["name"]: s["aliases"] for s in c.resources.plane.list_served()}
    tenants = c.guard.store.model_tenants() if c.secured else {}
    out = []
    page_token = None
    while True:
        page = store.list_models(page_size=500, page_token=page_token)
        for m in page.items:
            if not c.visible(who, m.name):
                continue
            versions = store.list_versions(m.name).items
            out.append(
                {
                    "model": m,
                    "aliases": store.list_aliases(m.name),
                    "versions": len(versions),
                    "latest": versions[0] if versions else None,
                    "served": served.get(m.name, {}),
                    "tenant": tenants.get(m.name),
                }
            )
        page_token = page.next_page_token
        if not page_token:
            return out


async def models_page(c: Console, request: Request, who: Who) -> Response:
    models = await asyncio.to_thread(_models_view, c, who)
    return c.render(request, "models.html", who, models=models)


def _model_view(c: Console, name: str) -> dict[str, Any]:
    store = c.resources.registry.store
    model = store.get_model(name)
    aliases = store.list_aliases(name)
    by_version: dict[int, list[str]] = {}
    for alias, points_at in aliases.items():
        by_version.setdefault(points_at, []).append(alias)
    served = {s["name"]: s["aliases"] for s in c.resources.plane.list_served()}.get(name, {})
    failures = {v: msg for (m, v), msg in c.resources.plane.manager.failures().items() if m == name}
    return {
        "model": model,
        "versions": store.list_versions(name).items,
        "aliases": aliases,
        "by_version": by_version,
        "history": list(reversed(store.alias_history(name, None))),
        "served": served,
        "failures": failures,
    }


async def model_page(c: Console, request: Request, who: Who) -> Response:
    name = request.path_params["name"]
    view = await asyncio.to_thread(_model_view, c, name)
    return c.render(request, "model.html", who, name=name, pid=os.getpid(), **view)


async def version_page(c: Console, request: Request, who: Who) -> Response:
    name, ref = request.path_params["name"], request.path_params["version"]

    def gather() -> dict[str, Any]:
        mv = _resolve(c, name, ref)
        aliases = c.resources.registry.store.list_aliases(name)
        return {
            "mv": mv,
            "signature": Signature.model_validate(mv.signature),
            "aliases_here": sorted(a for a, v in aliases.items() if v == mv.version),
        }

    view = await asyncio.to_thread(gather)
    return c.render(request, "version.html", who, name=name, **view)


# -- model card ---------------------------------------------------------------------------------


def _card_view(c: Console, name: str, ref: str) -> dict[str, Any]:
    mv = _resolve(c, name, ref)
    gov = GovernanceStore(c.resources.registry.store)
    card = build_card(gov, mv)
    return {"mv": mv, "card": card, "card_html": card_fragment(card, test_evaluation(gov, mv))}


async def card_page(c: Console, request: Request, who: Who) -> Response:
    name, ref = request.path_params["name"], request.path_params["version"]
    view = await asyncio.to_thread(_card_view, c, name, ref)
    return c.render(request, "card.html", who, name=name, **view)


def _card_fields(author: dict[str, Any]) -> list[dict[str, Any]]:
    labels = {key: text for _, text, key in HTI1_ATTRIBUTES if key}
    labels.update(
        ethical_considerations="Ethical considerations",
        caveats="Caveats and recommendations",
        model_card_contact="Who to contact about this card",
        demographic_inputs="Demographic inputs as the author states them (YAML)",
    )
    fields = []
    for key in AUTHOR_TEMPLATE_KEYS:
        value = get_dotted(author, key)
        structured = value is not None and not isinstance(value, str)
        text = (
            yaml.safe_dump(value, sort_keys=True).strip()
            if structured
            else ("" if value is None else value)
        )
        fields.append(
            {
                "key": key,
                "label": labels.get(key, key.replace("_", " ").replace(".", ": ")),
                "value": text,
                "structured": structured or key == "demographic_inputs",
            }
        )
    return fields


async def card_edit_page(c: Console, request: Request, who: Who) -> Response:
    name, ref = request.path_params["name"], request.path_params["version"]

    def gather() -> dict[str, Any]:
        mv = _resolve(c, name, ref)
        author = GovernanceStore(c.resources.registry.store).card(name, mv.version)
        return {"mv": mv, "fields": _card_fields(author)}

    view = await asyncio.to_thread(gather)
    return c.render(request, "card_edit.html", who, name=name, **view)


def _statements(form: FormData, current: dict[str, Any]) -> dict[str, Any]:
    """The author statements from the edit form: every field of the template, nested by its
    dotted key; structured values (lists, mappings) are read back as YAML. Keys the form does
    not show (the author's own extras) are kept."""
    out: dict[str, Any] = {
        k: v
        for k, v in current.items()
        if k not in {key.split(".")[0] for key in AUTHOR_TEMPLATE_KEYS}
    }
    for key in AUTHOR_TEMPLATE_KEYS:
        text = _text(form, key)
        if not text:
            continue
        value: Any = text
        if _text(form, f"{key}__structured") == "1":
            try:
                value = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise InvalidRequestError(f"{key}: not valid YAML ({exc})") from exc
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[leaf] = value
    return out


async def card_save(c: Console, request: Request, who: Who) -> Response:
    name, ref = request.path_params["name"], request.path_params["version"]
    form = _form(request)

    def save() -> int:
        mv = _resolve(c, name, ref)
        gov = GovernanceStore(c.resources.registry.store)
        statements = _statements(form, gov.card(name, mv.version))
        gov.save_card(name, mv.version, statements, who.principal.subject)
        return int(mv.version)

    number = await asyncio.to_thread(save)
    return _see_other(f"{PREFIX}/models/{name}/versions/{number}/card?saved=1")


# -- evaluations --------------------------------------------------------------------------------


async def evaluation_page(c: Console, request: Request, who: Who) -> Response:
    name, ref = request.path_params["name"], request.path_params["version"]

    def gather() -> dict[str, Any]:
        mv = _resolve(c, name, ref)
        items = GovernanceStore(c.resources.registry.store).evaluations(name, mv.version)
        return {
            "mv": mv,
            "evaluations": [{**e, "plots": evaluation_plots(e["result"])} for e in items],
        }

    view = await asyncio.to_thread(gather)
    return c.render(request, "evaluation.html", who, name=name, **view)


async def stored_report(c: Console, request: Request, who: Who) -> Response:
    """The stored HTML report of the latest evaluation, as a download (it is a document of its
    own, with its own styles, not a console page)."""
    name, ref = request.path_params["name"], request.path_params["version"]

    def read() -> tuple[int, bytes]:
        mv = _resolve(c, name, ref)
        items = GovernanceStore(c.resources.registry.store).evaluations(name, mv.version)
        sha = next((e["report_sha256"] for e in items if e["report_sha256"]), None)
        if sha is None:
            raise NotFoundError(f"{name} v{mv.version} has no stored evaluation report")
        return int(mv.version), c.resources.registry.artifacts.read_bytes(sha)

    number, body = await asyncio.to_thread(read)
    filename = f"{name}-v{number}-evaluation.html"
    return Response(
        body,
        media_type="text/html",
        headers={"content-disposition": f'attachment; filename="{filename}"'},
    )


# -- the promotion gate and aliases -------------------------------------------------------------

# The checklist's items, in order; each gate problem falls under one.
_GATE_ITEMS = (
    ("card", "The model card is complete and consistent"),
    ("criteria", "Acceptance criteria are declared"),
    ("evaluation", "A test evaluation is stored"),
    ("met", "The evaluation meets the acceptance criteria"),
    ("split", "Training and test patients are separate"),
)


def _gate_item(problem: str) -> str:
    if problem.startswith(("card incomplete:", "card:")):
        return "card"
    if problem.startswith("no acceptance criteria"):
        return "criteria"
    if problem.startswith("no stored evaluation"):
        return "evaluation"
    if "train/test split" in problem or "in both train and test" in problem:
        return "split"
    return "met"


def _gate_view(c: Console, name: str, ref: str) -> dict[str, Any]:
    """The gate as a checklist: its problems grouped by item, each item with the commands the
    gate itself gives for its problems (one source for the CLI, the API and this page) and, for
    the card, the console's form."""
    mv = _resolve(c, name, ref)
    result = check(c.resources.registry, name, mv.version)
    problems: dict[str, list[str]] = {key: [] for key, _ in _GATE_ITEMS}
    commands: dict[str, list[str]] = {key: [] for key, _ in _GATE_ITEMS}
    for problem, fix in zip(result.problems, result.fixes, strict=True):
        item = _gate_item(problem)
        problems[item].append(problem)
        if fix not in commands[item]:
            commands[item].append(fix)
    card_form = f"{PREFIX}/models/{name}/versions/{mv.version}/card/edit"
    # the criteria can be met only once they and an evaluation exist: until then, not "done"
    waiting = {"met"} if problems["criteria"] or problems["evaluation"] else set()
    items = [
        {
            "key": key,
            "title": title,
            "ok": not problems[key] and key not in waiting,
            "waiting": key in waiting,
            "problems": problems[key],
            "form": card_form if key == "card" else None,
            "commands": commands[key],
        }
        for key, title in _GATE_ITEMS
    ]
    aliases = c.resources.registry.store.list_aliases(name)
    return {"mv": mv, "passed": result.passed, "items": items, "aliases": aliases}


async def gate_page(c: Console, request: Request, who: Who) -> Response:
    name, ref = request.path_params["name"], request.path_params["version"]
    view = await asyncio.to_thread(_gate_view, c, name, ref)
    return c.render(request, "gate.html", who, name=name, **view)


async def move_alias(c: Console, request: Request, who: Who) -> Response:
    """Move an alias with a reason: ``production`` needs the approver's right and passes the
    gate (or a written override); other aliases need the write right."""
    name = request.path_params["name"]
    form = _form(request)
    alias = _text(form, "alias").lower()
    reason = _text(form, "reason")
    override = _text(form, "override") == "1"
    try:
        version = int(_text(form, "version"))
    except ValueError:
        raise InvalidRequestError("version: a version number is required") from None
    if not alias or len(alias) > 64:
        raise InvalidRequestError("alias: a name of 1 to 64 characters is required")
    c.authorize(request, who, "approve" if alias in GATED_ALIASES else "write", name)
    request.state.version = str(version)
    if not reason:
        raise InvalidRequestError("reason: say why the alias moves (kept in its history)")
    try:
        await asyncio.to_thread(
            set_alias_gated,
            c.resources.registry,
            name,
            alias,
            version,
            actor=who.principal.subject,
            reason=reason,
            override_approver=who.principal.subject if override else None,
        )
    except PromotionBlockedError as exc:
        view = await asyncio.to_thread(_gate_view, c, name, str(version))
        return c.render(request, "gate.html", who, status=409, name=name, blocked=str(exc), **view)
    return _see_other(f"{PREFIX}/models/{name}?moved={quote(alias, safe='')}")


# -- monitoring ---------------------------------------------------------------------------------


def _series(runs: list[dict[str, Any]], pick: Any) -> list[tuple[float | datetime, float]]:
    out: list[tuple[float | datetime, float]] = []
    for run in runs:
        at = as_datetime(run.get("window_end"))
        value = pick(run)
        if at is not None and isinstance(value, int | float) and math.isfinite(float(value)):
            out.append((at, float(value)))
    return out


def _monitoring_view(c: Console, name: str) -> dict[str, Any]:
    c.resources.registry.store.get_model(name)  # a 404 for an unknown model
    store = _monitoring(c)
    runs = list(reversed(store.runs(name, 200)))  # oldest first
    rules = store.rules(name)
    psi_rule = next((r.threshold for r in rules if r.metric == "psi_max"), 0.25)

    def perf(metric: str) -> Any:
        return lambda run: ((run.get("performance") or {}).get("overall") or {}).get(metric)

    psi_chart = psi_history_chart(list(reversed(runs)), psi_rule)
    perf_series = [
        charts.Series(label, _series(runs, perf(metric)))
        for metric, label in (
            ("auroc", "AUROC"),
            ("observed_expected", "observed : expected"),
            ("calibration_slope", "calibration slope"),
            ("mae", "mean absolute error"),
        )
    ]
    perf_chart = charts.line_chart(
        "Live performance on labelled predictions (matured windows)",
        [s for s in perf_series if s.points],
        y_label="metric value",
    )
    latest = runs[-1] if runs else None
    features: list[dict[str, Any]] = []
    if latest:
        for feature, f in ((latest.get("drift") or {}).get("features") or {}).items():
            if f.get("psi") is not None:
                features.append({"name": feature, "psi": float(f["psi"]), **f})
        features.sort(key=lambda f: -f["psi"])
    bars = charts.bar_chart(
        "Shift per feature in the latest window (PSI)",
        [(f["name"], f["psi"]) for f in features[:20]],
        threshold=psi_rule,
    )
    return {
        "runs": list(reversed(runs))[:20],
        "latest": latest,
        "features": [{**f, "band": psi_band(f["psi"])} for f in features],
        "psi_chart": psi_chart,
        "perf_chart": perf_chart,
        "bars": bars,
        "alerts": store.alerts(name),
        "rules": rules,
    }


async def monitoring_page(c: Console, request: Request, who: Who) -> Response:
    name = request.path_params["name"]
    view = await asyncio.to_thread(_monitoring_view, c, name)
    return c.render(request, "monitoring.html", who, name=name, **view)


async def acknowledge_alert(c: Console, request: Request, who: Who) -> Response:
    """Through the API's own handler: it authorizes ``write`` on the alert's model and writes
    the acknowledgement's audit entry with the change."""
    alert_id = int(request.path_params["alert_id"])
    note = _text(_form(request), "note")
    request.state.action = "write"
    result = await asyncio.to_thread(
        monitoring_ext.acknowledge, request, alert_id, {"note": note} if note else None
    )
    name = str(result["model"])
    request.state.model = name
    if c.partial(request):
        alerts = await asyncio.to_thread(_monitoring(c).alerts, name)
        return c.render(request, "_alerts.html", who, name=name, alerts=alerts)
    return _see_other(f"{PREFIX}/models/{name}/monitoring")


# -- audit ----------------------------------------------------------------------------------------


def _audit_filters(request: Request) -> dict[str, Any]:
    q = request.query_params

    def when(key: str) -> datetime | None:
        raw = q.get(key, "").strip()
        if not raw:
            return None
        found = as_datetime(raw)
        if found is None:
            raise InvalidRequestError(f"{key}: a date or time (2026-12-06 or 2026-12-06T09:00)")
        return found

    try:
        limit = max(1, min(1000, int(q.get("limit") or 100)))
        after = max(0, int(q.get("after_seq") or 0))
    except ValueError:
        raise InvalidRequestError("limit and after_seq: whole numbers") from None
    return {
        "actor": q.get("actor", "").strip() or None,
        "model": q.get("model", "").strip() or None,
        "since": when("since"),
        "until": when("until"),
        "after_seq": after,
        "limit": limit,
    }


async def audit_page(c: Console, request: Request, who: Who) -> Response:
    filters = _audit_filters(request)
    trail = await asyncio.to_thread(c.trail)
    entries = await asyncio.to_thread(lambda: list(trail.entries(**filters)))
    if security_ext.bounded(request):  # a tenant's key sees its own models' entries only
        entries = [e for e in entries if e["model"] and c.visible(who, str(e["model"]))]
    more = entries[-1]["seq"] if len(entries) >= filters["limit"] else None
    template = "_audit_rows.html" if c.partial(request) else "audit.html"
    return c.render(request, template, who, entries=entries, filters=filters, more=more)


async def audit_verify(c: Console, request: Request, who: Who) -> Response:
    trail = await asyncio.to_thread(c.trail)
    result = await asyncio.to_thread(trail.verify)
    view = {
        "ok": result.ok,
        "checked": result.checked,
        "detail": result.reason,
        "first_bad": result.first_bad_seq,
        "gaps": result.gaps,
    }
    if c.partial(request):
        return c.render(request, "_verify.html", who, verify=view)
    filters = _audit_filters(request)
    entries = await asyncio.to_thread(lambda: list(trail.entries(**filters)))
    if security_ext.bounded(request):
        entries = [e for e in entries if e["model"] and c.visible(who, str(e["model"]))]
    return c.render(
        request, "audit.html", who, entries=entries, filters=filters, more=None, verify=view
    )


# -- keys and tenants -----------------------------------------------------------------------------


async def keys_page(
    c: Console, request: Request, who: Who, issued: dict[str, Any] | None = None
) -> Response:
    if not c.secured:
        raise InvalidRequestError("security is off on this server: there are no keys to manage")
    listed = await security_ext.list_keys(request)
    models = await asyncio.to_thread(_models_view, c, who)
    return c.render(
        request,
        "keys.html",
        who,
        keys=listed["keys"],
        roles=ROLES,
        models=models,
        issued=issued,
    )


async def create_key(c: Console, request: Request, who: Who) -> Response:
    form = _form(request)
    roles = [str(r) for r in form.getlist("roles")]
    days = _text(form, "expires_in_days")
    try:
        expires_in_days = float(days) if days else None
    except ValueError:
        raise InvalidRequestError("expires_in_days: a number of days, or empty") from None
    try:
        body = security_ext.KeyRequest(
            name=_text(form, "name"),
            roles=roles,
            tenant=_text(form, "tenant") or None,
            expires_in_days=expires_in_days,
        )
    except ValueError as exc:
        raise InvalidRequestError(_pydantic_message(exc)) from exc
    issued = await security_ext.create_key(request, body)
    return await keys_page(c, request, who, issued=issued)


def _pydantic_message(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        return "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in errors()
        )
    return str(exc)


async def revoke_key(c: Console, request: Request, who: Who) -> Response:
    key_id = request.path_params["key_id"]
    await security_ext.revoke_key(request, key_id)
    await asyncio.to_thread(c.sessions.close_key, key_id)
    return _see_other(f"{PREFIX}/keys?revoked={key_id}")


async def assign_tenant(c: Console, request: Request, who: Who) -> Response:
    form = _form(request)
    model = _text(form, "model")
    if not model:
        raise InvalidRequestError("model: choose a model")
    request.state.model = model
    body = security_ext.TenantRequest(tenant=_text(form, "tenant") or None)
    await security_ext.assign_tenant(request, model, body)
    return _see_other(f"{PREFIX}/keys?tenant={quote(model, safe='')}")


# -- playground -----------------------------------------------------------------------------------


def _instance(signature: Signature, form: FormData) -> dict[str, Any]:
    """One record from the playground form, typed by the signature (the validator then checks
    ranges and categories exactly as for an API call)."""
    record: dict[str, Any] = {}
    for feature in signature.inputs:
        raw = _text(form, f"f:{feature.name}")
        if raw == "":
            continue  # missing: the signature's missing-value policy decides
        if feature.type in ("float", "integer"):
            try:
                record[feature.name] = float(raw) if feature.type == "float" else int(raw)
            except ValueError:
                raise InvalidRequestError(f"{feature.name}: a number is required") from None
        elif feature.type == "boolean":
            record[feature.name] = raw in ("1", "true", "yes")
        else:
            record[feature.name] = raw
    return record


_MAGIC = ((b"\x89PNG\r\n\x1a\n", 0, b"image/png"), (b"DICM", 128, b"application/dicom"))


def _image_type(raw: bytes) -> bytes:
    for magic, offset, media in _MAGIC:
        if raw[offset : offset + len(magic)] == magic:
            return media
    raise InvalidRequestError("image: a DICOM (.dcm) or PNG file is required")


async def _image_playground(
    c: Console, request: Request, who: Who, name: str, ref: str, mv: Any
) -> Response:
    """An image model: upload a DICOM or PNG; the answer comes from the same codec as
    ``POST /v1/models/{name}/predict`` with that media type (the header de-identified first),
    with the occlusion saliency over the image and its colour scale."""
    result = explanation = legend = None
    if request.method == "POST":
        upload = _form(request).get("image")
        raw = await upload.read() if upload is not None and not isinstance(upload, str) else b""
        if not raw:
            raise InvalidRequestError("image: choose a DICOM (.dcm) or PNG file")
        media = _image_type(raw)
        handler = c.resources.media_handlers.get(("records", media))
        if handler is None:
            raise InvalidRequestError("this server has no image codec (the imaging extra)")
        context = _context(request, who)
        query = MediaRequest(body=raw, content_type=media, accept=None, query={})
        _, body, _ = await handler(c.resources.plane, name, ref, query, context)
        result = orjson.loads(body)
        explanation = (result.get("predictions") or [{}])[0].get("explanation")
        if explanation:
            peak = max((max(row) for row in explanation.get("grid") or [[0.0]]), default=0.0)
            legend = charts.colour_scale(
                f"Saliency: drop in the probability of {explanation.get('target')} "
                "when a patch is hidden",
                ["#808080", "#ff0000"],
                "0 (no effect)",
                f"{number(peak)} (largest drop)",
                width=560,
            )
    return c.render(
        request,
        "playground_image.html",
        who,
        name=name,
        mv=mv,
        ref=ref,
        result=result,
        explanation=explanation,
        legend=legend,
    )


async def playground_page(c: Console, request: Request, who: Who) -> Response:
    name = request.path_params["name"]
    ref = request.query_params.get("version") or "production"
    mv = await asyncio.to_thread(_resolve, c, name, ref)
    loaded = await c.resources.plane.model(name, ref)
    if hasattr(loaded.runtime, "explain_image"):
        return await _image_playground(c, request, who, name, ref, mv)
    signature = Signature.model_validate(mv.signature)
    result = None
    values: dict[str, str] = {}
    if request.method == "POST":
        form = _form(request)
        values = {k[2:]: str(v) for k, v in form.items() if k.startswith("f:")}
        record = _instance(signature, form)
        context = _context(request, who)
        body = {"instances": [record], "explain": True}
        try:
            result = await c.resources.plane.predict_records(name, ref, body, context)
        except MedserveError as exc:
            if isinstance(exc, PermissionDeniedError):
                raise
            return c.render(
                request,
                "playground.html",
                who,
                status=400,
                name=name,
                mv=mv,
                signature=signature,
                values=values,
                error=str(exc),
                ref=ref,
            )
    return c.render(
        request,
        "playground.html",
        who,
        name=name,
        mv=mv,
        signature=signature,
        values=values,
        result=result,
        ref=ref,
        why_chart=_why_chart(result),
    )


def _why_chart(result: dict[str, Any] | None) -> str | None:
    """The explanation's attributions as bars, largest first; the sign in the label."""
    rows = ((result or {}).get("explanation") or {}).get("explanations") or []
    if not rows:
        return None
    attributions = sorted(rows[0]["attributions"].items(), key=lambda kv: -abs(kv[1]))[:15]
    return charts.bar_chart(
        "How much each input moved this prediction",
        [(f"{k} ({'raised' if v > 0 else 'lowered'})", abs(v)) for k, v in attributions],
    )


def pages() -> list[Page]:
    p = PREFIX
    v = f"{p}/models/{{name}}/versions/{{version}}"
    return [
        Page(f"{p}/", models_page, "read_models"),
        Page(f"{p}/models/{{name}}", model_page, "read_models"),
        Page(v, version_page, "read_models"),
        Page(f"{v}/card", card_page, "read_models"),
        Page(f"{v}/card/edit", card_edit_page, "write"),
        Page(f"{v}/card", card_save, "write", ("POST",)),
        Page(f"{v}/evaluation", evaluation_page, "read_models"),
        Page(f"{v}/report.html", stored_report, "read_models"),
        Page(f"{v}/gate", gate_page, "read_models"),
        Page(f"{p}/models/{{name}}/aliases", move_alias, None, ("POST",)),
        Page(f"{p}/models/{{name}}/monitoring", monitoring_page, "read_monitoring"),
        Page(f"{p}/alerts/{{alert_id:int}}/acknowledge", acknowledge_alert, None, ("POST",)),
        Page(f"{p}/models/{{name}}/playground", playground_page, "predict", ("GET", "POST")),
        Page(f"{p}/audit", audit_page, "read_audit"),
        Page(f"{p}/audit/verify", audit_verify, "read_audit"),
        Page(f"{p}/keys", keys_page, "admin"),
        Page(f"{p}/keys", create_key, "admin", ("POST",)),
        Page(f"{p}/keys/{{key_id}}/revoke", revoke_key, "admin", ("POST",)),
        Page(f"{p}/tenants", assign_tenant, "admin", ("POST",)),
    ]


__all__ = ["UTC", "pages"]
