"""The OHIF Viewer at /ohif, reading this node's /dicomweb (docs/dicomweb.md, "Viewer").

OHIF's built app (npm package @ohif/app, fetched by `make viewer`, never at run time) expects to be
served from "/": its index.html is rewritten once to /ohif/. Its app-config.js is ours: one
DICOMweb data source on the same origin, the console's bearer token (sessionStorage, so nothing
travels in URLs or logs), and a hanging protocol that hangs the original and the upscaled series of
`SeriesInstanceUIDs=<original>,<upscaled>` side by side with scrolling and window/level linked.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from string import Template

from fastapi import FastAPI
from fastapi.responses import FileResponse, HTMLResponse, PlainTextResponse, Response

PREFIX = "/ohif"
HANGING_PROTOCOL = "srnode.sideBySide"
# The console's sessionStorage key for the bearer token (dicom_node/web/api.js).
TOKEN_KEY = "srnode.token"
# Types the mimetypes module may not know on a slim system; OHIF's codecs need application/wasm.
_MEDIA_TYPES = {".wasm": "application/wasm", ".js": "text/javascript", ".mjs": "text/javascript",
                ".json": "application/json", ".css": "text/css", ".svg": "image/svg+xml"}
# Files whose names carry a content hash may be cached for long; the rest are checked each time.
_HASHED = re.compile(r"\.[0-9a-f]{16}\.(js|wasm)$|^[0-9a-f]{16}\.(wasm|woff2)$")

log = logging.getLogger("srnode.admin")

APP_CONFIG = Template("""// srnode's OHIF configuration, served by the node (dicom_node/admin/ohif.py).
(function () {
  var root = window.location.origin + '/dicomweb';
  var params = new URLSearchParams(window.location.search);
  var uids = (params.get('SeriesInstanceUIDs') || params.get('seriesInstanceUIDs') || '').split(',');
  function bySeries(uid) {
    return { seriesMatchingRules: [
      { attribute: 'SeriesInstanceUID', constraint: { equals: { value: uid || '' } }, required: true }] };
  }
  function viewport(id, selector) {
    return {
      viewportOptions: {
        viewportId: id, viewportType: 'stack', toolGroupId: 'default', allowUnmatchedView: true,
        // Same slice position in both panes; one window/level for both.
        syncGroups: [
          { type: 'stackimage', id: 'srnodeSlices', source: true, target: true },
          { type: 'voi', id: 'srnodeWindow', source: true, target: true },
        ],
      },
      displaySets: [{ id: selector }],
    };
  }
  var sideBySide = {
    id: '$hp',
    name: 'srnode: original | upscaled',
    protocolMatchingRules: [],
    toolGroupIds: ['default'],
    displaySetSelectors: { original: bySeries(uids[0]), upscaled: bySeries(uids[1]) },
    stages: [{
      name: 'original | upscaled',
      viewportStructure: { layoutType: 'grid', properties: { rows: 1, columns: 2 } },
      viewports: [viewport('srnode-original', 'original'), viewport('srnode-upscaled', 'upscaled')],
    }],
    numberOfPriorsReferenced: -1,
  };
  var srnode = {
    id: 'srnode',
    preRegistration: function (managers) {
      var auth = managers.servicesManager.services.userAuthenticationService;
      auth.setServiceImplementation({
        getAuthorizationHeader: function () {
          var token = window.sessionStorage.getItem('$token_key');
          return token ? { Authorization: 'Bearer ' + token } : {};
        },
      });
    },
    getHangingProtocolModule: function () { return [{ name: sideBySide.id, protocol: sideBySide }]; },
  };
  window.config = {
    name: 'srnode',
    routerBasename: '$prefix',
    extensions: [srnode],
    modes: [],
    customizationService: {},
    showStudyList: true,
    maxNumberOfWebWorkers: 3,
    showWarningMessageForCrossOrigin: false,
    showCPUFallbackMessage: false,
    showLoadingIndicator: true,
    strictZSpacingForVolumeViewport: true,
    defaultDataSourceName: 'srnode',
    dataSources: [{
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'srnode',
      configuration: {
        friendlyName: 'srnode', name: 'srnode',
        wadoUriRoot: root, qidoRoot: root, wadoRoot: root,
        qidoSupportsIncludeField: true, supportsFuzzyMatching: false, supportsWildcard: true,
        imageRendering: 'wadors', thumbnailRendering: 'wadors', enableStudyLazyLoad: true,
        staticWado: false, singlepart: 'bulkdata,video', bulkDataURI: { enabled: true },
        omitQuotationForMultipartRequest: true,
      },
    }],
  };
})();
""").substitute(hp=HANGING_PROTOCOL, token_key=TOKEN_KEY, prefix=PREFIX)


def viewer_path(study_uid: str, original_series_uid: str, upscaled_series_uid: str) -> str:
    """The /ohif URL (path and query) that opens a study with the two series side by side."""
    return (f"{PREFIX}/viewer?StudyInstanceUIDs={study_uid}"
            f"&SeriesInstanceUIDs={original_series_uid},{upscaled_series_uid}&hangingProtocolId={HANGING_PROTOCOL}")


def rewrite_index(html: str) -> str:
    """OHIF's index.html, moved from "/" to /ohif/: its public URL, absolute links and scripts; the
    service worker is left out (it would claim the scope of a page it was not built for)."""
    html = html.replace('window.PUBLIC_URL="/"', f'window.PUBLIC_URL="{PREFIX}/"')
    html = re.sub(r'<script[^>]*init-service-worker\.js[^>]*>\s*</script>', "", html)
    return re.sub(r'(href|src)="/(?!/)', rf'\1="{PREFIX}/', html)


# webpack's public path, fixed at "/" in the build: chunks, workers and codecs load from it.
_PUBLIC_PATH = b'__webpack_require__.p = "/";'


def relocate_script(script: bytes) -> bytes | None:
    """A bundle whose webpack public path is "/", moved to /ohif/; None if it names none."""
    if _PUBLIC_PATH not in script:
        return None
    return script.replace(_PUBLIC_PATH, b'__webpack_require__.p = "' + PREFIX.encode() + b'/";')


def mount_ohif(app: FastAPI, dist_dir: Path) -> bool:
    """Serve OHIF's files from `dist_dir` at /ohif (routes before the console's "/"). Without the
    folder, /ohif answers 404 with the command that installs it. True when OHIF is served."""
    index = dist_dir / "index.html"
    if not index.is_file():
        log.info("OHIF viewer not installed at %s (make viewer); /ohif answers 404", dist_dir)

        async def missing(path: str = "") -> Response:
            return PlainTextResponse(f"The OHIF viewer is not installed on this node ({dist_dir}): run `make viewer`.",
                                     status_code=404)

        app.add_api_route(PREFIX, missing, include_in_schema=False)
        app.add_api_route(PREFIX + "/{path:path}", missing, include_in_schema=False)
        return False
    root = dist_dir.resolve()
    page = rewrite_index(index.read_text(encoding="utf-8"))
    relocated: dict[Path, bytes | None] = {}  # script → its bytes moved to /ohif/, None: served as is

    async def app_config() -> Response:
        return Response(APP_CONFIG, media_type="text/javascript", headers={"Cache-Control": "no-cache"})

    async def serve(path: str = "") -> Response:
        target = (root / path).resolve()
        if path and target.is_file() and target.is_relative_to(root) and target.name != "index.html":
            cache = "public, max-age=31536000, immutable" if _HASHED.search(target.name) else "no-cache"
            headers, media_type = {"Cache-Control": cache}, _MEDIA_TYPES.get(target.suffix)
            if target.suffix == ".js":
                if target not in relocated:
                    relocated[target] = relocate_script(target.read_bytes())
                body = relocated[target]
                if body is not None:
                    return Response(body, media_type=media_type, headers=headers)
            return FileResponse(target, media_type=media_type, headers=headers)
        # Anything else is one of the app's own routes (/ohif/viewer?…): the single page answers.
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    app.add_api_route(PREFIX + "/app-config.js", app_config, include_in_schema=False)
    app.add_api_route(PREFIX, serve, include_in_schema=False)
    app.add_api_route(PREFIX + "/{path:path}", serve, include_in_schema=False)
    return True
