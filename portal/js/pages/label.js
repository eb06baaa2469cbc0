// Labelling for object detection: the boxes of one training image, drawn, moved, resized and
// deleted with the mouse or the keyboard, each with its tag, saved through the Custom Vision
// region routes. Boxes are {left, top, width, height} as fractions of the image, as the API
// keeps them, so nothing here depends on the picture's size on screen.
//
// Keyboard (on a focused box): arrows move it by 1% of the picture, Shift+arrows resize it,
// Delete or Backspace removes it, Tab and Shift+Tab go from box to box (they are buttons, in
// reading order). "Add a box" puts a new one in the middle of the picture and focuses it.

import { training, pictureUrl, seg, TRAINING } from "../api.js";
import { h, fill, field, select, table, pct } from "../dom.js";
import { trainedIterations } from "./common.js";
import { boxIou, clampBox, sameBox } from "./boxes.js";
import { dragBox, drawBox, keyedBox, placeBox } from "./box_editing.js";

const SUGGESTION_FLOOR = 0.5; // suggestions below this probability are not pre-filled
const PROPOSAL_FLOOR = 0.5;
const COVERED_IOU = 0.5; // a proposal overlapping a box this much is already labelled
const MAX_BATCH = 64; // the region routes' batch size

export async function labelPage(root, ctx) {
  const base = `/projects/${seg(ctx.projectId)}`;
  const imageId = ctx.params.get("image") ?? "";
  const [images, tags, iterations, domain] = await Promise.all([
    training("GET", `${base}/images/id`, { query: { imageIds: imageId } }),
    training("GET", `${base}/tags`),
    trainedIterations(ctx.projectId),
    training("GET", `/domains/${seg(ctx.project.settings?.domainId ?? "")}`).catch(() => null),
  ]);
  const image = images?.[0];
  const back = h("a", { href: `#/p/${seg(ctx.projectId)}/images` }, "Back to the images");
  if (!image) return fill(root, h("h1", {}, "Label boxes"), h("p", {}, "No such image in this project. ", back));
  if (domain && domain.type !== "ObjectDetection") {
    return fill(root, h("h1", {}, "Label boxes"), h("p", {}, "Boxes belong to object detection projects; this one classifies whole images. ", back));
  }
  const short = image.id.slice(0, 8);
  const tagName = new Map(tags.map((t) => [t.id, t.name]));

  // --- state: the boxes on screen; `saved` the regions the API holds ---
  let keyCounter = 0;
  const nextKey = () => { keyCounter += 1; return `b${keyCounter}`; };
  let saved = (image.regions ?? []).map((r) => ({ regionId: r.regionId, tagId: r.tagId, box: clampBox(r) }));
  let boxes = saved.map((r) => ({ ...r, key: nextKey() }));
  let selectedKey = null;
  const dirty = () => changes().create.length > 0 || changes().remove.length > 0;

  // --- the picture and its boxes ---
  const picture = h("img", { alt: `Image ${short}`, draggable: "false" });
  const layer = h("div", { class: "box-layer" });
  const stage = h("div", { class: "label-stage", "aria-describedby": "label-help" }, picture, layer);
  pictureUrl(`${TRAINING}${base}/images/${seg(image.id)}/original`).then((url) => {
    ctx.onLeave(() => URL.revokeObjectURL(url));
    picture.src = url;
  }).catch(() => { picture.alt = `Image ${short} (could not be loaded)`; });

  const newTag = select(tags.map((t) => [t.id, t.name]), { disabled: tags.length === 0 });
  const listing = h("div", {});
  const note = h("p", { class: "hint", "aria-live": "polite" });
  const saveButton = h("button", { type: "button" }, "Save boxes");
  const discardButton = h("button", { type: "button", class: "secondary" }, "Discard changes");

  function describe(b, i) {
    const [left, top, width, height] = b.box;
    return `Box ${i + 1}: ${tagName.get(b.tagId) ?? "no tag"}, left ${pct(left)}, top ${pct(top)}, width ${pct(width)}, height ${pct(height)}`
      + (b.regionId ? "" : b.source ? `, ${b.source}, not saved` : ", not saved");
  }

  function render(focusKey = null) {
    const hadFocusIn = layer.contains(document.activeElement) ? document.activeElement.dataset.key : null;
    fill(layer, boxes.map((b, i) => {
      const el = h("button", {
        type: "button", class: `box${b.key === selectedKey ? " selected" : ""}${b.regionId ? "" : " unsaved"}`,
        "data-key": b.key, "aria-label": describe(b, i), "aria-pressed": b.key === selectedKey ? "true" : "false",
      }, h("span", { class: "box-tag", "aria-hidden": "true" }, tagName.get(b.tagId) ?? "?"),
      h("span", { class: "handle", "aria-hidden": "true", "data-handle": "se" }));
      placeBox(el, b.box);
      el.addEventListener("focus", () => select_(b.key, false));
      el.addEventListener("keydown", (event) => onKey(event, b.key));
      el.addEventListener("pointerdown", (event) => startDrag(event, b.key));
      return el;
    }));
    const rows = boxes.map((b, i) => {
      const tag = select(tags.map((t) => [t.id, t.name]), { "aria-label": `Tag of box ${i + 1}` });
      tag.value = b.tagId;
      tag.addEventListener("change", () => { b.tagId = tag.value; render(); });
      const remove = h("button", { type: "button", class: "secondary", "aria-label": `Delete box ${i + 1}` }, "Delete");
      remove.addEventListener("click", () => removeBox(b.key));
      const [left, top, width, height] = b.box;
      return [`${i + 1}`, tag, [left, top, width, height].map(pct).join(" · "),
        b.regionId ? "saved" : (b.source ?? "new"), remove];
    });
    fill(listing, boxes.length === 0 ? h("p", {}, "No boxes on this image yet.")
      : table(`Boxes on image ${short}`, ["Box", "Tag", "Left · top · width · height", "State", ""], rows));
    const pending = changes();
    saveButton.disabled = pending.create.length === 0 && pending.remove.length === 0;
    discardButton.disabled = saveButton.disabled;
    const target = focusKey ?? hadFocusIn;
    if (target) layer.querySelector(`[data-key="${CSS.escape(target)}"]`)?.focus();
  }

  function select_(key, rerender = true) {
    if (selectedKey === key) return;
    selectedKey = key;
    if (rerender) render(key);
    else for (const el of layer.children) {
      const on = el.dataset.key === key;
      el.classList.toggle("selected", on);
      el.setAttribute("aria-pressed", on ? "true" : "false");
    }
  }

  function update(key, box) {
    const b = boxes.find((x) => x.key === key);
    if (!b) return;
    b.box = box;
    render(key);
  }

  function removeBox(key) {
    const at = boxes.findIndex((b) => b.key === key);
    if (at < 0) return;
    boxes.splice(at, 1);
    const next = boxes[Math.min(at, boxes.length - 1)];
    selectedKey = next?.key ?? null;
    render(next?.key ?? null);
    if (!next) addButton.focus();
    note.textContent = `Box ${at + 1} removed (not saved yet).`;
  }

  function addBox(box, tagId, source = null, focus = true) {
    const b = { key: nextKey(), regionId: null, tagId, box: clampBox(box), source };
    boxes.push(b);
    if (focus) selectedKey = b.key;
    return b;
  }

  function onKey(event, key) {
    const b = boxes.find((x) => x.key === key);
    if (!b) return;
    const next = keyedBox(event, b.box);
    if (next === "remove") removeBox(key);
    else if (next) update(key, next);
  }

  // --- the mouse: drag on the picture draws, on a box moves, on its corner resizes ---
  function startDrag(event, key) {
    const b = boxes.find((x) => x.key === key);
    if (!b) return;
    dragBox(layer, event, b.box, (box) => { b.box = box; }, () => { selectedKey = key; render(key); });
  }

  stage.addEventListener("pointerdown", (event) => {
    if (event.button !== 0 || event.target.closest(".box")) return;
    if (!newTag.value) { ctx.showError(new Error("add a tag to the project first")); return; }
    drawBox(layer, event, (box) => {
      const b = addBox(box, newTag.value);
      render(b.key);
      note.textContent = `Box ${boxes.length} drawn as ${tagName.get(b.tagId)} (not saved yet).`;
    });
  });

  // --- actions ---
  const addButton = h("button", { type: "button", class: "secondary", disabled: tags.length === 0 }, "Add a box");
  addButton.addEventListener("click", () => {
    const b = addBox([0.35, 0.35, 0.3, 0.3], newTag.value);
    render(b.key);
    note.textContent = `Box ${boxes.length} added in the middle as ${tagName.get(b.tagId)}: move it with the arrow keys, resize it with Shift+arrows.`;
  });

  /** What saving must do: regions to create (new or changed boxes) and region ids to delete
   *  (removed or changed ones; the API has no update). */
  function changes() {
    const create = [];
    const keep = new Set();
    for (const b of boxes) {
      const was = b.regionId ? saved.find((r) => r.regionId === b.regionId) : null;
      if (was && was.tagId === b.tagId && sameBox(was.box, b.box)) keep.add(b.regionId);
      else create.push(b);
    }
    const remove = saved.filter((r) => !keep.has(r.regionId)).map((r) => r.regionId);
    return { create, remove };
  }

  async function reload(message) {
    const [fresh] = await training("GET", `${base}/images/id`, { query: { imageIds: image.id } });
    saved = (fresh?.regions ?? []).map((r) => ({ regionId: r.regionId, tagId: r.tagId, box: clampBox(r) }));
    boxes = saved.map((r) => ({ ...r, key: nextKey() }));
    selectedKey = null;
    render();
    if (message) ctx.showStatus(message);
  }

  saveButton.addEventListener("click", () => ctx.guard(async () => {
    const { create, remove } = changes();
    saveButton.disabled = true;
    let created = 0;
    // Create first, then delete: a failure half way leaves a box twice, never a box lost.
    for (let i = 0; i < create.length; i += MAX_BATCH) {
      const summary = await training("POST", `${base}/images/regions`, {
        json: { regions: create.slice(i, i + MAX_BATCH).map((b) => ({
          imageId: image.id, tagId: b.tagId, left: b.box[0], top: b.box[1], width: b.box[2], height: b.box[3],
        })) },
      });
      created += summary.created?.length ?? 0;
      if (summary.exceeded?.length) ctx.showError(new Error(`${summary.exceeded.length} box(es) not saved: the image holds the most regions it may`));
    }
    for (let i = 0; i < remove.length; i += MAX_BATCH) {
      await training("DELETE", `${base}/images/regions`, { query: { regionIds: remove.slice(i, i + MAX_BATCH).join(",") } });
    }
    await reload(`Saved the boxes of image ${short}: ${created} created, ${remove.length} deleted.`);
  }));
  discardButton.addEventListener("click", () => ctx.guard(() => reload("Changes discarded.")));

  const iteration = iterations[0];
  const proposeButton = h("button", { type: "button", class: "secondary", disabled: !iteration }, "Add region proposals");
  proposeButton.addEventListener("click", () => ctx.guard(async () => {
    const answer = await training("POST", `${base}/images/${seg(image.id)}/regionproposals`);
    const confident = (answer.proposals ?? []).filter((p) => p.confidence >= PROPOSAL_FLOOR);
    let added = 0;
    for (const p of confident) {
      const box = clampBox(p.boundingBox);
      if (boxes.some((b) => boxIou(b.box, box) >= COVERED_IOU)) continue;
      addBox(box, newTag.value, "proposal", added === 0);
      added += 1;
    }
    render(added ? selectedKey : null);
    note.textContent = `Added ${added} region proposal(s) as ${tagName.get(newTag.value) ?? "no tag"}; ${confident.length - added} already covered by a box.`;
  }));

  // Suggestions: an image without boxes starts from what the newest trained iteration sees.
  let suggested = "";
  if (saved.length === 0 && iteration && tags.length > 0) {
    const answer = await training("POST", `${base}/tagsandregions/suggestions`, {
      query: { iterationId: iteration.id, imageIds: image.id },
    }).catch((error) => { ctx.showError(error); return []; });
    const predictions = (answer?.[0]?.predictions ?? [])
      .filter((p) => p.boundingBox && p.probability >= SUGGESTION_FLOOR && tagName.has(p.tagId));
    for (const p of predictions) addBox(clampBox(p.boundingBox), p.tagId, "suggested", false);
    selectedKey = null;
    suggested = predictions.length
      ? `${predictions.length} box(es) suggested by ${iteration.name} (probability ${pct(SUGGESTION_FLOOR)} or more): check them, then save.`
      : `${iteration.name} suggests no box on this image.`;
  }

  const help = h("p", { id: "label-help", class: "hint" },
    "Drag on the picture to draw a box; drag a box to move it, or its corner to resize it. "
    + "With the keyboard: Tab to a box, arrows move it, Shift+arrows resize it, Delete removes it; \u201cAdd a box\u201d starts one in the middle.");
  const guardLeave = (event) => { if (dirty()) { event.preventDefault(); event.returnValue = ""; } };
  window.addEventListener("beforeunload", guardLeave);
  ctx.onLeave(() => window.removeEventListener("beforeunload", guardLeave));

  fill(root, h("h1", {}, `Label boxes · image ${short}`), h("p", {}, back),
    tags.length === 0 ? h("p", { class: "notice" }, "Add a tag on the images page first: every box has a tag.") : null,
    h("section", { class: "card label-card", "aria-labelledby": "label-title" },
      h("h2", { id: "label-title" }, "Boxes"), help,
      h("div", { class: "inline" }, field("Tag for new boxes", newTag), addButton, proposeButton, saveButton, discardButton),
      note, stage, listing));
  note.textContent = suggested;
  render();
}
