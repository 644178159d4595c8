"""The SCP's upper layer in pieces: what it encodes itself must be what pynetdicom
encodes, and each association gets contexts of its own."""

from __future__ import annotations

from pathlib import Path

import pytest
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode

from dimse_scp.server import build_ae
from dimse_scp.upper_layer import _copy_context, store_response_command
from radnode_core.settings import Settings

CT = "1.2.840.10008.5.1.4.1.1.2"
LONG_UID = "1.2.826.0.1.3680043.8.498.19803436436634749723672199720583725753"


def _response(status: int, instance: str | None) -> C_STORE:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 7
    rsp.AffectedSOPClassUID = CT
    if instance:
        rsp.AffectedSOPInstanceUID = instance
    rsp.Status = status
    return rsp


def _pynetdicom_command(rsp: C_STORE) -> bytes:
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    return bytes(encode(message.command_set, True, True))  # type: ignore[arg-type]


@pytest.mark.parametrize("status", [0x0000, 0xB000, 0xA700, 0xC000])
@pytest.mark.parametrize("instance", ["1.2.3", "1.2.34", LONG_UID, None])
def test_a_plain_c_store_response_is_what_pynetdicom_encodes(status, instance):
    rsp = _response(status, instance)
    assert store_response_command(rsp) == _pynetdicom_command(rsp)


def test_a_response_with_more_is_left_to_pynetdicom():
    rsp = _response(0xA700, "1.2.3")
    rsp.ErrorComment = "out of resources"  # type: ignore[assignment]
    assert store_response_command(rsp) is None
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = CT
    assert store_response_command(request) is None


def test_each_association_gets_its_own_contexts(tmp_path: Path):
    ae = build_ae(Settings(data_dir=tmp_path))
    original = ae.supported_contexts[0]
    copy = _copy_context(original)
    assert copy is not original
    assert copy.abstract_syntax == original.abstract_syntax
    assert copy.transfer_syntax == original.transfer_syntax
    copy.transfer_syntax.clear()
    copy.context_id = 3
    assert original.transfer_syntax and original.context_id is None
