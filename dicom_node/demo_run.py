"""The demo itself: node (embedded defaults) + destination SCP + a small real CT series, end to end.

The CT slices are the real 512×512 CT images bundled with pydicom-data (Pancreas-CT and other
de-identified samples, MIT-packaged); they are downscaled (antialiased bicubic, the evaluation
degradation) and sent as one low-resolution series, so the node's output can be scored against
the original full-resolution slices and compared with plain bicubic upscaling.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, StoragePresentationContexts, evt
from tqdm import tqdm

from config.loader import parse_config
from dicom_node.ae import NODELAY
from dicom_node.commands import quiet_libraries
from dicom_node.index.models import Job
from dicom_node.wiring import build_node
from sr_engine import registry
from sr_engine.intensity import modality_values
from sr_engine.metrics import degrade, psnr_hu, ssim_hu

REPO = Path(__file__).resolve().parents[1]
# Real 512×512 CT slices shipped in pydicom-data (no network, nothing from ../shared).
BUNDLED_CT = ["explicit_VR-UN.dcm", "693_UNCI.dcm", "bad_sequence.dcm", "eCT_Supplemental.dcm"]


def bundled_ct_slices(limit: int) -> list[np.ndarray]:
    """Up to `limit` real CT slices (HU, float32, 512×512) from pydicom-data."""
    import data_store  # pydicom-data's package

    folder = Path(data_store.__file__).parent / "data"
    slices: list[np.ndarray] = []
    for name in BUNDLED_CT:
        values = modality_values(dcmread(folder / name))
        for plane in values.reshape(-1, *values.shape[-2:]):
            if plane.shape == (512, 512):
                slices.append(np.clip(plane, -1024, 3071).astype(np.float32))
    return slices[:limit]


def lowres_series(hr: list[np.ndarray], scale: int, out_dir: Path) -> list[Path]:
    """Write the downscaled slices as one CT series (new UIDs, stacked 5 mm apart)."""
    lr = degrade(torch.from_numpy(np.stack(hr))[:, None], scale)[:, 0].numpy()
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for i, plane in enumerate(lr):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "DEMO^SRNODE", "SRNODE-DEMO", "", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyDate, ds.StudyTime, ds.StudyID = "20260101", "120000", "1"
        ds.AccessionNumber, ds.ReferringPhysicianName = "", ""
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.SeriesDescription = "CT", 1, i + 1, "demo low-res CT"
        ds.Manufacturer, ds.PositionReferenceIndicator, ds.KVP, ds.AcquisitionNumber = "", "", "", 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PatientPosition, ds.BodyPartExamined = "HFS", "ABDOMEN"
        ds.ImagePositionPatient = [-180.0, -180.0, 5.0 * i]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.703125 * scale, 0.703125 * scale]
        ds.SliceThickness, ds.SliceLocation = 5.0, 5.0 * i
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = plane.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.PixelData = np.rint(plane).astype(np.int16).tobytes()
        path = out_dir / f"lr_{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


# The fast CT model (issue 15: ~10x quicker than RRDB-6 on a CPU) is the demo's default; any other
# shipped checkpoint stands in when it is absent.
DEFAULT_MODEL_DIR = REPO / "models" / "ct-compact"


def pick_model(requested: str | None) -> tuple[str, dict, str]:
    """(name, models: entries, note): the shipped fast CT checkpoint if present, else another
    shipped one, else a built-in."""
    if requested:
        return requested, {}, f"model {requested} (requested)"
    for reg in sorted(REPO.glob("models/**/registry.yaml"), key=lambda r: (r.parent != DEFAULT_MODEL_DIR, r)):
        entries = yaml.safe_load(reg.read_text()).get("models", {})
        for name, entry in entries.items():
            entry["weights"] = str((reg.parent / entry["weights"]).resolve())
            card = reg.parent / "MODEL_CARD.md"
            return name, {name: entry}, (f"model {name}: learned CT checkpoint {reg.parent.relative_to(REPO)} "
                                         f"(model card and data attribution: {card.relative_to(REPO)})")
    return "lanczos", {}, ("model lanczos (built-in interpolation): no CT checkpoint under models/ yet, "
                           "so this run shows the pipeline, not a learned model")


class Destination:
    """A local C-STORE SCP that keeps what it receives in memory."""

    def __init__(self) -> None:
        self.received: list[Dataset] = []
        self.ae = AE(ae_title="DEMO_PACS")
        self.ae.supported_contexts = StoragePresentationContexts
        self.server = self.ae.start_server(("127.0.0.1", 0), block=False,
                                           evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        self.port = int(self.server.server_address[1])

    def _on_store(self, event: evt.Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        self.received.append(ds)
        return 0x0000

    def stop(self) -> None:
        self.server.shutdown()


def send(files: list[Path], port: int) -> None:
    """C-STORE the files to the node."""
    ae = AE(ae_title="DEMO_SCANNER")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="SRNODE", evt_handlers=NODELAY)
    if not assoc.is_established:
        raise RuntimeError("the node refused the association")
    for f in files:
        status = assoc.send_c_store(dcmread(f))
        if getattr(status, "Status", None) != 0:
            raise RuntimeError(f"C-STORE of {f.name} failed: {status}")
    assoc.release()


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo; prints a summary and writes before/after PNG. Returns the exit code."""
    t_start = time.perf_counter()
    # The printed summary is the demo's output; `srnode -v demo` shows the node's own log too.
    quiet_libraries("DEBUG" if getattr(args, "verbose", False) else "WARNING")
    torch.set_num_threads(max(1, (torch.get_num_threads() or 2) - 1))
    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    model, entries, note = pick_model(args.model)
    scale = registry.resolve(model, parse_config({"models": entries}, environ={}).models).scale
    hr = bundled_ct_slices(args.slices)
    files = lowres_series(hr, scale, out / "input")
    dest = Destination()
    cfg = parse_config({
        "node": {"ae_title": "SRNODE", "host": "127.0.0.1", "port": 0, "storage_dir": str(out / "storage"),
                 "database_url": f"sqlite:///{out / 'index.db'}", "require_known_callers": False,
                 "min_free_disk_mb": 0, "shutdown_grace_s": 2},
        "peers": {"DEMO_PACS": {"ae_title": "DEMO_PACS", "host": "127.0.0.1", "port": dest.port}},
        "series": {"stable_after_s": 1, "check_interval_s": 0.25},
        "models": entries,
        "routing": [{"name": "demo-ct", "match": {"modality": "CT"}, "model": model, "destinations": ["DEMO_PACS"]}],
        "broker_url": None, "worker": {"device": "cpu", "batch_size": 2},
        "admin": {"enabled": False},
    }, environ={})
    print(f"srnode demo: {len(files)} real CT slices (pydicom-data), sent at {512 // scale}² and upscaled x{scale}")
    print(f"  {note}")
    node = build_node(cfg)
    node.start()
    try:
        t_send = time.perf_counter()
        send(files, int(node.port))
        t_sent = time.perf_counter()
        with tqdm(total=len(files), desc="derived slices at destination", unit="slice") as bar:
            deadline = time.monotonic() + 110
            while len(dest.received) < len(files) and time.monotonic() < deadline:
                bar.update(len(dest.received) - bar.n)
                time.sleep(0.2)
            bar.update(len(dest.received) - bar.n)
        t_done = time.perf_counter()
        with node.session_factory() as s:
            job = s.query(Job).first()
            job_info = (job.state.value, job.progress_done, job.progress_total, job.timings, job.error) if job else None
    finally:
        node.stop()
        dest.stop()
    if len(dest.received) < len(files):
        print(f"FAILED: {len(dest.received)} of {len(files)} derived slices arrived; job: {job_info}")
        return 1
    return _report(hr, files, dest.received, scale, out, job_info, t_send, t_sent, t_done, t_start)


