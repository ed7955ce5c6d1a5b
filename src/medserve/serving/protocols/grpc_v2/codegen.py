"""Regenerate the committed gRPC modules from the vendored ``grpc_predict_v2.proto``.

The generated modules are committed (a fresh install needs no compiler); this is how they were
made, and ``tests/contract/test_grpc_codegen.py`` runs it into a temporary folder and checks
that the result is byte-identical to what is committed. It needs ``grpcio-tools`` (the dev
extra, pinned to the version that made the committed files)::

    python -m medserve.serving.protocols.grpc_v2.codegen          # rewrite the modules
    python -m medserve.serving.protocols.grpc_v2.codegen --check  # exit 1 when they differ

The proto is compiled from its own folder, so the descriptor's file name is
``grpc_predict_v2.proto``, exactly as in the kserve SDK's own generated module: both then
describe the same file, and a process may import medserve's module and kserve's together
(two different files defining ``inference.*`` could not share protobuf's descriptor pool).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO = "grpc_predict_v2.proto"
GENERATED = ("grpc_predict_v2_pb2.py", "grpc_predict_v2_pb2.pyi", "grpc_predict_v2_pb2_grpc.py")
# protoc writes a top-level import into the service module; the package's modules import it
# from the package instead.
_TOP_LEVEL_IMPORT = "import grpc_predict_v2_pb2 as grpc__predict__v2__pb2"
_PACKAGE_IMPORT = (
    "from medserve.serving.protocols.grpc_v2 import grpc_predict_v2_pb2 as grpc__predict__v2__pb2"
)


def generate(out: Path) -> list[Path]:
    """Compile the proto into ``out``; returns the files written."""
    # lazy import (grpcio-tools is a development tool, never needed to serve)
    from grpc_tools import protoc  # noqa: PLC0415

    out.mkdir(parents=True, exist_ok=True)
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{HERE}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            str(HERE / PROTO),
        ]
    )
    if status != 0:
        raise RuntimeError(f"protoc failed with status {status}")
    service = out / "grpc_predict_v2_pb2_grpc.py"
    text = service.read_text()
    if _TOP_LEVEL_IMPORT not in text:
        raise RuntimeError(
            "the generated service module no longer imports its messages as expected"
        )
    service.write_text(text.replace(_TOP_LEVEL_IMPORT, _PACKAGE_IMPORT))
    return [out / name for name in GENERATED]


def differences(folder: Path = HERE) -> list[str]:
    """The generated files under ``folder`` that differ from a fresh generation."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        return [
            path.name
            for path in fresh
            if not (folder / path.name).exists()
            or (folder / path.name).read_bytes() != path.read_bytes()
        ]


def main(argv: list[str]) -> int:
    if "--check" in argv:
        stale = differences()
        for name in stale:
            print(f"{name} differs from a fresh generation", file=sys.stderr)
        return 1 if stale else 0
    with tempfile.TemporaryDirectory() as tmp:
        for path in generate(Path(tmp)):
            (HERE / path.name).write_bytes(path.read_bytes())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
