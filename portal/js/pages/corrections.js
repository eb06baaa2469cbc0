// Correcting a stored detection before it joins the training set (the active-learning loop for
// object detection): the prediction's kept picture with its boxes at or above a threshold as
// editable boxes, which the person moves, resizes, re-tags, deletes or adds to, then
// POST .../images/predictions with {id, regions} (the route checks the regions as
// POST images/regions does). The editing follows the labelling page (label.js), on the same
// box arithmetic (boxes.js): arrows move a focused box by 1%, Shift+arrows resize it,
// Delete/Backspace removes it, a drag on the picture draws one, a drag on a box moves it.

import { call, training, seg, TRAINING } from "../api.js";
import { h, fill, field, select, table, pct } from "../dom.js";
import { clampBox } from "./boxes.js";
import { dragBox, drawBox, keyedBox, placeBox } from "./box_editing.js";

export const CORRECTION_FLOOR = 0.5; // predicted boxes below this are not pre-filled

/** The boxes to start from: the stored ones, or, where the stored row lists tags without their
 *  boxes, the same iteration's answer for the same kept picture (asked with store=false, so
 *  nothing new is stored). */
async function predictedBoxes(base, prediction, picture) {
  const stored = prediction.predictions ?? [];
  if (stored.some((p) => p.boundingBox) || !picture || !prediction.iteration) return stored;
  const form = new FormData();
  form.append("imageData", picture, "prediction");
  const answer = await training("POST", `${base}/quicktest/image`, {
    query: { iterationId: prediction.iteration, store: "false" }, body: form,
  });
  return answer?.predictions ?? [];
}