def _report(hr, files, received, scale, out, job_info, t_send, t_sent, t_done, t_start) -> int:  # type: ignore[no-untyped-def]
    order = {dcmread(f, stop_before_pixels=True).SOPInstanceUID: i for i, f in enumerate(files)}
    sr = [None] * len(files)
    for ds in received:
        sr[order[ds.SourceImageSequence[0].ReferencedSOPInstanceUID]] = modality_values(ds)
    hr_t = torch.from_numpy(np.stack(hr))[:, None].double()
    sr_t = torch.from_numpy(np.stack(sr))[:, None].double()
    lr_t = torch.from_numpy(np.stack([modality_values(dcmread(f)) for f in files]))[:, None].float()
    bic = registry.load(registry.ModelSpec("bicubic", "bicubic", scale=scale))
    bic_t = torch.from_numpy(bic.upscale(lr_t[:, 0].numpy(), bic.mapping("CT")))[:, None].double()
    rows = {"node output": (psnr_hu(sr_t, hr_t).mean().item(), ssim_hu(sr_t, hr_t).mean().item()),
            "bicubic": (psnr_hu(bic_t, hr_t).mean().item(), ssim_hu(bic_t, hr_t).mean().item())}
    timings = json.loads(job_info[3] or "{}")
    print(f"job: {job_info[0]}, {job_info[1]} of {job_info[2]} slices")
    print(f"timings: send {t_sent - t_send:.1f} s, first send → all derived received {t_done - t_send:.1f} s "
          f"(includes the 1 s stability wait and the embedded worker's start-up, in 'queue')\njob.timings: "
          + ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()))
    print(f"{'':14s} {'PSNR (HU)':>10s} {'SSIM':>7s}")
    for name, (p, s) in rows.items():
        print(f"{name:14s} {p:10.2f} {s:7.4f}")
    png = out / "before_after.png"
    _plot(lr_t[len(files) // 2, 0].numpy(), bic_t[len(files) // 2, 0].numpy(), sr[len(files) // 2],
          hr[len(files) // 2], png)
    print(f"before/after: {png}")
    print(f"total {time.perf_counter() - t_start:.1f} s")
    return 0


def _plot(lr: np.ndarray, bic: np.ndarray, sr: np.ndarray, hr: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Display only: a soft-tissue window for the PNG; the DICOM objects stay in HU.
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.4))
    for ax, img, title in zip(axes, [lr, bic, sr, hr], ["sent (low-res)", "bicubic", "srnode output", "original"]):
        ax.imshow(img, cmap="gray", vmin=-160, vmax=240, interpolation="nearest")
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


__all__ = ["run_demo"]
