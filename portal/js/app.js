// The portal's shell: the training-key gate, the hash router, the project tabs and the error and
// status regions every page shares. Pages live in ./pages/, one module each.

import { ApiError, trainingKey, training, seg } from "./api.js";
import { h, fill, field } from "./dom.js";
import { projectsPage } from "./pages/projects.js";
import { imagesPage } from "./pages/images.js";
import { trainPage } from "./pages/train.js";
import { performancePage } from "./pages/performance.js";
import { quickTestPage } from "./pages/quicktest.js";
import { predictionsPage } from "./pages/predictions.js";
import { iterationsPage } from "./pages/iterations.js";
import { labelPage } from "./pages/label.js";

const PROJECT_PAGES = [
  ["images", "Images", imagesPage],
  ["train", "Train", trainPage],
  ["performance", "Performance", performancePage],
  ["quicktest", "Quick test", quickTestPage],
  ["predictions", "Predictions", predictionsPage],
  ["iterations", "Iterations", iterationsPage],
];
// Pages reached from another page (not tabs): labelling one image is opened from the images.
const INNER_PAGES = [["label", "Label boxes", labelPage, "images"]];

const main = document.getElementById("main");
const errors = document.getElementById("errors");
const statusLine = document.getElementById("status");
let cleanups = [];
let pendingStatus = null; // what an action that navigates wants said on the next page

/** Show an error as the API stated it (code and message), as text. */
export function showError(error) {
  const code = error instanceof ApiError ? error.code : "Error";
  const message = error instanceof Error ? error.message : String(error);
  fill(errors, h("p", { class: "error" }, h("strong", {}, code), ": ", message,
    " ", h("button", { type: "button", class: "link", onclick: () => fill(errors) }, "Dismiss")));
}

export function showStatus(message) {
  fill(statusLine, message ? h("p", {}, message) : null);
}

/** Run an async action, showing any error instead of throwing it. */
export async function guard(action) {
  try {
    return await action();
  } catch (error) {
    showError(error);
    return undefined;
  }
}

function parseHash() {
  const raw = window.location.hash.replace(/^#/, "") || "/";
  const [path, query] = raw.split("?", 2);
  return { parts: path.split("/").filter(Boolean), params: new URLSearchParams(query ?? "") };
}

/** Go to `hash`; `message` is shown in the status line there. */
export function navigate(hash, message = null) {
  pendingStatus = message;
  if (window.location.hash === hash) route({ type: "navigate" });
  else window.location.hash = hash;
}

function keyGate() {
  const input = h("input", { type: "password", autocomplete: "off", required: true });
  const form = h("form", { class: "card", "aria-labelledby": "key-title" },
    h("h1", { id: "key-title" }, "Sign in with your training key"),
    h("p", {}, "The key stays in this browser tab (session storage) and is sent only to this service, in a header."),
    field("Training key", input),
    h("button", { type: "submit" }, "Continue"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    trainingKey.set(input.value.trim());
    const ok = await guard(() => training("GET", "/projects"));
    if (ok === undefined) {
      trainingKey.clear();
      input.focus();
      return;
    }
    fill(errors);
    route({ type: "signin" });
  });
  fill(main, form);
  input.focus();
}

function sessionControls() {
  const box = document.getElementById("session");
  if (!trainingKey.get()) return fill(box);
  fill(box, h("button", {
    type: "button", class: "secondary", onclick: () => { trainingKey.clear(); navigate("#/"); },
  }, "Forget key"));
}

function projectNav(projectId, project, current) {
  const nav = document.getElementById("project-nav");
  if (!projectId) return fill(nav);
  fill(nav, h("ul", {},
    h("li", {}, h("a", { href: "#/" }, "Projects")),
    project ? h("li", { class: "project-name" }, project.name) : null,
    PROJECT_PAGES.map(([slug, title]) => h("li", {}, h("a", {
      href: `#/p/${seg(projectId)}/${slug}`, "aria-current": slug === current ? "page" : false,
    }, title)))));
}

async function route(event) {
  for (const cleanup of cleanups) cleanup();
  cleanups = [];
  fill(errors);
  showStatus(pendingStatus ?? "");
  pendingStatus = null;
  sessionControls();
  if (!trainingKey.get()) {
    projectNav(null);
    return keyGate();
  }
  const { parts, params } = parseHash();
  const ctx = {
    params, guard, navigate, showStatus, showError,
    onLeave: (fn) => cleanups.push(fn),
  };
  // Each visit renders into its own element: a slow page of an earlier visit that finishes
  // late writes into a detached element, never over the page now shown.
  const view = h("div", { class: "view" }, h("p", {}, "Loading…"));
  fill(main, view);
  if (parts[0] === "p" && parts[1]) {
    let projectId;
    try {
      projectId = decodeURIComponent(parts[1]);
    } catch {
      projectId = parts[1]; // a malformed escape: the API will say there is no such project
    }
    const slug = parts[2] ?? "images";
    const page = PROJECT_PAGES.find(([s]) => s === slug) ?? INNER_PAGES.find(([s]) => s === slug);
    const project = await guard(() => training("GET", `/projects/${seg(projectId)}`));
    projectNav(projectId, project, page?.[3] ?? slug);
    if (!project) return fill(view, h("p", {}, h("a", { href: "#/" }, "Back to the projects")));
    if (!page) return fill(view, h("h1", {}, "No such page"));
    document.title = `${page[1]} · ${project.name} · visionpipe`;
    await guard(() => page[2](view, { ...ctx, projectId, project }));
  } else {
    projectNav(null);
    document.title = "Projects · visionpipe";
    await guard(() => projectsPage(view, ctx));
  }
  // After a move inside the app, focus goes to the new content (screen readers announce it);
  // on first load it stays at the top of the page, where the skip link is. A page that is
  // still loading its last parts (plots) must not take back the focus someone already moved
  // into its controls.
  if (event && !main.contains(document.activeElement)) main.focus({ preventScroll: true });
}

// The skip link moves focus; as a plain #main link it would change the route.
document.querySelector(".skip").addEventListener("click", (event) => {
  event.preventDefault();
  main.focus();
});
window.addEventListener("hashchange", route);
route();
