"""CLI command: ``medserve erase --patient ID`` (a patient's erasure; see core/erasure.py).

The identifier is read from the option (or a prompt, so it need not enter the shell history)
and is never printed: the command shows counts only. The erasure's audit entry is moved into
the chain before the command returns.
"""

from __future__ import annotations

from typing import Annotated

import typer

from medserve.core.audit import AuditLog, load_audit_keys
from medserve.core.erasure import erase_patient
from medserve.core.errors import MedserveError
from medserve.core.journal import scrubber
from medserve.core.phi import load_or_create_salt
from medserve.core.registry.service import current_user
from medserve.core.settings import Settings
from medserve.core.store.unit_of_work import engine_of
from medserve.faces.cli.support import console, fail, open_registry


def register(app: typer.Typer, models_app: typer.Typer) -> None:
    @app.command("erase")
    def erase(
        patient: Annotated[
            str,
            typer.Option(
                "--patient",
                prompt="Patient identifier",
                hide_input=True,
                help="The identifier the patient's predictions were sent with (X-Patient-ID or "
                "the FHIR Patient id); prompted for, unechoed, when omitted.",
            ),
        ],
        reason: Annotated[
            str | None,
            typer.Option(help="Why (a ticket number); de-identified before it is audited."),
        ] = None,
        yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask to confirm.")] = False,
    ) -> None:
        """Erase a patient: predictions, inputs and outcomes are removed from every store and
        the patient's key is destroyed, so the audit trail (kept, still verifiable) no longer
        links to them. Prints counts only, never the identifier."""
        if not yes:
            typer.confirm(
                "Erase this patient's predictions, inputs and outcomes? This cannot be undone",
                abort=True,
            )
        try:
            settings = Settings()
            with open_registry() as registry:
                engine = engine_of(registry.store)
                report = erase_patient(
                    engine,
                    salt=load_or_create_salt(settings.home),
                    patient_id=patient,
                    actor=f"cli:{current_user()}",
                    reason=reason,
                    journals=scrubber(settings.home),
                )
                audit = AuditLog(engine, keys=load_audit_keys(settings.home))
                while audit.drain_outbox():  # the erasure's entry, into the chain now
                    pass
        except MedserveError as exc:
            raise fail(exc) from exc
        console.print("patient erased:", highlight=False)
        for name, value in report.to_dict().items():
            console.print(f"  {name}: {value}", highlight=False)
        if report.wal_truncated is False:
            console.print(
                "  [yellow]a reader held the database: the write-ahead log is truncated at the "
                "next checkpoint[/]",
                highlight=False,
            )
