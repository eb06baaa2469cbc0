// Performance: per-tag precision, recall and AP plus the overall figures at a probability
// threshold the slider sets and, for object detection, an overlap (IoU) threshold a second
// slider sets (the API recomputes them: GET .../performance?threshold=&overlapThreshold=), and
// the evaluation plots.

import { training, pictureUrl, seg, VISIONPIPE } from "../api.js";
import { h, fill, field, table, pct } from "../dom.js";
import { trainedIterations, iterationPicker, noIterations } from "./common.js";
import { testImages } from "./test_images.js";

const DEBOUNCE_MS = 200;

export async function performancePage(root, ctx) {
  const base = `/projects/${seg(ctx.projectId)}`;
  const [iterations, domain] = await Promise.all([
    trainedIterations(ctx.projectId),
    training("GET", `/domains/${seg(ctx.project.settings?.domainId ?? "")}`).catch(() => null),
  ]);
  const detection = domain?.type === "ObjectDetection";
  if (iterations.length === 0) return fill(root, h("h1", {}, "Performance"), noIterations("performance"));
  const chosen = ctx.params.get("iteration") ?? iterations[0].id;
  const { picker, control } = iterationPicker(iterations, chosen);
  picker.addEventListener("change", () => ctx.navigate(`#/p/${seg(ctx.projectId)}/performance?iteration=${encodeURIComponent(picker.value)}`));

  const slider = h("input", { type: "range", min: 0, max: 1, step: 0.01, value: "0.5" });
  const shown = h("output", { for: "", class: "threshold" }, "50.0%");
  // Object detection: a detection counts as right when it overlaps a true box at least this much.
  const overlap = detection ? h("input", { type: "range", min: 0, max: 1, step: 0.01, value: "0.5" }) : null;
  const overlapShown = detection ? h("output", { for: "", class: "threshold overlap" }, "50.0%") : null;
  const figures = h("div", { "aria-live": "polite" });
  const plots = h("div", { class: "plots" });
  const urls = [];
  ctx.onLeave(() => urls.forEach((u) => URL.revokeObjectURL(u)));
  let timer = null;
  let asked = 0;

  async function load() {
    const threshold = Number(slider.value);
    const query = { threshold };
    if (overlap) query.overlapThreshold = Number(overlap.value);
    const ticket = ++asked;
    const perf = await training("GET", `${base}/iterations/${seg(picker.value)}/performance`, { query });
    if (ticket !== asked) return; // a later slider position has been asked for
    const at = overlap ? `a probability threshold of ${pct(threshold)} and an overlap threshold of ${pct(query.overlapThreshold)}`
      : `a probability threshold of ${pct(threshold)}`;
    fill(figures,
      h("dl", { class: "overall facts" },
        h("dt", {}, "Precision"), h("dd", { "data-metric": "precision" }, pct(perf.precision)),
        h("dt", {}, "Recall"), h("dd", { "data-metric": "recall" }, pct(perf.recall)),
        h("dt", {}, detection ? "mAP" : "AP"), h("dd", { "data-metric": "ap" }, pct(perf.averagePrecision))),
      table(`Per tag at ${at}`, ["Tag", "Precision", "Recall", "AP"],
        perf.perTagPerformance.map((t) => [t.name, pct(t.precision), pct(t.recall), pct(t.averagePrecision)])));
  }
  const gallery = testImages(ctx, base, picker.value, {
    detection,
    multilabel: ctx.project.settings?.classificationType === "Multilabel",
    thresholds: () => ({ threshold: Number(slider.value), overlap: overlap ? Number(overlap.value) : 0.5 }),
  });
  function onSlide(input, output) {
    input.addEventListener("input", () => {
      output.textContent = pct(input.value);
      gallery.judge(); // the outlines follow the slider at once; the figures after the API
      clearTimeout(timer);
      timer = setTimeout(() => ctx.guard(load), DEBOUNCE_MS);
    });
  }
  onSlide(slider, shown);
  if (overlap) onSlide(overlap, overlapShown);
  ctx.onLeave(() => clearTimeout(timer));

  async function plot(name, alt) {
    try {
      const url = await pictureUrl(`${VISIONPIPE}${base}/iterations/${seg(picker.value)}/artifacts/${name}`);
      urls.push(url);
      return h("figure", {}, h("img", { src: url, alt }), h("figcaption", {}, alt));
    } catch (error) {
      return h("p", {}, `${alt}: not available for this iteration (${error.code}).`);
    }
  }

  const sliderField = field("Probability threshold", slider, "Predictions below this probability count as not made.");
  shown.setAttribute("for", slider.id);
  sliderField.append(shown);
  let overlapField = null;
  if (overlap) {
    overlapField = field("Overlap threshold", overlap, "A predicted box counts as right when its overlap (IoU) with a true box of its tag is at least this.");
    overlapShown.setAttribute("for", overlap.id);
    overlapField.append(overlapShown);
  }
  fill(root, h("h1", {}, "Performance"),
    h("section", { class: "card" }, control, h("div", { class: "sliders" }, sliderField, overlapField), figures),
    gallery.section,
    h("section", { class: "card", "aria-labelledby": "plots-title" }, h("h2", { id: "plots-title" }, "Plots"), plots));
  await Promise.all([load(), ctx.guard(gallery.load)]);
  fill(plots, await plot("pr_curve.png", "Precision-recall curve"),
    await plot("confusion_matrix.png", "Confusion matrix"));
}
