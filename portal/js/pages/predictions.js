// Predictions: what the iteration saw (quick tests and the published endpoint), the most
// uncertain first, each addable to the training set under a chosen tag (active learning); on an
// object detection project also with corrected boxes (corrections.js).

import { training, seg } from "../api.js";
import { h, fill, field, select, table, pct } from "../dom.js";
import { trainedIterations, iterationPicker, noIterations } from "./common.js";
import { correctionsEditor } from "./corrections.js";

export async function predictionsPage(root, ctx) {
  const base = `/projects/${seg(ctx.projectId)}`;
  const [iterations, tags, domain] = await Promise.all([
    trainedIterations(ctx.projectId), training("GET", `${base}/tags`),
    training("GET", `/domains/${seg(ctx.project.settings?.domainId ?? "")}`).catch(() => null),
  ]);
  const detection = domain?.type === "ObjectDetection";
  if (iterations.length === 0) return fill(root, h("h1", {}, "Predictions"), noIterations("the prediction list"));
  const { picker, control } = iterationPicker(iterations, ctx.params.get("iteration"));
  picker.addEventListener("change", () => ctx.navigate(`#/p/${seg(ctx.projectId)}/predictions?iteration=${encodeURIComponent(picker.value)}`));
  const list = h("div", {});
  const editor = h("div", {});

  function correctButton(prediction) {
    const open = h("button", { type: "button", class: "secondary", "aria-label": `Correct boxes of prediction ${prediction.id.slice(0, 8)}` }, "Correct boxes");
    open.addEventListener("click", () => ctx.guard(async () => {
      const { section, heading } = await correctionsEditor(ctx, base, prediction, tags, (message) => {
        fill(editor);
        if (message) ctx.showStatus(message);
        open.focus();
      });
      fill(editor, section);
      heading.focus();
    }));
    return open;
  }

  function addButton(prediction) {
    const tag = select(tags.map((t) => [t.id, t.name]), { "aria-label": `Tag for prediction ${prediction.id.slice(0, 8)}` });
    const top = prediction.predictions?.[0];
    const match = tags.find((t) => t.id === top?.tagId);
    if (match) tag.value = match.id;
    const add = h("button", { type: "button" }, "Add to training set");
    const outcome = h("span", { class: "outcome" });
    add.addEventListener("click", () => ctx.guard(async () => {
      const summary = await training("POST", `${base}/images/predictions`, { json: { images: [{ id: prediction.id, tagIds: [tag.value] }] } });
      const first = summary.images?.[0] ?? {};
      outcome.textContent = first.reason ? ` ${first.status}: ${first.reason}` : ` ${first.status}`;
    }));
    return h("span", { class: "inline" }, tag, add, detection ? correctButton(prediction) : null, outcome);
  }

  const answer = await training("POST", `${base}/images/suggested`, { query: { iterationId: picker.value }, json: { maxCount: 50 } });
  const rows = answer.results ?? [];
  fill(list, rows.length === 0
    ? h("p", {}, "No stored predictions for this iteration yet. Quick tests and calls to the published endpoint are stored.")
    : table("Stored predictions, most uncertain first", ["Prediction", "When", "Uncertainty", "Top tags", "Add to training set"],
      rows.map((p) => [
        p.id.slice(0, 8),
        p.created ? new Date(p.created).toLocaleString() : "",
        pct(p.predictionUncertainty ?? 0),
        (p.predictions ?? []).slice(0, 3).map((t) => `${t.tagName} ${pct(t.probability)}`).join(", "),
        addButton(p),
      ])));
  fill(root, h("h1", {}, "Predictions"), h("section", { class: "card" }, control), list, editor);
}
