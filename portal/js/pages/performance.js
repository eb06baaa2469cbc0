// Performance: per-tag precision, recall and AP plus the overall figures at a probability
// threshold the slider sets (the API recomputes them), and the evaluation plots.

import { training, pictureUrl, seg, VISIONPIPE } from "../api.js";
import { h, fill, field, table, pct } from "../dom.js";
import { trainedIterations, iterationPicker, noIterations } from "./common.js";

const DEBOUNCE_MS = 200;

export async function performancePage(root, ctx) {
  const base = `/projects/${seg(ctx.projectId)}`;
  const iterations = await trainedIterations(ctx.projectId);
  if (iterations.length === 0) return fill(root, h("h1", {}, "Performance"), noIterations("performance"));
  const chosen = ctx.params.get("iteration") ?? iterations[0].id;
  const { picker, control } = iterationPicker(iterations, chosen);
  picker.addEventListener("change", () => ctx.navigate(`#/p/${seg(ctx.projectId)}/performance?iteration=${encodeURIComponent(picker.value)}`));

  const slider = h("input", { type: "range", min: 0, max: 1, step: 0.01, value: "0.5" });
  const shown = h("output", { for: "", class: "threshold" }, "50%");
  const figures = h("div", { "aria-live": "polite" });
  const plots = h("div", { class: "plots" });
  const urls = [];
  ctx.onLeave(() => urls.forEach((u) => URL.revokeObjectURL(u)));
  let timer = null;
  let asked = 0;

  async function load() {
    const threshold = Number(slider.value);
    const ticket = ++asked;
    const perf = await training("GET", `${base}/iterations/${seg(picker.value)}/performance`, { query: { threshold } });
    if (ticket !== asked) return; // a later slider position has been asked for
    fill(figures,
      h("dl", { class: "overall facts" },
        h("dt", {}, "Precision"), h("dd", { "data-metric": "precision" }, pct(perf.precision)),
        h("dt", {}, "Recall"), h("dd", { "data-metric": "recall" }, pct(perf.recall)),
        h("dt", {}, "AP"), h("dd", { "data-metric": "ap" }, pct(perf.averagePrecision))),
      table(`Per tag at a probability threshold of ${pct(threshold)}`, ["Tag", "Precision", "Recall", "AP"],
        perf.perTagPerformance.map((t) => [t.name, pct(t.precision), pct(t.recall), pct(t.averagePrecision)])));
  }
  slider.addEventListener("input", () => {
    shown.textContent = pct(slider.value);
    clearTimeout(timer);
    timer = setTimeout(() => ctx.guard(load), DEBOUNCE_MS);
  });
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
  fill(root, h("h1", {}, "Performance"),
    h("section", { class: "card" }, control, sliderField, figures),
    h("section", { class: "card", "aria-labelledby": "plots-title" }, h("h2", { id: "plots-title" }, "Plots"), plots));
  await load();
  fill(plots, await plot("pr_curve.png", "Precision-recall curve"),
    await plot("confusion_matrix.png", "Confusion matrix"));
}
