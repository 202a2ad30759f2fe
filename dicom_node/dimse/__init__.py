"""DIMSE plumbing shared by the Q/R SCP (dicom_node.qr) and the outbox SCU (dicom_node.outbox).

- `pynetdicom_adapter`: the one module that touches pynetdicom's internals (private attributes,
  methods replaced on live objects, the association's raw socket), with the version guard.
- `fast_store`: C-STORE sub-operations and outbox deliveries that stream the stored file's bytes.

Part of the node's core: imports none of its services (lint-imports, setup.cfg "core-under-services").
"""
