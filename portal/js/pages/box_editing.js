// The mouse and keyboard mechanics of editing boxes on a picture, shared by the two box editors:
// the labelling page (label.js: a training image's regions) and the correction of a stored
// prediction before it joins the training set (corrections.js). Each editor keeps its own boxes
// and decides what a change means (unsaved, corrected); this module only turns keys and drags
// into boxes, on the arithmetic of boxes.js.
//
// Keyboard (on a focused box): arrows move it by 1% of the picture, Shift+arrows resize it,
// Delete or Backspace removes it. Mouse: a drag on a box moves it, on its corner handle resizes
// it, on the picture draws a new box.

import { h } from "../dom.js";
import { moved, resized, round } from "./boxes.js";

const STEP = 0.01; // (no finer step on Alt: Alt+Left is the browser's Back)
const MIN_DRAG = 0.01; // a click without a drag draws nothing
const ARROWS = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };

/** Put a box element where its box is: by properties (style attributes are text the CSP would
 *  judge). */
export function placeBox(el, [left, top, width, height]) {
  el.style.left = `${left * 100}%`;
  el.style.top = `${top * 100}%`;
  el.style.width = `${width * 100}%`;
  el.style.height = `${height * 100}%`;
}

/** What a key on a focused box asks for: "remove", the moved or resized box, or null for a key
 *  that is not the editor's (with Alt, Ctrl or Meta it is the browser's or the system's). */
export function keyedBox(event, box) {
  if (event.key === "Delete" || event.key === "Backspace") {
    event.preventDefault();
    return "remove";
  }
  const arrow = ARROWS[event.key];
  if (!arrow || event.altKey || event.ctrlKey || event.metaKey) return null;
  event.preventDefault();
  const [dx, dy] = arrow.map((d) => d * STEP);
  return event.shiftKey ? resized(box, dx, dy) : moved(box, dx, dy);
}

function fraction(layer, event) {
  const rect = layer.getBoundingClientRect();
  return [(event.clientX - rect.left) / rect.width, (event.clientY - rect.top) / rect.height];
}

function track(layer, event, onMove, onEnd) {
  event.preventDefault();
  const target = event.currentTarget;
  target.setPointerCapture?.(event.pointerId);
  const move = (e) => onMove(fraction(layer, e));
  const end = (e) => {
    target.removeEventListener("pointermove", move);
    target.removeEventListener("pointerup", end);
    target.removeEventListener("pointercancel", end);
    onEnd(fraction(layer, e));
  };
  target.addEventListener("pointermove", move);
  target.addEventListener("pointerup", end);
  target.addEventListener("pointercancel", end);
}

/** A pointerdown on a box element: the drag moves the box (resizes it from its corner handle),
 *  the element following; `onMove(box)` on the way, `onEnd(box)` on release. */
export function dragBox(layer, event, start, onMove, onEnd) {
  if (event.button !== 0) return;
  event.stopPropagation();
  const [x0, y0] = fraction(layer, event);
  const resizing = event.target.dataset?.handle === "se";
  const el = event.currentTarget;
  let box = start;
  track(layer, event, ([x, y]) => {
    box = resizing ? resized(start, x - x0, y - y0) : moved(start, x - x0, y - y0);
    placeBox(el, box);
    onMove(box);
  }, () => onEnd(box));
}

/** A pointerdown on the picture (the caller has checked it is not on a box): the drag draws a
 *  dashed box; `onDrawn(box)` on release, unless it was a click. */
export function drawBox(layer, event, onDrawn) {
  const [x0, y0] = fraction(layer, event);
  const ghost = h("div", { class: "box drawing", "aria-hidden": "true" });
  layer.append(ghost);
  const corners = (x, y) => {
    const left = Math.max(0, Math.min(x0, x));
    const top = Math.max(0, Math.min(y0, y));
    return [left, top, Math.min(1, Math.max(x0, x)) - left, Math.min(1, Math.max(y0, y)) - top];
  };
  track(layer, event, ([x, y]) => placeBox(ghost, corners(x, y)), ([x, y]) => {
    ghost.remove();
    const box = corners(x, y);
    if (box[2] >= MIN_DRAG && box[3] >= MIN_DRAG) onDrawn(box.map(round));
  });
}
