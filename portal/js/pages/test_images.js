// The performance page's test images: the iteration's test split as the API's image
// performances route answers it (GET .../performance/images and .../images/count), each
// thumbnail outlined and labelled "Correct" or "Mispredicted" (in words, never colour alone).
// The rows do not depend on the thresholds, so the verdicts are recomputed here, at once, when a
// slider moves; only a new page of images asks the API again.

import { training, pictureUrl, seg, TRAINING } from "../api.js";
import { h, fill, pct } from "../dom.js";
import { boxIou, clampBox } from "./boxes.js";

export const PAGE_SIZE = 12;

/** Whether a classifier's answer for one test image is right at `threshold`: multiclass, the
 *  top prediction (at or above the threshold) is the true tag; multilabel, the tags at or above
 *  the threshold are exactly the true ones. */
export function classifiedRight(row, threshold, multilabel) {
  const truth = new Set((row.tags ?? []).map((t) => t.tagId));
  const above = (row.predictions ?? []).filter((p) => p.probability >= threshold);
  if (multilabel) {
    const shown = new Set(above.map((p) => p.tagId));
    return shown.size === truth.size && [...shown].every((t) => truth.has(t));
  }
  const top = [...above].sort((a, b) => b.probability - a.probability)[0];
  return top ? truth.has(top.tagId) : truth.size === 0;
}

/** Whether a detector found every true box: some predicted box of its tag, at or above the
 *  probability threshold, overlaps it by at least `overlap` (IoU). */
export function detectedRight(row, threshold, overlap) {
  const predicted = (row.predictions ?? [])
    .filter((p) => p.boundingBox && p.probability >= threshold)
    .map((p) => ({ tagId: p.tagId, box: clampBox(p.boundingBox) }));
  return (row.regions ?? []).every((r) => {
    const truth = clampBox(r);
    return predicted.some((p) => p.tagId === r.tagId && boxIou(p.box, truth) >= overlap);
  });
}

function place(el, box) {
  el.style.left = `${box.left * 100}%`;
  el.style.top = `${box.top * 100}%`;
  el.style.width = `${box.width * 100}%`;
  el.style.height = `${box.height * 100}%`;
  return el;
}

/** The gallery; `thresholds()` gives {threshold, overlap} as the sliders stand now. */
export function testImages(ctx, base, iterationId, { detection, multilabel, thresholds }) {
  const section = h("section", { class: "card", "aria-labelledby": "test-images-title" });
  const summary = h("p", { "aria-live": "polite", class: "test-images-summary" });
  const grid = h("ul", { class: "test-images", "aria-label": "Test images" });
  const previous = h("button", { type: "button", class: "secondary" }, "Previous images");
  const next = h("button", { type: "button", class: "secondary" }, "Next images");
  const where = h("span", { class: "count" });
  const urls = [];
  const revoke = () => { urls.splice(0).forEach((u) => URL.revokeObjectURL(u)); };
  ctx.onLeave(revoke);
  const route = `${base}/iterations/${seg(iterationId)}/performance/images`;
  let rows = [];
  let tiles = [];
  let skip = 0;
  let total = 0;

  function boxesOf(row) {
    const { threshold } = thresholds();
    const truth = (row.regions ?? []).map((r) => place(
      h("li", { class: "true-box" }, h("span", {}, `true ${r.tagName}`)), r));
    const found = (row.predictions ?? []).filter((p) => p.boundingBox && p.probability >= threshold)
      .map((p) => place(h("li", { class: "predicted-box" },
        h("span", {}, `${p.tagName} ${pct(p.probability)}`)), p.boundingBox));
    return [...truth, ...found];
  }

  function judge() {
    const { threshold, overlap } = thresholds();
    let wrong = 0;
    tiles.forEach(({ tile, verdict, layer, facts }, i) => {
      const row = rows[i];
      const right = detection ? detectedRight(row, threshold, overlap)
        : classifiedRight(row, threshold, multilabel);
      if (!right) wrong += 1;
      tile.classList.toggle("mispredicted", !right);
      tile.classList.toggle("correct", right);
      tile.dataset.verdict = right ? "correct" : "mispredicted";
      verdict.textContent = right ? "Correct" : "Mispredicted";
      if (layer) fill(layer, boxesOf(row));
      const above = (row.predictions ?? []).filter((p) => p.probability >= threshold);
      fill(facts, detection
        ? `${(row.regions ?? []).length} true box(es), ${above.filter((p) => p.boundingBox).length} predicted`
        : `Predicted: ${above.length ? above.slice(0, 3).map((p) => `${p.tagName} ${pct(p.probability)}`).join(", ") : "nothing"}`);
    });
    const at = detection ? `a probability threshold of ${pct(threshold)} and an overlap threshold of ${pct(overlap)}`
      : `a probability threshold of ${pct(threshold)}`;
    summary.textContent = total === 0 ? "This iteration kept no test images."
      : `${wrong} of the ${rows.length} test images shown mispredicted at ${at}.`;
  }

  function tileOf(row) {
    const short = String(row.id).slice(0, 8);
    const picture = h("img", { alt: `Test image ${short}` });
    pictureUrl(`${TRAINING}${base}/images/${seg(row.id)}/original`).then((url) => {
      urls.push(url);
      picture.src = url;
    }).catch(() => { picture.alt = `Test image ${short} (no preview)`; });
    const layer = detection ? h("ul", { class: "overlay-boxes", "aria-label": `Boxes on test image ${short}` }) : null;
    const verdict = h("strong", { class: "verdict" });
    const facts = h("span", { class: "tile-tags" });
    const truth = (row.tags ?? []).map((t) => t.tagName).join(", ") || "no tag";
    const tile = h("li", { class: "test-image", "data-image": row.id },
      h("div", { class: "stage" }, picture, layer), verdict,
      h("span", { class: "tile-tags" }, `True: ${truth}`), facts);
    return { tile, verdict, layer, facts };
  }

  async function load() {
    const query = { take: PAGE_SIZE, skip };
    const [count, page] = await Promise.all([
      training("GET", `${route}/count`),
      training("GET", route, { query }),
    ]);
    revoke();
    total = Number(count) || 0;
    rows = page ?? [];
    tiles = rows.map(tileOf);
    fill(grid, tiles.map((t) => t.tile));
    where.textContent = total ? `Images ${skip + 1}–${skip + rows.length} of ${total}` : "";
    previous.disabled = skip === 0;
    next.disabled = skip + rows.length >= total;
    judge();
  }

  previous.addEventListener("click", () => ctx.guard(() => { skip = Math.max(0, skip - PAGE_SIZE); return load(); }));
  next.addEventListener("click", () => ctx.guard(() => { skip += PAGE_SIZE; return load(); }));
  fill(section, h("h2", { id: "test-images-title" }, "Test images"),
    h("p", { class: "hint" }, detection
      ? "Each test image with its true boxes (dashed) and the predicted boxes at the thresholds above; it is mispredicted when a true box has no predicted box of its tag overlapping it enough."
      : "Each test image with its true tags; it is mispredicted when the prediction at the threshold above is not its true tag" + (multilabel ? " set." : ".")),
    summary, grid, h("div", { class: "inline pager" }, previous, where, next));
  return { section, load, judge };
}