/** The editor for one stored prediction; `done(message)` closes it. */
export async function correctionsEditor(ctx, base, prediction, tags, done) {
  const short = prediction.id.slice(0, 8);
  const tagName = new Map(tags.map((t) => [t.id, t.name]));
  let counter = 0;
  const key = () => { counter += 1; return `c${counter}`; };
  let boxes = [];
  const floor = h("input", { type: "number", min: 0, max: 1, step: 0.05, value: String(CORRECTION_FLOOR) });

  function prefill() {
    const at = Math.min(1, Math.max(0, Number(floor.value) || 0));
    boxes = predicted
      .filter((p) => p.boundingBox && p.probability >= at && tagName.has(p.tagId))
      .map((p) => ({ key: key(), tagId: p.tagId, box: clampBox(p.boundingBox), source: `predicted ${pct(p.probability)}` }));
  }

  const picture = h("img", { alt: `Prediction ${short}`, draggable: "false" });
  const layer = h("div", { class: "box-layer" });
  const stage = h("div", { class: "label-stage", "aria-describedby": `help-${short}` }, picture, layer);
  const kept = await call("GET", `${TRAINING}${base}/predictions/${seg(prediction.id)}/original`, { as: "blob" })
    .catch(() => null);
  if (kept) {
    const url = URL.createObjectURL(kept);
    ctx.onLeave(() => URL.revokeObjectURL(url));
    picture.src = url;
  } else {
    picture.alt = `Prediction ${short} (the service did not keep this picture)`;
  }
  const predicted = await predictedBoxes(base, prediction, kept);
  const listing = h("div", {});
  const note = h("p", { class: "hint", "aria-live": "polite" });
  const newTag = select(tags.map((t) => [t.id, t.name]), { disabled: tags.length === 0 });

  function describe(b, i) {
    const [left, top, width, height] = b.box;
    return `Box ${i + 1}: ${tagName.get(b.tagId) ?? "no tag"}, left ${pct(left)}, top ${pct(top)}, width ${pct(width)}, height ${pct(height)}, ${b.source}`;
  }

  function render(focusKey = null) {
    fill(layer, boxes.map((b, i) => {
      const el = h("button", { type: "button", class: "box unsaved", "data-key": b.key, "aria-label": describe(b, i) },
        h("span", { class: "box-tag", "aria-hidden": "true" }, tagName.get(b.tagId) ?? "?"),
        h("span", { class: "handle", "aria-hidden": "true", "data-handle": "se" }));
      placeBox(el, b.box);
      el.addEventListener("keydown", (event) => onKey(event, b));
      el.addEventListener("pointerdown", (event) => startDrag(event, b));
      return el;
    }));
    fill(listing, boxes.length === 0 ? h("p", {}, "No boxes: the picture would join the training set without any.")
      : table(`Corrected boxes of prediction ${short}`, ["Box", "Tag", "Left · top · width · height", "From", ""],
        boxes.map((b, i) => {
          const tag = select(tags.map((t) => [t.id, t.name]), { "aria-label": `Tag of corrected box ${i + 1}` });
          tag.value = b.tagId;
          tag.addEventListener("change", () => { b.tagId = tag.value; render(); });
          const remove = h("button", { type: "button", class: "secondary", "aria-label": `Delete corrected box ${i + 1}` }, "Delete");
          remove.addEventListener("click", () => removeBox(b));
          return [`${i + 1}`, tag, b.box.map(pct).join(" · "), b.source, remove];
        })));
    if (focusKey) layer.querySelector(`[data-key="${CSS.escape(focusKey)}"]`)?.focus();
  }

  function removeBox(b) {
    const at = boxes.indexOf(b);
    if (at < 0) return;
    boxes.splice(at, 1);
    const next = boxes[Math.min(at, boxes.length - 1)];
    render(next?.key ?? null);
    if (!next) addButton.focus();
    note.textContent = `Box ${at + 1} removed.`;
  }

  function onKey(event, b) {
    const next = keyedBox(event, b.box);
    if (next === "remove") {
      removeBox(b);
    } else if (next) {
      b.box = next;
      b.source = "corrected";
      render(b.key);
    }
  }

  function startDrag(event, b) {
    const start = b.box;
    dragBox(layer, event, start, (box) => { b.box = box; },
      () => { if (b.box !== start) b.source = "corrected"; render(b.key); });
  }

  stage.addEventListener("pointerdown", (event) => {
    if (event.button !== 0 || event.target.closest(".box") || !newTag.value) return;
    drawBox(layer, event, (box) => {
      const b = { key: key(), tagId: newTag.value, box: clampBox(box), source: "drawn" };
      boxes.push(b);
      render(b.key);
      note.textContent = `Box ${boxes.length} drawn as ${tagName.get(b.tagId)}.`;
    });
  });

  const addButton = h("button", { type: "button", class: "secondary", disabled: tags.length === 0 }, "Add a box");
  addButton.addEventListener("click", () => {
    const b = { key: key(), tagId: newTag.value, box: [0.35, 0.35, 0.3, 0.3], source: "added" };
    boxes.push(b);
    render(b.key);
    note.textContent = `Box ${boxes.length} added in the middle as ${tagName.get(b.tagId)}: move it with the arrow keys, resize it with Shift+arrows.`;
  });
  const refill = h("button", { type: "button", class: "secondary" }, "Start again from the predicted boxes");
  refill.addEventListener("click", () => { prefill(); render(); note.textContent = `${boxes.length} predicted box(es) at ${pct(floor.value)} or more.`; });
  floor.addEventListener("change", () => refill.click());
  const outcome = h("p", { class: "outcome", "aria-live": "polite" });
  const submit = h("button", { type: "button" }, "Add to training set with these boxes");
  submit.addEventListener("click", () => ctx.guard(async () => {
    const regions = boxes.map((b) => ({ tagId: b.tagId, left: b.box[0], top: b.box[1], width: b.box[2], height: b.box[3] }));
    const summary = await training("POST", `${base}/images/predictions`, { json: { images: [{ id: prediction.id, regions }] } });
    const first = summary.images?.[0] ?? {};
    outcome.textContent = first.reason ? `${first.status}: ${first.reason}` : `${first.status}`;
    if (first.status === "OK") done(`Added prediction ${short} to the training set with ${regions.length} box(es).`);
  }));
  const cancel = h("button", { type: "button", class: "secondary" }, "Close");
  cancel.addEventListener("click", () => done(""));

  prefill();
  const heading = h("h2", { id: `correct-${short}`, tabindex: "-1" }, `Correct the boxes of prediction ${short}`);
  const section = h("section", { class: "card corrections", "aria-labelledby": heading.id }, heading,
    h("p", { id: `help-${short}`, class: "hint" },
      "The predicted boxes are pre-filled. Drag on the picture to draw a box, drag a box to move it or its corner to resize it; "
      + "with the keyboard, Tab to a box, arrows move it, Shift+arrows resize it, Delete removes it."),
    h("div", { class: "inline" }, field("Pre-fill boxes at or above", floor), refill,
      field("Tag for new boxes", newTag), addButton),
    note, stage, listing, h("div", { class: "inline" }, submit, cancel), outcome);
  render();
  note.textContent = `${boxes.length} predicted box(es) at ${pct(floor.value)} or more: check them, then add the picture.`;
  return { section, heading };
}
