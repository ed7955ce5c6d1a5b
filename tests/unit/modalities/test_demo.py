"""The modalities part of ``medserve demo``: one production model per modality, working calls."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from tests.unit.modalities.helpers import text_bundle

from medserve.core.loaded_model import load_version_locally
from medserve.core.registry.service import Registry
from medserve.faces.demo.modalities import (
    IMAGE_MODEL,
    SEQUENCE_MODEL,
    TEXT_MODEL,
    register_modality_demos,
)


def test_registers_one_model_per_modality_with_examples(
    registry: Registry, home: Path, pytestconfig: pytest.Config
) -> None:
    cached = home / "cache" / "modalities" / "triage-text.zip"
    cached.parent.mkdir(parents=True)
    shutil.copyfile(text_bundle(pytestconfig), cached)  # what a first demo run leaves behind
    demo = register_modality_demos(registry, home)
    assert demo.registered == [IMAGE_MODEL, TEXT_MODEL, SEQUENCE_MODEL]
    assert demo.skipped == []
    served = {(m, a) for m, a, _ in registry.store.all_aliases()}
    for name in demo.registered:
        assert (name, "production") in served
        version = registry.store.get_version(name, 1)
        assert "SYNTHETIC" in version.description
        assert version.tags["training_data"] == "synthetic"
    for command in demo.commands:
        path = Path(command.rsplit("@", 1)[1])
        assert path.is_file(), command
    assert any("application/dicom" in c for c in demo.commands)
    sequence = load_version_locally(registry, registry.store.get_version(SEQUENCE_MODEL, 1))
    fasta = (home / "examples" / "sequences.fasta").read_text().splitlines()
    result = sequence.predict_records([{"sequence": fasta[1]}, {"sequence": fasta[3]}])
    assert len(result["predictions"]) == 2
    again = register_modality_demos(registry, home)  # idempotent: no new versions
    assert again.registered == demo.registered
    assert registry.store.get_version(IMAGE_MODEL, 1).version == 1
    with pytest.raises(Exception, match="version"):
        registry.store.get_version(IMAGE_MODEL, 2)
