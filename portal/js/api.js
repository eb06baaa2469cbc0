// The only way the portal reaches the service: same-origin calls to the Custom Vision-compatible
// API and visionpipe's own routes, with the training key in a header (never in a URL).

export const TRAINING = "/customvision/v3.4-preview/training";
export const VISIONPIPE = "/visionpipe/v1";
const KEY_ITEM = "visionpipe.trainingKey";

/** The training key lives in sessionStorage: gone when the tab closes, never sent elsewhere. */
export const trainingKey = {
  get: () => sessionStorage.getItem(KEY_ITEM),
  set: (value) => sessionStorage.setItem(KEY_ITEM, value),
  clear: () => sessionStorage.removeItem(KEY_ITEM),
};

/** An error as the API states it: Custom Vision's {code, message}. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function errorOf(response) {
  try {
    const body = await response.json();
    if (body && typeof body.code === "string") {
      return new ApiError(response.status, body.code, String(body.message ?? ""));
    }
  } catch {
    // not JSON: fall through to the status line
  }
  return new ApiError(response.status, String(response.status), response.statusText || "request failed");
}

function address(path, query) {
  const url = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(query ?? {})) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, String(value));
  }
  return url;
}

/** One API call; resolves to parsed JSON (or a Blob with as: "blob", null on 204). */
export async function call(method, path, { query, json, body, as = "json" } = {}) {
  const headers = { "Training-Key": trainingKey.get() ?? "" };
  let payload = body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(json);
  }
  let response;
  try {
    response = await fetch(address(path, query), {
      method, headers, body: payload, credentials: "omit", cache: "no-store",
    });
  } catch {
    throw new ApiError(0, "NetworkError", "the service could not be reached");
  }
  if (!response.ok) throw await errorOf(response);
  if (response.status === 204) return null;
  if (as === "blob") return response.blob();
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

export const training = (method, path, options) => call(method, TRAINING + path, options);
export const visionpipe = (method, path, options) => call(method, VISIONPIPE + path, options);

/** A picture behind the key, as an object URL an <img> may show (CSP allows blob:). */
export async function pictureUrl(path) {
  const blob = await call("GET", path, { as: "blob" });
  return URL.createObjectURL(blob);
}

/** Upload one file as multipart (the API's "create images from data"), reporting progress.
 *  Resolves to the ImageCreateSummary; rejects with an ApiError. */
export function uploadImage(projectId, file, tagIds, onProgress) {
  return new Promise((resolve, reject) => {
    const request = new XMLHttpRequest();
    const url = address(`${TRAINING}/projects/${encodeURIComponent(projectId)}/images`,
      { tagIds: tagIds.join(",") });
    request.open("POST", url);
    request.setRequestHeader("Training-Key", trainingKey.get() ?? "");
    request.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable) onProgress(e.loaded / e.total);
    });
    request.addEventListener("load", () => {
      let body = null;
      try { body = JSON.parse(request.responseText); } catch { /* not JSON */ }
      if (request.status >= 200 && request.status < 300 && body) resolve(body);
      else if (body && typeof body.code === "string") reject(new ApiError(request.status, body.code, String(body.message ?? "")));
      else reject(new ApiError(request.status, String(request.status), "the upload failed"));
    });
    request.addEventListener("error", () => reject(new ApiError(0, "NetworkError", "the service could not be reached")));
    const form = new FormData();
    form.append("imageData", file, file.name);
    request.send(form);
  });
}

/** Path pieces are ids from the API; encode them anyway. */
export const seg = (value) => encodeURIComponent(String(value));
