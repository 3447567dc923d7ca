"""The metadata Alembic compares against: imports every domain's models so they register on it."""

from __future__ import annotations

from advanced_alchemy.base import orm_registry

from prodsentinel.alerts import models as alert_models
from prodsentinel.audit import models as audit_models
from prodsentinel.auth import models as auth_models
from prodsentinel.incidents import models as incident_models
from prodsentinel.notifications import models as notification_models
from prodsentinel.signals import models as signal_models
from prodsentinel.system import models as system_models

__all__ = ("metadata", "model_modules")

metadata = orm_registry.metadata
model_modules = (
    auth_models,
    signal_models,
    incident_models,
    alert_models,
    audit_models,
    notification_models,
    system_models,
)
