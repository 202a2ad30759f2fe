"""DICOMweb (PS3.18) beside DIMSE: STOW-RS in, QIDO-RS and WADO-RS out, under the admin app.

    stow.py   POST /studies[/{study}]          → handlers.store.store_received (C-STORE's policy)
    qido.py   GET /studies, /series, /instances → qr.find.find (C-FIND's matching and counts)
    wado.py   GET /studies/{..}[/series/{..}[/instances/{..}]][/metadata|/frames|/rendered|/bulkdata]
              → qr.retrieve.plan_retrieve (C-MOVE's planner, on-demand series included)
    multipart.py, json_model.py, render.py: the media types; context.py: shared state and errors.

Outgoing STOW-RS (DICOMweb destinations) is the outbox's: dicom_node/outbox/stow.py, which
shares multipart.py only (this package imports nothing here, so the outbox pulls in no server).
"""
